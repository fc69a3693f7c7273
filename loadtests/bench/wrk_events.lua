-- wrk posting single events from the bench's pool (loadtests.bench.tools fills in the names
-- between double underscores): each request takes the next body of the pool file, a fresh event
-- id (a UUIDv7 of the send) and its time. With an interval it is paced: each thread sends its
-- share of the rate on an even schedule and a connection that comes free takes the next slot
-- (sent at once when the slot is past: every connection was busy). Each answer is timed from its
-- send and, paced, from its slot; the service answers the event id, which finds the request.
-- Slots that never found a connection count from the slot to the end of the run (when the thread
-- was ready, just before wrk starts its clock, plus the duration): a lower bound. wrk's own percentiles add samples of their own to the slow
-- ones (stats_correct: as if each connection sent at the mean rate), so they are kept apart.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function clock_ms(id)
  ffi.C.clock_gettime(id, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local function now_ms() return clock_ms(1) end -- CLOCK_MONOTONIC: the schedule and the timing
local wall_offset_ms = clock_ms(0) - now_ms() -- to CLOCK_REALTIME: ids and event times

local INTERVAL_MS = __INTERVAL_MS__ -- nil: not paced
local DURATION_MS = __DURATION_MS__
local EVENT_HEAD = '__EVENT_HEAD__'
local TIME_HEAD = '__TIME_HEAD__'

local hex, digit = {}, {} -- hex digits by lookup: cheaper than string.format per request
for n = 0, 255 do hex[n] = string.format("%02x", n) end
for n = 0, 15 do digit[n] = string.format("%x", n) end
local random, floor = math.random, math.floor

local head, sizes, rests, ages = nil, {}, {}, {}
local bodies, next_body, own = 0, 1, nil
local sent_at, due_at = {}, {}
-- Globals, read by done() through each thread.
from_send, from_due = {}, {}
due, ready_ms, behind_ms = nil, nil, 0
due_queue, queue_head, queue_tail = {}, 1, 0

function init(args)
  local seed, urandom = 0, io.open("/dev/urandom", "rb")
  for byte in urandom:read(6):gmatch(".") do seed = seed * 256 + byte:byte() end
  urandom:close()
  math.randomseed(seed)
  own = "-" .. hex[128 + random(0, 63)] .. hex[random(0, 255)] .. "-" .. hex[random(0, 255)]
    .. hex[random(0, 255)]
  head = "POST __PATH__ HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
    .. "\r\nAuthorization: Bearer __KEY__\r\nContent-Type: application/json\r\nContent-Length: "
  local fixed = #EVENT_HEAD + 36 + #TIME_HEAD + 19
  for line in io.lines("__POOL_FILE__") do
    local tab = line:find("\t", 1, true)
    bodies = bodies + 1
    rests[bodies] = line:sub(tab + 1)
    sizes[bodies] = fixed + #line - tab
    ages[bodies] = tonumber(line:sub(1, tab - 1))
  end
  next_body = random(bodies)
  ready_ms = now_ms()
end

-- A UUIDv7 of `ms` (Unix milliseconds, the fraction in the 12 bits after the version) whose
-- last 62 bits are this thread's own random 30 (`own`, drawn in init) and a count: unique
-- without a draw per request.
local sent_count = 0
local function event_id(ms)
  local whole = floor(ms)
  local high, low = floor(whole / 65536), whole % 65536
  local fraction = floor((ms - whole) * 4096)
  sent_count = sent_count + 1
  local count = sent_count % 4294967296
  return hex[floor(high / 16777216)] .. hex[floor(high / 65536) % 256]
    .. hex[floor(high / 256) % 256] .. hex[high % 256] .. "-" .. hex[floor(low / 256)]
    .. hex[low % 256] .. "-7" .. digit[floor(fraction / 256)] .. hex[fraction % 256] .. own
    .. hex[floor(count / 16777216)] .. hex[floor(count / 65536) % 256]
    .. hex[floor(count / 256) % 256] .. hex[count % 256]
end

local stamp_second, stamps = -1, {}
local function stamp(ms, age)
  local second = floor(ms / 1000)
  if second ~= stamp_second then stamp_second, stamps = second, {} end
  local text = stamps[age]
  if text == nil then
    -- a second before the current one, so the event's own microseconds keep it in the past
    text = os.date("!%Y-%m-%dT%H:%M:%S", second - 1 - age)
    stamps[age] = text
  end
  return text
end

local function record(histogram, ms)
  local us = ms * 1000
  if us < 0 then us = 0 end
  local key -- the middle of its bucket: 10 us wide below 100 ms, 1 ms above
  if us < 100000 then key = floor(us / 10) * 10 + 5 else key = floor(us / 1000) * 1000 + 500 end
  histogram[key] = (histogram[key] or 0) + 1
end

if INTERVAL_MS then
  function delay()
    local now = now_ms()
    if due == nil then due = now end
    local slot = due
    due = due + INTERVAL_MS
    queue_tail = queue_tail + 1
    due_queue[queue_tail] = slot
    local wait = slot - now
    if wait < 0 then
      if -wait > behind_ms then behind_ms = -wait end
      return 0
    end
    return floor(wait + 0.5)
  end
end

function request()
  local slot = nil
  if queue_head <= queue_tail then
    slot = due_queue[queue_head]
    due_queue[queue_head] = nil
    queue_head = queue_head + 1
  end
  local now = now_ms()
  local wall = now + wall_offset_ms
  local id = event_id(wall)
  sent_at[id] = now
  if slot ~= nil then due_at[id] = slot end
  local i = next_body
  next_body = i % bodies + 1
  return head .. sizes[i] .. "\r\n\r\n" .. EVENT_HEAD .. id .. TIME_HEAD .. stamp(wall, ages[i])
    .. rests[i]
end

function response(status, headers, body)
  if status ~= 202 then return end
  local id = body:sub(14, 49) -- {"event_id":"<36 characters>"}
  local sent = sent_at[id]
  if sent == nil then return end
  local now = now_ms()
  sent_at[id] = nil
  record(from_send, now - sent)
  local slot = due_at[id]
  if slot ~= nil then
    due_at[id] = nil
    record(from_due, now - slot)
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

local function unsent(thread, histogram)
  local slot = thread:get("due")
  if slot == nil then return 0 end
  local stop, count = thread:get("ready_ms") + DURATION_MS, 0
  for _, queued in pairs(thread:get("due_queue")) do -- handed to a connection, not yet sent
    if queued < stop then record(histogram, stop - queued); count = count + 1 end
  end
  while slot < stop do
    record(histogram, stop - slot)
    count = count + 1
    slot = slot + INTERVAL_MS
  end
  return count
end

local function merge(into, histogram)
  for key, count in pairs(histogram) do into[key] = (into[key] or 0) + count end
end

local function encode(histogram)
  local items = {}
  for key, count in pairs(histogram) do
    items[#items + 1] = string.format('"%d": %d', key, count)
  end
  return "{" .. table.concat(items, ", ") .. "}"
end

function done(summary, latency, requests)
  local sent, slotted, late, behind = {}, {}, 0, 0
  for _, thread in ipairs(threads) do
    merge(sent, thread:get("from_send"))
    merge(slotted, thread:get("from_due"))
    if INTERVAL_MS then late = late + unsent(thread, slotted) end
    behind = math.max(behind, thread:get("behind_ms"))
  end
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "behind_ms": %.3f, "unsent": %d, "from_send_us": %s, "from_due_us": %s}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, behind,
    late, encode(sent), encode(slotted)))
end
