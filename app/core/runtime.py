"""Garbage-collector settings for the long-running processes (API and worker)."""

from __future__ import annotations

import gc

# Allocations between young-generation collections (Python's default is 700). A bulk request or
# a batch makes tens of thousands of short-lived objects, nearly all freed by reference counting;
# at the default every request triggered dozens of collections, each also walking what start-up
# had built. A higher threshold makes both the worker's row building and the API's validation
# faster (BENCHMARKS.md).
GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect once, freeze what start-up built (modules, the app, schemas, pools) so later
    collections skip it, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
