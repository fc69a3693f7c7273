"""`python -m loadtests.bench`: see the package docstring."""

from __future__ import annotations

import asyncio
import logging

from loadtests.bench.options import parse_options
from loadtests.bench.report import markdown, write_json
from loadtests.bench.run import run_bench


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = parse_options(argv)
    result = asyncio.run(run_bench(options))
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "bench-results.json")
    summary = markdown(result)
    (out / "bench-results.md").write_text(summary)
    print(summary)
    if options.charts:
        try:
            from loadtests.bench.charts import write_charts
        except ImportError:
            print("matplotlib is not installed: no charts (pip install -e '.[dev]')")
        else:
            for path in write_charts(result.timeline, out / "bench-charts"):
                print(f"chart: {path}")
    return 0 if result.accounting.ok and result.verification.intact else 1


if __name__ == "__main__":
    raise SystemExit(main())
