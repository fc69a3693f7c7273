"""`python -m loadtests.faults [--short] [--scenario NAME ...]`: run, print the table, exit 1 if
any scenario failed (2 when this machine lacks the servers)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from loadtests.faults.checks import table
from loadtests.faults.scenarios import NAMES, run_scenarios
from loadtests.faults.servers import missing_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.faults", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short version (the test suite's)")
    parser.add_argument(
        "--scenario", action="append", choices=NAMES, help="run only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"cannot run: {', '.join(missing)} not found", file=sys.stderr)
        return 2
    started = time.monotonic()
    outcomes = asyncio.run(run_scenarios(args.scenario, short=args.short))
    print(table(outcomes))
    print(f"{'short' if args.short else 'full'} run: {time.monotonic() - started:.0f} s")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
