"""`raysoup run|sweep|evaluate|soup|report|resume` — thin: validate the config, call the pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from raysoup.config import ConfigError, load_experiment

EXIT_CONFIG = 2

STAGE_COMMANDS = {
    "run": ("sweep", "evaluate", "soup", "report"),
    "sweep": ("sweep",),
    "evaluate": ("evaluate",),
    "soup": ("soup",),
    "report": ("report",),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysoup", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, stages in STAGE_COMMANDS.items():
        s = sub.add_parser(name, help=f"stages: {', '.join(stages)}")
        s.add_argument("config", type=Path, help="experiment YAML, e.g. experiments/tiny.yaml")
        _common(s)
    r = sub.add_parser("resume", help="continue a workdir's run (its saved experiment.yaml)")
    r.add_argument("workdir", type=Path)
    r.add_argument("--address", default=None)
    return p


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--workdir", default=None, help="default: the config's workdir or ./runs/<name>")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field, e.g. --set sweep.num_samples=4 (repeatable)")
    s.add_argument("--address", default=None,
                   help="join an existing Ray cluster ('auto' or host:port); default: start locally")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Our progress lines at INFO; libraries (open_clip, mlflow, alembic) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="raysoup: %(message)s", stream=sys.stderr)
    logging.getLogger("raysoup").setLevel(logging.INFO)
    try:
        if args.command == "resume":
            from raysoup.orchestration.pipeline import CONFIG_SNAPSHOT

            snapshot = args.workdir / CONFIG_SNAPSHOT
            if not snapshot.exists():
                raise ConfigError(f"{args.workdir} is not a raysoup workdir (no {CONFIG_SNAPSHOT})")
            cfg = load_experiment(snapshot)
            workdir, stages = args.workdir.absolute(), STAGE_COMMANDS["run"]
        else:
            cfg = load_experiment(args.config, args.overrides)
            workdir, stages = cfg.resolved_workdir(args.workdir), STAGE_COMMANDS[args.command]
    except ConfigError as err:
        print(f"raysoup: {err}", file=sys.stderr)
        return EXIT_CONFIG

    from raysoup.orchestration.pipeline import run_pipeline  # heavy imports after validation

    try:
        run = run_pipeline(cfg, workdir, stages, address=args.address)
    except KeyboardInterrupt:
        print("raysoup: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        # Our errors name the culprit; RAYSOUP_DEBUG=1 shows the traceback too.
        if os.environ.get("RAYSOUP_DEBUG"):
            raise
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    if args.command in ("run", "resume", "report"):
        print(run.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
