"""Ingest probe: drive a running service with bulk (or single) posts for a fixed time, then wait
until the queue drains, and print accepted and persisted rates and request latency.

    python loadtests/bench.py --url http://127.0.0.1:8000 --key "$(cat .data/dev-api-key)" \\
        --seconds 20 --bulk 1000 --concurrency 8

The request loop is bounded by --seconds and the drain wait by --drain-timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass
class Tally:
    accepted: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def body_for(bulk: int, index: int) -> bytes:
    event = {
        "action": "fhir.patient.read",
        "status": "success",
        "principal_id": f"bench-{index}",
        "patient_id": f"p-{index}",
        "data_classification": "PHI",
        "target_resource_type": "Patient",
        "details": {"probe": True},
    }
    # No event_id or timestamp: the server gives each accepted copy its own.
    return orjson.dumps([event] * bulk if bulk else event)


async def drive(client: httpx.AsyncClient, path: str, body: bytes, until: float, t: Tally) -> None:
    per_request = max(1, body.count(b'"action"'))
    while time.perf_counter() < until:
        started = time.perf_counter()
        resp = await client.post(path, content=body)
        t.latencies.append(time.perf_counter() - started)
        if resp.status_code == 202:
            t.accepted += per_request
        else:
            t.refused[resp.status_code] = t.refused.get(resp.status_code, 0) + 1
            await asyncio.sleep(0.05)


async def queued(client: httpx.AsyncClient) -> int:
    resp = await client.get("/queue/stats")
    resp.raise_for_status()
    return int(resp.json()["queued_events"])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, limits=limits, timeout=30
    ) as client:
        before = await queued(client)
        tally = Tally()
        path = "/events/bulk" if args.bulk else "/events"
        started = time.perf_counter()
        until = started + args.seconds
        await asyncio.gather(
            *(
                drive(client, path, body_for(args.bulk, i), until, tally)
                for i in range(args.concurrency)
            )
        )
        sent_for = time.perf_counter() - started
        deadline = time.perf_counter() + args.drain_timeout
        depth = await queued(client)
        while depth > before and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            depth = await queued(client)
        drained_after = time.perf_counter() - started
    ms = [x * 1000 for x in tally.latencies]
    print(
        f"requests           {len(ms)} ({path}, {args.bulk or 1} events each, "
        f"concurrency {args.concurrency})"
    )
    print(
        f"accepted events    {tally.accepted} in {sent_for:.1f} s = "
        f"{tally.accepted / sent_for:,.0f} events/s"
    )
    print(
        f"drained            after {drained_after:.1f} s = "
        f"{tally.accepted / drained_after:,.0f} events/s persisted"
        + ("" if depth <= before else f"  (NOT drained: {depth} queued)")
    )
    if ms:
        print(
            f"latency ms         p50 {statistics.median(ms):.1f}  p95 {percentile(ms, 0.95):.1f}"
            f"  p99 {percentile(ms, 0.99):.1f}  max {max(ms):.1f}"
        )
    if tally.refused:
        print(f"refused            {tally.refused}")
    return 0 if depth <= before else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key with ingest and admin scopes")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bulk", type=int, default=1000, help="events per request; 0: single")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
