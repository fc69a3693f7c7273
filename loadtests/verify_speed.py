"""How fast `python -m app verify --jobs 1` checks a whole log: seed N realistic events (`dev
seed`: one chain, signed, sealed by the writer's own storage step) into a scratch database
(created here, dropped after), run the command on it a few times and print, for each run and as
medians, its CPU (user + system, of the command's process alone), events per second per CPU core
(events / CPU seconds) and wall time. On a shared host CPU is the figure to compare: wall time
waits for PostgreSQL and for other work. Each run is checked: intact, every event, and exit 0,
or 3 (intact but not anchored: the scratch log has no witnesses).

    .venv/bin/python -m loadtests.verify_speed                       # 200,000 events, 5 runs
    .venv/bin/python -m loadtests.verify_speed --short               # 5,000 events, 1 run (CI)
    .venv/bin/python -m loadtests.verify_speed --checkout ../main --checkout .

With several --checkout directories the runs alternate between them (each runs `python -m app`
from its own directory with this interpreter, so its own `app` package is imported): a change
and what it changes, measured under the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from app.cli.migrate import migrate
from app.cli.seed import SeedPlan, run_seed
from app.core.config import Settings
from app.ledger.signing import new_keypair
from loadtests.bench.database import with_database

ROOT = Path(__file__).resolve().parents[1]
LOCAL_POSTGRES = "postgresql://root@127.0.0.1:5432/test"
SHORT_EVENTS = 5_000
# Exit codes of a run that found every event intact: 3 says no cosigned checkpoint anchors it.
INTACT_EXITS = {0, 3}


@dataclass(frozen=True, slots=True)
class VerifyRun:
    checkout: Path
    cpu_s: float
    user_s: float
    system_s: float
    wall_s: float
    events: int

    @property
    def events_per_core_s(self) -> float:
        return self.events / self.cpu_s if self.cpu_s else 0.0


async def admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(Settings(_env_file=None, database_url=server_url).asyncpg_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def keys_env(database_url: str, scratch: Path) -> dict[str, str]:
    """Fresh keys for the seed and the verification (events', ledger heads' and Ed25519), and
    empty places for checkpoints and witness state (not those of the checkout it runs from)."""
    private, public = new_keypair()
    return {
        "AUDIT_DATABASE_URL": database_url,
        "AUDIT_CHECKPOINT_DIR": str(scratch / "checkpoints"),
        "AUDIT_WITNESS_DIR": str(scratch / "witness"),
        "AUDIT_SIGNING_KEYS": "bench-events:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "AUDIT_LEDGER_KEYS": "bench-ledger:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "AUDIT_LEDGER_PRIVATE_KEY": private,
        "AUDIT_LEDGER_PUBLIC_KEY": public,
    }


def settings_from(env: dict[str, str]) -> Settings:
    return Settings(
        _env_file=None,
        database_url=env["AUDIT_DATABASE_URL"],
        signing_keys=env["AUDIT_SIGNING_KEYS"],
        ledger_keys=env["AUDIT_LEDGER_KEYS"],
        ledger_private_key=env["AUDIT_LEDGER_PRIVATE_KEY"],
        ledger_public_key=env["AUDIT_LEDGER_PUBLIC_KEY"],
    )


def verify_once(checkout: Path, env: dict[str, str], events: int) -> VerifyRun:
    """One `python -m app verify --jobs 1` from `checkout`; its CPU from the children's rusage
    (the command starts no processes of its own with one job)."""
    command = [sys.executable, "-m", "app", "verify", "--jobs", "1"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in INTACT_EXITS:
        raise SystemExit(f"verify in {checkout} exited {done.returncode}:\n{done.stderr[-3000:]}")
    summary = orjson.loads(done.stdout.splitlines()[-1])
    if not summary["intact"] or summary["events"] != events:
        raise SystemExit(f"verify in {checkout} did not find {events} intact events: {summary}")
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return VerifyRun(checkout, user + system, user, system, wall, summary["events"])


def describe(run: VerifyRun) -> str:
    return (
        f"CPU {run.cpu_s:.2f} s (user {run.user_s:.2f} + sys {run.system_s:.2f}), "
        f"{run.events_per_core_s:,.0f} events/s per CPU core, wall {run.wall_s:.2f} s"
    )


def host_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"host: {os.cpu_count()} CPUs, load average {load}, Python {platform.python_version()}, "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}"
    )


def run(args: argparse.Namespace) -> list[VerifyRun]:
    checkouts = [Path(c).resolve() for c in args.checkout] or [ROOT]
    for checkout in checkouts:
        if not (checkout / "app" / "__main__.py").is_file():
            raise SystemExit(f"{checkout} holds no app package")
    name = f"audit_verifyspeed_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(args.database_url, f'CREATE DATABASE "{name}"'))
    scratch = tempfile.TemporaryDirectory(prefix="verify-speed-")
    env = keys_env(with_database(args.database_url, name), Path(scratch.name))
    runs: list[VerifyRun] = []
    try:
        settings = settings_from(env)
        migrate(settings)
        plan = SeedPlan(
            events=args.events,
            orgs=args.orgs,
            months=args.months,
            batch_size=args.batch_size,
            processes=args.seed_processes,
        )
        seeded = run_seed(settings, plan)
        print(
            f"seeded {seeded['events']:,} events in {seeded['seconds']} s "
            f"(batches of {args.batch_size}, organizations {args.orgs}, months {args.months})"
        )
        print(host_line())
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
        child_env.update(env)
        for _ in range(args.warmup):
            for checkout in checkouts:
                verify_once(checkout, child_env, seeded["events"])
        for number in range(args.runs):
            for checkout in checkouts:
                done = verify_once(checkout, child_env, seeded["events"])
                runs.append(done)
                print(f"run {number + 1} {checkout}: {describe(done)}")
        print(host_line())
    finally:
        scratch.cleanup()
        if args.keep:
            print(f"kept {name}: AUDIT_DATABASE_URL={env['AUDIT_DATABASE_URL']}")
        else:
            asyncio.run(admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    for checkout in checkouts:
        mine = [r for r in runs if r.checkout == checkout]
        cpu = statistics.median(r.cpu_s for r in mine)
        wall = statistics.median(r.wall_s for r in mine)
        events = mine[0].events
        print(
            f"median of {len(mine)} {checkout}: verify {events:,} events: CPU {cpu:.2f} s, "
            f"{events / cpu:,.0f} events/s per CPU core, wall {wall:.2f} s"
        )
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="runs per checkout not counted")
    parser.add_argument("--orgs", type=int, default=2)
    parser.add_argument("--months", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--seed-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"{SHORT_EVENTS:,} events in batches of 1,000, one run, no warm-up: seconds",
    )
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        help="a directory holding an `app` package to run (repeat to alternate; default: this one)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AUDIT_DATABASE_URL") or LOCAL_POSTGRES,
        help="a database on the server to make the scratch database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    if args.short:
        args.events, args.batch_size, args.runs, args.warmup = SHORT_EVENTS, 1000, 1, 0
        args.seed_processes = 1
    return args


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
