"""The write-side benchmark, one command from storage limit to verified ledger:

    .venv/bin/python -m loadtests.bench [--runs 3] [--hold 60] [--smoke]

1. storage limit: the writer's batch write (record_row + seal_batch) straight into a scratch
   database, 1 and 2 connections, no HTTP, no Redis;
2. the service as the README runs it (`serve` with its writers off, `worker`), on its own
   database and stream prefix; each load generator's ceiling on GET /healthz;
3. --runs times: an open-loop bulk ramp to the highest rate that holds (backlog bounded, no
   failed request), a hold there; single-event POSTs at saturation and at 80%; a steady phase;
   every event from a synthetic population of 100,000 patients and 6,200 principals
   (population.py), in bodies prepared ahead (payloads.py); open-loop latency timed from each
   request's send and from its schedule (driver.py, wrk_events.lua);
4. drain, accounting (every accepted event stored once and sealed) and `python -m app verify`;
5. bench-results.json, bench-results.md (also printed) and bench-charts/*.png.

Exit status 0 only when the accounting holds and the ledger verifies. `--smoke` runs it all in
seconds and says nothing about speed.
"""
