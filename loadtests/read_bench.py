"""Read-side benchmark: first-page latency of every query and report, and NDJSON export speed,
through the HTTP API of a running service, on whatever the database holds (seed it first with
`python -m app dev seed`).

    python loadtests/read_bench.py --url http://127.0.0.1:8000 --key KEY --org org-01 \\
        --database-url postgresql://... --runs 15 --export-rows 1000000 --out read-bench.json

Each query runs once to warm the cache, then --runs times; the table shows the median and the
slowest run. Parameter values (a patient, a principal, a correlation id) are picked from the
data the organization holds, so every query returns a full first page where the data allows.
The export streams the newest --export-rows events (a time window chosen to hold that many) and
counts lines as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

PICKS = {
    "patient": "SELECT patient_id FROM audit_log WHERE organization_id = $1"
    " AND patient_id IS NOT NULL AND data_classification = 'PHI' ORDER BY timestamp DESC LIMIT 1",
    "principal": "SELECT principal_id FROM audit_log WHERE organization_id = $1"
    " AND patient_id IS NOT NULL ORDER BY timestamp DESC LIMIT 1",
    "correlation": "SELECT correlation_id FROM audit_log WHERE organization_id = $1"
    " AND correlation_id IS NOT NULL ORDER BY timestamp DESC OFFSET 5000 LIMIT 1",
    "newest": "SELECT max(timestamp) FROM audit_log WHERE organization_id = $1",
}
WINDOW_START = """
SELECT timestamp FROM audit_log WHERE organization_id = $1 ORDER BY timestamp DESC
OFFSET $2 LIMIT 1
"""


def queries(picked: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, params) of every query and report the API offers."""
    month_end = picked["newest"] - timedelta(days=60)
    month_start = month_end - timedelta(days=30)
    patient, principal = picked["patient"], picked["principal"]
    return [
        ("newest events", "/events", {}),
        ("oldest first (order=asc)", "/events", {"order": "asc"}),
        (
            "a month, two months back",
            "/events",
            {"start": month_start.isoformat(), "end": month_end.isoformat()},
        ),
        ("principal_id", "/events", {"principal_id": principal}),
        ("patient_id", "/events", {"patient_id": patient}),
        ("action (common)", "/events", {"action": "fhir.patient.read"}),
        ("action (rare)", "/events", {"action": "fhir.patient.delete"}),
        ("action=a&action=b", "/events", {"action": ["fhir.patient.update", "report.export"]}),
        ("action_prefix fhir.patient.", "/events", {"action_prefix": "fhir.patient."}),
        ("action_prefix admin.", "/events", {"action_prefix": "admin."}),
        ("status=failure", "/events", {"status": "failure"}),
        ("classification CONFIDENTIAL", "/events", {"data_classification": "CONFIDENTIAL"}),
        ("correlation_id", "/events", {"correlation_id": picked["correlation"]}),
        ("purpose_of_use HRESCH (1%)", "/events", {"purpose_of_use": "HRESCH"}),
        ("break_glass=true", "/events", {"break_glass": "true"}),
        ("PHI report: patient", f"/phi-access/patients/{patient}", {}),
        ("PHI report: principal", f"/phi-access/principals/{principal}", {}),
        ("PHI summary: patient", f"/phi-access/patients/{patient}", {"summary": "true"}),
        ("PHI summary: principal", f"/phi-access/principals/{principal}", {"summary": "true"}),
    ]


async def pick(database_url: str, org: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        return {name: await conn.fetchval(sql, org) for name, sql in PICKS.items()}
    finally:
        await conn.close()


async def window_for(database_url: str, org: str, rows: int) -> datetime:
    conn = await asyncpg.connect(database_url)
    try:
        start: datetime = await conn.fetchval(WINDOW_START, org, rows - 1)
        return start
    finally:
        await conn.close()


async def time_query(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], runs: int
) -> dict[str, Any]:
    first = await client.get(path, params=params)  # warm the cache
    if first.status_code != 200:
        raise SystemExit(f"{path} {params}: {first.status_code} {first.text[:200]}")
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        resp = await client.get(path, params=params)
        timings.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
    return {
        "rows": len(first.json()["items"]),
        "median_ms": round(statistics.median(timings), 1),
        "max_ms": round(max(timings), 1),
    }


async def _read_with_curl(url: str, authorization: str) -> tuple[int, int]:
    """Lines and bytes of the response, read by curl and counted by wc (C programs: the reading
    side costs the machine little, so the figure is the service's)."""
    command = 'curl -sfN -H "$AUTH" "$URL" | tee >(wc -c >&2) | wc -l'
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        command,
        env={**os.environ, "AUTH": f"Authorization: {authorization}", "URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"curl failed on {url}")
    return int(out), int(err)


async def time_export(client: httpx.AsyncClient, start: datetime) -> dict[str, Any]:
    params = {"start": start.isoformat(), "format": "ndjson"}
    lines, size = 0, 0
    started = time.perf_counter()
    if shutil.which("curl") and shutil.which("bash"):
        url = str(client.build_request("GET", "/events/export", params=params).url)
        lines, size = await _read_with_curl(url, client.headers["Authorization"])
    else:
        async with client.stream("GET", "/events/export", params=params) as resp:
            resp.raise_for_status()
            async for chunk in resp.aiter_bytes():
                lines += chunk.count(b"\n")
                size += len(chunk)
    seconds = time.perf_counter() - started
    return {
        "rows": lines,
        "megabytes": round(size / 1e6, 1),
        "seconds": round(seconds, 2),
        "rows_per_second": round(lines / seconds),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    picked = await pick(args.database_url, args.org)
    headers = {"Authorization": f"Bearer {args.key}"}
    results: dict[str, Any] = {"queries": {}, "picked": {k: str(v) for k, v in picked.items()}}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300) as client:
        for name, path, params in queries(picked):
            results["queries"][name] = await time_query(client, path, params, args.runs)
            print(f"{name:34} {results['queries'][name]}", flush=True)
        if args.export_rows:
            start = await window_for(args.database_url, args.org, args.export_rows)
            exports = [await time_export(client, start) for _ in range(args.export_runs)]
            for export in exports:
                print(f"NDJSON export {export}", flush=True)
            rates = [e["rows_per_second"] for e in exports]
            results["export"] = {
                "runs": exports,
                "median_rows_per_second": statistics.median(rates),
            }
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| query | rows | median ms | max ms |", "|---|---:|---:|---:|"]
    for name, r in results["queries"].items():
        lines.append(f"| {name} | {r['rows']} | {r['median_ms']} | {r['max_ms']} |")
    if "export" in results:
        for e in results["export"]["runs"]:
            lines.append(
                f"| NDJSON export, {e['rows']:,} rows ({e['megabytes']} MB) | | "
                f"{e['seconds']} s | {e['rows_per_second']:,} rows/s |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key with the read scope")
    parser.add_argument("--org", required=True, help="the key's organization")
    parser.add_argument("--database-url", required=True, help="to pick realistic parameters")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--export-runs", type=int, default=3)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(table(results))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
