"""The wall time of one seal_batch, median over many batches, in a scratch database (created
and dropped here). Run it on two checkouts one after the other to compare a change:

    AUDIT_DATABASE_URL=postgresql://root@127.0.0.1:5432/test \\
        .venv/bin/python -m loadtests.seal_batch_time --batch-size 500 --batches 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from app.cli.migrate import migrate
from app.core.config import Settings
from app.ledger.seal import seal_batch
from loadtests.seal_overhead import KEY, make_rows


async def run(args: argparse.Namespace) -> None:
    base = Settings(_env_file=None)
    admin = await asyncpg.connect(base.asyncpg_dsn)
    name = f"audit_sealtime_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = base.asyncpg_dsn.rsplit("/", 1)[0] + f"/{name}"
    times: list[float] = []
    try:
        await asyncio.to_thread(migrate, Settings(_env_file=None, database_url=dsn))
        conn = await asyncpg.connect(dsn)
        batches = [make_rows(args.batch_size, b) for b in range(args.warmup + args.batches)]
        for b, rows in enumerate(batches):
            started = time.perf_counter()
            await seal_batch(conn, rows, KEY, None)
            if b >= args.warmup:
                times.append(time.perf_counter() - started)
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10)
    print(
        f"seal_batch of {args.batch_size}: median {median * 1000:.2f} ms over {len(times)} "
        f"batches (p10 {deciles[0] * 1000:.2f}, p90 {deciles[-1] * 1000:.2f}), "
        f"{args.batch_size / median:,.0f} events/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
