"""`python -m bench`: run the benchmarks (from the repository root), print each figure and
optionally write them all as one JSON object."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.runner import ALL
from bench.runner import main as run_benchmarks

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=f"benchmarks {', '.join(ALL)}:"
                                " ratios of contenders measured side by side in one run")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here")
    p.add_argument("--quick", action="store_true", help="small sizes (a CI smoke run)")
    p.add_argument("--only", default=None, metavar="B1,B3", help="comma-separated subset")
    p.add_argument("--workdir", type=Path, default=None,
                   help="B2: use this finished run's ingredients and held-out split")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The harness's and raysoup's progress lines at INFO; libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="bench: %(message)s", stream=sys.stderr)
    for name in ("bench", "raysoup"):
        logging.getLogger(name).setLevel(logging.INFO)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    try:
        return run_benchmarks(args.json, args.quick, only, args.workdir, args.device)
    except ValueError as err:  # an unknown benchmark name
        print(f"bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
