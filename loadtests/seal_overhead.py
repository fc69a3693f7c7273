"""What sealing costs on the write path, and how fast verification runs.

In a scratch database (created and dropped here) it writes the same kind of batches two ways,
alternating, in one run: plain (COPY of the rows, batch id and leaf index set, nothing else) and
sealed (the writer's seal_batch: the same COPY plus Merkle root, chain lock, ledger entry,
signatures). Then it verifies everything that was sealed. Prints medians over the rounds.

    AUDIT_DATABASE_URL=postgresql://root@127.0.0.1:5432/test \\
        .venv/bin/python loadtests/seal_overhead.py --rounds 5 --batches 20 --batch-size 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from app.cli.migrate import migrate
from app.core.config import Settings, SigningKey
from app.events.model import EventIn
from app.ledger.seal import seal_batch
from app.ledger.verify import Verifier, verify_range
from app.store.models import AUDIT_COLUMNS
from app.writer.batch import record_row

KEY = SigningKey("bench", b"b" * 32)


def make_rows(count: int, batch: int) -> list[tuple[object, ...]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rows = []
    for i in range(count):
        event = EventIn.model_validate(
            {
                "action": "fhir.patient.read",
                "status": "success",
                "principal_id": f"u{i % 500}",
                "patient_id": f"p{(batch * count + i) % 20000}",
                "data_classification": "PHI",
                "target_resource_type": "Patient",
                "details": {"n": i},
            }
        )
        rows.append(record_row(event.to_record("bench", now), KEY))
    return rows


async def plain_write(conn: asyncpg.Connection, rows: list[tuple[object, ...]], batch: int) -> None:
    async with conn.transaction():
        records = [(*row, -batch, i) for i, row in enumerate(rows)]
        await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)


async def run(args: argparse.Namespace) -> None:
    base = Settings(_env_file=None)
    admin = await asyncpg.connect(base.asyncpg_dsn)
    name = f"audit_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = base.asyncpg_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(migrate, Settings(_env_file=None, database_url=dsn))
        conn = await asyncpg.connect(dsn)
        plain: list[float] = []
        sealed: list[float] = []
        for round_no in range(args.rounds):
            # Alternate which way goes first, so table growth and warm-up favour neither.
            ways = [(plain, False), (sealed, True)]
            for results, seal in ways if round_no % 2 == 0 else ways[::-1]:
                first = (round_no * 2 + seal) * args.batches
                batches = [make_rows(args.batch_size, first + b) for b in range(args.batches)]
                started = time.perf_counter()
                for b, rows in enumerate(batches):
                    if seal:
                        await seal_batch(conn, rows, KEY, None)
                    else:
                        await plain_write(conn, rows, first + b + 1)
                results.append(args.batches * args.batch_size / (time.perf_counter() - started))
            print(f"round {round_no + 1}: plain {plain[-1]:,.0f} rows/s, sealed {sealed[-1]:,.0f}")
        await conn.execute("DELETE FROM audit_log WHERE batch_id < 0")  # the plain rows
        await conn.execute("VACUUM ANALYZE audit_log")
        started = time.perf_counter()
        ring = {KEY.key_id: KEY}
        report = await verify_range(conn, Verifier(ring, ledger_keys=ring))
        seconds = time.perf_counter() - started
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    p, s = statistics.median(plain), statistics.median(sealed)
    print(f"median plain COPY      {p:,.0f} rows/s")
    print(f"median sealed batches  {s:,.0f} rows/s  (sealing costs {100 * (1 - s / p):.1f}%)")
    print(
        f"verification           {report.events:,} events in {seconds:.2f} s = "
        f"{report.events / seconds:,.0f} events/s, intact={report.intact}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=5000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
