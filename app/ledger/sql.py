"""The ledger's SQL, every statement in one place: sealing, verification, proofs, bundles and
retention's pruning. asyncpg placeholders ($1...); `{table}` names a partition, always quoted
by the caller (app.ledger.prune.quote_ident)."""

# seal
EXISTING_KEYS = """
SELECT * FROM audit_log
WHERE (event_id, "timestamp", organization_id) IN (
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]))
"""
# The batch id, and the chain's newest entry before the lock: the batch's leaves are appended to
# its frontier while the rows are copied; under the lock NEWEST_ENTRY checks it is still newest.
NEXT_BATCH = """
SELECT nextval('audit_batch_id_seq') AS batch_id, n.seq, n.tree_size, n.frontier
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT seq, tree_size, frontier FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1
) AS n ON true
"""
CHAIN_LOCK = "SELECT pg_advisory_xact_lock($1)"
# Under the lock: the newest entry (its columns NULL when the chain has none) and the next entry's
# sealed_at, the database's clock now or the newest entry's sealed_at if that is later, so a
# chain's sealed_at never decreases whichever writer's transaction began first.
NEWEST_ENTRY = """
SELECT n.seq, n.head, n.tree_size, n.frontier, greatest(clock_timestamp(), n.sealed_at) AS sealed_at
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT seq, head, tree_size, frontier, sealed_at FROM audit_ledger
    WHERE chain = $1 ORDER BY seq DESC LIMIT 1
) AS n ON true
"""
# The entry and the batch's new tile hashes in one statement: each tile's new hashes are appended
# to its bytes (the row made when they are its first), never read back.
APPEND_ENTRY = """
WITH tiles AS (
    INSERT INTO audit_log_tiles AS t (chain, level, idx, hashes)
    SELECT $1, u.level, u.idx, u.hashes
    FROM unnest($17::smallint[], $18::bigint[], $19::bytea[]) AS u(level, idx, hashes)
    ON CONFLICT (chain, level, idx) DO UPDATE SET hashes = t.hashes || EXCLUDED.hashes
)
INSERT INTO audit_ledger (chain, seq, batch_id, event_count, merkle_root, first_timestamp,
    last_timestamp, prev_head, head, key_id, signature, public_signature, tree_size, tree_root,
    frontier, head_version, sealed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $20)
"""
# Key retirements (app.ledger.rotation, app.writer.retirements): one writer process at a time
# records them (a lock only tried), after reading those sealed so far, with their chains.
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
RECORDED_RETIREMENTS = """
SELECT a.*, l.chain FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE a.organization_id = $1 AND a.action = $2
"""

# verify
LEDGER_CHUNK = """
SELECT * FROM audit_ledger WHERE chain = $4 AND seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3
"""
ROWS_OF_BATCHES = """
SELECT * FROM audit_log WHERE batch_id >= $1 AND batch_id <= $2
ORDER BY batch_id, leaf_index
"""
# With several chains a chain's batch ids interleave with the others': read only its own.
ROWS_OF_CHAIN = """
SELECT * FROM audit_log WHERE batch_id >= $1 AND batch_id <= $2
  AND batch_id IN (SELECT batch_id FROM audit_ledger
                   WHERE chain = $3 AND batch_id >= $1 AND batch_id <= $2)
ORDER BY batch_id, leaf_index
"""
CHAINS = "SELECT DISTINCT chain FROM audit_ledger ORDER BY chain"
SEVERAL_CHAINS = "SELECT EXISTS (SELECT 1 FROM audit_ledger WHERE chain > 0)"
NEWEST_SEQ = "SELECT max(seq) FROM audit_ledger WHERE chain = $1"
ENTRY_AT = "SELECT * FROM audit_ledger WHERE chain = $1 AND seq = $2"
ORPHANS = """
SELECT a.event_id, a.organization_id FROM audit_log a
WHERE a.batch_id IS NULL OR a.batch_id < 1
   OR NOT EXISTS (SELECT 1 FROM audit_ledger l WHERE l.batch_id = a.batch_id)
"""
UNSEALED = "SELECT event_id, organization_id FROM audit_log WHERE batch_id IS NULL OR batch_id < 1"
BATCHES_BEYOND = "SELECT DISTINCT batch_id FROM audit_log WHERE batch_id >= $1"
KNOWN_BATCHES = "SELECT batch_id FROM audit_ledger WHERE batch_id = ANY($1::bigint[])"
ANY_PRUNED = "SELECT EXISTS (SELECT 1 FROM audit_pruned_batches)"
PRUNED_BATCHES = "SELECT * FROM audit_pruned_batches WHERE batch_id = ANY($1::bigint[])"
BY_BATCH_INDEX = "SET LOCAL enable_seqscan = off"
# The key retirements (app.ledger.rotation) sealed into a chain before an entry, with the columns
# of the entries sealing them, through the organization and action index.
RETIREMENTS_BEFORE = """
SELECT a.*, l.seq, l.tree_size, l.sealed_at FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE a.organization_id = $1 AND a.action = $2 AND l.chain = $3 AND l.seq < $4
ORDER BY l.seq, a.leaf_index
"""


# verify_guard
CHAIN_HEADS = "SELECT chain, max(seq) AS head FROM audit_ledger GROUP BY chain ORDER BY chain"


# proofs
PROOF_ROW = """
SELECT a.event_id, a.hash, a.leaf_index, l.* FROM audit_log a
JOIN audit_ledger l ON l.batch_id = a.batch_id
WHERE a.event_id = $1 AND a.organization_id = $2
ORDER BY a."timestamp" LIMIT 1
"""
EVENT_ROW = """
SELECT * FROM audit_log WHERE event_id = $1 AND organization_id = $2
ORDER BY "timestamp" LIMIT 1
"""
ENTRY_OF_BATCH = "SELECT * FROM audit_ledger WHERE batch_id = $1"
BATCH_LEAVES = "SELECT hash, leaf_index FROM audit_log WHERE batch_id = $1 ORDER BY leaf_index"
PRUNED_LEAVES = "SELECT leaves FROM audit_pruned_batches WHERE batch_id = $1"
NEWEST_OF_CHAIN = "SELECT * FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
NEWEST_OF_EACH_CHAIN = "SELECT DISTINCT ON (chain) * FROM audit_ledger ORDER BY chain, seq DESC"


# the log (app.ledger.logstore)
LOG_TILES_AT = """
SELECT level, idx, hashes FROM audit_log_tiles
WHERE chain = $1 AND (level, idx) IN (SELECT * FROM unnest($2::smallint[], $3::bigint[]))
"""
LOG_TILE = "SELECT hashes FROM audit_log_tiles WHERE chain = $1 AND level = $2 AND idx = $3"
# Per tile level: how many tiles, the last one's index and bytes, and the log's size, in one
# snapshot (a batch sealed meanwhile adds to both or neither).
LOG_TILE_EXTENTS = """
SELECT t.level, count(*) AS tiles, max(t.idx) AS last_idx,
       (array_agg(length(t.hashes) ORDER BY t.idx DESC))[1] AS last_bytes,
       (SELECT tree_size FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1) AS size
FROM audit_log_tiles t WHERE t.chain = $1 GROUP BY t.level ORDER BY t.level
"""
NEWEST_SIZE = "SELECT tree_size FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
ENTRY_OF_SIZE = """
SELECT * FROM audit_ledger WHERE chain = $1 AND tree_size = $2 ORDER BY seq LIMIT 1
"""


# bundles
BUNDLE_EVENTS = """
SELECT a.*, l.chain AS batch_chain, l.seq AS batch_seq
FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE a."timestamp" >= $1 AND a."timestamp" < $2 AND ($3::text IS NULL OR a.organization_id = $3)
ORDER BY l.chain, l.seq, a.leaf_index
"""
BUNDLE_ENTRIES = """
SELECT * FROM audit_ledger WHERE chain = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq
"""
BUNDLE_LEAVES = """
SELECT l.seq, a.leaf_index, a.hash, a.event_id, a."timestamp", a.organization_id
FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE l.chain = $1 AND l.seq >= $2 AND l.seq <= $3 ORDER BY l.seq, a.leaf_index
"""


# prune
PARTITIONS = r"""
SELECT c.relname AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz
           AS range_start,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
           AS range_end
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_log'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
ORDER BY 2
"""
BATCHES_IN = """
SELECT p.batch_id, count(*) AS events, l.event_count, b.pruned_events, b.leaves
FROM {table} p
LEFT JOIN audit_ledger l ON l.batch_id = p.batch_id
LEFT JOIN audit_pruned_batches b ON b.batch_id = p.batch_id
GROUP BY p.batch_id, l.event_count, b.pruned_events, b.leaves
"""
LEAVES_IN = "SELECT leaf_index, hash FROM {table} WHERE batch_id = $1 ORDER BY leaf_index"
INSERT_PRUNE = """
INSERT INTO audit_prunes (partition_name, range_start, range_end, event_count, batch_count,
    pruned_at, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
"""
UPSERT_PRUNED_BATCH = """
INSERT INTO audit_pruned_batches (batch_id, pruned_events, leaves, key_id, signature)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (batch_id) DO UPDATE SET pruned_events = EXCLUDED.pruned_events,
    leaves = EXCLUDED.leaves, key_id = EXCLUDED.key_id, signature = EXCLUDED.signature
"""
COUNT_ROWS = "SELECT count(*) FROM {table}"
LOCK_TIMEOUT_IS = "SET LOCAL lock_timeout = '{timeout}'"
LOCK_PARTITION = "LOCK TABLE {table} IN SHARE MODE"
DETACH_PARTITION = "ALTER TABLE audit_log DETACH PARTITION {table}"
DROP_PARTITION = "DROP TABLE {table}"
PRUNES = "SELECT * FROM audit_prunes ORDER BY range_start, id"
