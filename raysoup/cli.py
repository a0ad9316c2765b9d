"""The `raysoup` command: a thin layer over the Python API (`raysoup.api`).

The parser needs only argparse: everything else is imported by the command that runs (after
parsing), so `raysoup --help` loads no pydantic, pyarrow, torch or Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

EXIT_CONFIG = 2

STAGE_COMMANDS = {
    "run": ("sweep", "evaluate", "soup", "report"),
    "sweep": ("sweep",),
    "evaluate": ("evaluate",),
    "soup": ("soup",),
    "report": ("report",),
}


DESCRIPTION = """\
Fine-tune a model many times on Ray (sweep), evaluate every fine-tune in parallel (evaluate),
average their weights into model soups (soup) and write a report (report).
`raysoup run CONFIG` runs all four; each stage is also a command of its own."""

EPILOG = "examples: raysoup run experiments/tiny.yaml; raysoup run CONFIG --dry-run; " \
         "raysoup resume runs/tiny. Docs: README.md and docs/."


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it (or there is none to show:
    None, a flag's False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if "default" in text or nothing:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    import raysoup

    return f"raysoup {raysoup.__version__}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysoup", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = _with_formatter(sub.add_parser)
    for name, stages in STAGE_COMMANDS.items():
        s = sub.add_parser(name, help=f"stages: {', '.join(stages)}")
        s.add_argument("config", type=Path, help="experiment YAML, e.g. experiments/tiny.yaml")
        _common(s)
        s.add_argument("--dry-run", action="store_true",
                       help="validate the config and print the plan; touch no data, weights, "
                            "Ray or MLflow")
    r = sub.add_parser("resume", help="continue a workdir's run (its saved experiment.yaml)")
    r.add_argument("workdir", help="a local path or an s3:// / gs:// URI")
    r.add_argument("--address", default=None,
                   help="join an existing Ray cluster ('auto' or host:port); default: start "
                        "locally")
    _metrics_port(r)
    _import_parser(sub)
    _export_parser(sub)
    _pretrain_parser(sub)
    _fidelity_parser(sub)
    _analyze_parser(sub)
    _data_parser(sub)
    return p


def _with_formatter(add_parser):
    """`add_parser` whose subcommands format their help as the top level does."""
    def add(*args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        return add_parser(*args, **kwargs)
    return add


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="a soup or ingredient as files plain open_clip (or any "
                                      "safetensors reader) loads, with a model card")
    e.add_argument("model", type=Path, metavar="MODEL",
                   help="WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name>")
    e.add_argument("--format", default=None, choices=("open_clip", "hf", "safetensors"),
                   help="open_clip (the image default): a full CLIP in open_clip's local-dir: "
                        "layout (the soup's image tower, the base text tower) + head; hf (the "
                        "text default): a transformers save_pretrained directory; safetensors: "
                        "the classifier")
    e.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="an absent or empty directory, or an earlier export (replaced); any "
                        "other existing DIR is refused")
    e.add_argument("--overwrite", action="store_true",
                   help="export over an existing DIR raysoup did not write: it is moved aside "
                        "as .old-DIR-<id> next to it (never deleted) and the path printed")


def _export(args: argparse.Namespace) -> int:
    from raysoup.export.command import export_model

    try:
        out = export_model(args.model, args.format, args.out, args.overwrite)
    except (ValueError, OSError) as err:  # ExportError, a corrupt shard: named in the message
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.model} ({args.format or 'default format'}) to {out}")
    if args.format in (None, "open_clip") and (out / "open_clip_config.json").exists():
        print(f'load: open_clip.create_model_and_transforms("local-dir:{out}")')
    return 0


def _pretrain_parser(sub) -> None:
    t = sub.add_parser("pretrain", help="contrastively pre-train a base CLIP on the config's "
                                        "world (model.pretrain) and write it to a directory")
    t.add_argument("config", type=Path, help="experiment YAML with a model.pretrain section, "
                                             "e.g. experiments/tiny_base.yaml")
    t.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="writes DIR/clip.safetensors and DIR/manifest.json (recipe, vocabulary, "
                        "metrics, sha256); use it as model.pretrained: DIR/clip.safetensors")
    t.add_argument("--workdir", default=None,
                   help="where the world is generated (default: the config's workdir)")
    t.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY.PATH=VALUE", help="override a config field (repeatable)")


def _pretrain(args: argparse.Namespace) -> int:
    from raysoup import storage
    from raysoup.config import ConfigError, load_experiment
    from raysoup.data.sources import load_splits
    from raysoup.models.base_models import read_base_manifest
    from raysoup.models.families import family_of
    from raysoup.prepare import pretrain_corpus
    from raysoup.train.base_clip import ensure_base_clip

    cfg = load_experiment(args.config, args.overrides)
    if cfg.model.pretrain is None:
        raise ConfigError(f"{args.config}: model.pretrain is not set (it says how to pre-train)")
    workdir = cfg.resolved_workdir(args.workdir)
    if storage.is_remote(workdir):
        raise ConfigError("raysoup pretrain: --workdir must be a local directory")
    command = ["raysoup", "pretrain", str(args.config), "--out", str(args.out),
               *[a for o in args.overrides for a in ("--set", o)]]
    recipe = {"command": shlex.join(command), "model": cfg.model.model_dump(mode="json"),
              "data": cfg.data.model_dump(mode="json")}
    try:
        splits = load_splits(cfg.data, workdir)
        weights = ensure_base_clip(cfg.model, splits, args.out, recipe=recipe,
                                   corpus=pretrain_corpus(cfg, splits),
                                   objective=family_of(cfg.model).pretrain_objective())
    except (ValueError, RuntimeError, OSError) as err:  # BaseModelError, DataError included
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    manifest = read_base_manifest(weights)
    print(json.dumps({"weights": str(weights), "sha256": manifest["sha256"],
                      "metrics": manifest["metrics"]}, indent=2))
    return 0


def _fidelity_parser(sub) -> None:
    f = sub.add_parser("fidelity", help="run the config once per sweep seed (data and base "
                                        "shared) and print the paired soup - best single table")
    f.add_argument("config", type=Path, help="experiment YAML, e.g. experiments/tiny.yaml")
    f.add_argument("--seeds", type=int, default=5, help="sweep seeds 0..N-1")
    f.add_argument("--workdir", default=None,
                   help="root of the seed workdirs (default: runs/<name>-fidelity)")
    f.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY.PATH=VALUE", help="override a config field (repeatable)")
    f.add_argument("--address", default=None, help="join an existing Ray cluster")
    f.add_argument("--searches", default=None, metavar="random,soup",
                   help="run the seeds once per sweep.search (ROOT/<search>/seed-<s>) and "
                        "compare the soup-aware search with the random one, paired by seed")


def _fidelity(args: argparse.Namespace) -> int:
    from raysoup import fidelity, storage
    from raysoup.config import ConfigError, load_experiment, workdir_path

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = load_experiment(args.config, args.overrides)
    root = workdir_path(args.workdir or str(Path("runs") / f"{cfg.name}-fidelity"))
    if storage.is_remote(root):
        raise ConfigError("raysoup fidelity: --workdir must be a local directory")
    searches = [s.strip() for s in args.searches.split(",") if s.strip()] \
        if args.searches else []
    from raysoup.orchestration import seeds  # Ray: only once the arguments are valid

    try:
        if searches:
            runs = seeds.run_searches(cfg, root, args.seeds, searches, args.address)
            text = fidelity.write_searches(
                {s: [fidelity.summarize_run(w) for w in ws] for s, ws in runs.items()}, root)
        else:
            workdirs = seeds.run_seeds(cfg, root, args.seeds, args.address)
            text = fidelity.write([fidelity.summarize_run(w) for w in workdirs], root)
    except KeyboardInterrupt:
        print("raysoup: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    print(text)
    print(f"written: {root / 'searches.md'}, searches.json, anytime.png and each search's "
          "fidelity.md" if searches else
          f"written: {root / 'fidelity.md'}, fidelity.json, fidelity.png")
    return 0


ANALYSES = ("landscape", "angles", "soup-vs-ensemble", "transfer")  # = raysoup.api.ANALYSES


def _analyze_parser(sub) -> None:
    a = sub.add_parser("analyze", help="why the soups work: error landscape, angles between "
                                       "updates, soup vs ensemble, zero-shot transfer "
                                       "(docs/analysis.md)")
    a.add_argument("config", type=Path, help="experiment YAML of a finished workdir")
    a.add_argument("analyses", nargs="*", choices=[[], *ANALYSES], metavar="ANALYSIS",
                   help=f"any of {', '.join(ANALYSES)} (default: all)")
    a.add_argument("--workdir", default=None, help="default: the config's workdir or ./runs/<name>")
    a.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY.PATH=VALUE", help="override a config field (repeatable)")
    a.add_argument("--address", default=None, help="join an existing Ray cluster")
    a.add_argument("--points", type=int, default=5,
                   help="landscape grid points per axis over [-0.5, 1.5] (odd: the models and "
                        "their 2-soup lie on the grid)")
    a.add_argument("--models", default=None, metavar="A,B",
                   help="the landscape's two ingredients (default: the best two on held-out)")
    a.add_argument("--shift", default=None,
                   help="the landscape's shift set (default: the first over every class)")
    a.add_argument("--pairs-among", type=int, default=None, metavar="K",
                   help="angles and soup-vs-ensemble: pairs of the best K ingredients on "
                        "held-out only (default: all; their cost grows with the pairs)")


def _analyze(args: argparse.Namespace) -> int:
    from raysoup.api import analyze

    try:
        found = analyze(args.config, args.workdir, args.analyses or None, args.overrides,
                        address=args.address, points=args.points, shift=args.shift,
                        pair_limit=args.pairs_among,
                        models=args.models.split(",") if args.models else None)
    except KeyboardInterrupt:
        print("raysoup: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("RAYSOUP_DEBUG"):
            raise
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    for files, findings in found.values():
        for line in findings:
            print(line)
        for f in files:
            print(f"  written: {f}")
    return 0


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="data tools: pack an ImageFolder as Parquet shards; write "
                                    "the ImageNet-shaped fixture")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    dsub.add_parser = _with_formatter(dsub.add_parser)
    p = dsub.add_parser("pack", help="write an ImageFolder (local or s3:// / gs://) as Parquet "
                                     "shards raysoup reads (data format: parquet)")
    p.add_argument("imagefolder", help="root/<class dir>/<image>, a local path or a URI")
    p.add_argument("out", help="output directory or URI prefix (must not exist, or --overwrite)")
    p.add_argument("--rows-per-group", type=int, default=256,
                   help="images per row group (small groups keep random reads cheap)")
    p.add_argument("--rows-per-file", type=int, default=10_000, help="images per shard file")
    p.add_argument("--classnames", default=None, metavar="imagenet|FILE",
                   help="class names in the metadata: 'imagenet' (open_clip's 1000) or a file "
                        "(JSON list or one per line); default: the class dir names")
    p.add_argument("--classes-from", default=None, metavar="IMAGEFOLDER",
                   help="label space = this folder's sorted class dirs (e.g. the train set): "
                        "for shift sets covering a subset, or with dirs named 0..N-1 (ImageNetV2)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave unreadable images out (counted and listed) instead of failing")
    p.add_argument("--verify", default="header", choices=("header", "decode"),
                   help="header: PIL header check + JPEG end marker (cheap); decode: full decode")
    p.add_argument("--threads", type=int, default=16, help="parallel file reads")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier pack at OUT (a local OUT holding anything else is "
                        "moved aside as .old-OUT-<id>, never deleted)")
    f = dsub.add_parser("fixture", help="write the ImageNet-shaped fixture (generated) and print "
                                        "the --set overrides that run the paper config on it")
    f.add_argument("out", type=Path, help="directory to write the fixture (splits, model)")
    f.add_argument("--classes", type=int, default=1000, help="number of classes")
    f.add_argument("--train-per-class", type=int, default=2, help="training images per class")
    f.add_argument("--seed", type=int, default=0, help="seed of the generated images")


def _data(args: argparse.Namespace) -> int:
    from raysoup.data.errors import DataError

    try:
        if args.data_command == "pack":
            from raysoup.data.pack import pack_imagefolder

            r = pack_imagefolder(args.imagefolder, args.out, rows_per_group=args.rows_per_group,
                                 rows_per_file=args.rows_per_file, classnames=args.classnames,
                                 classes_from=args.classes_from, skip_corrupt=args.skip_corrupt,
                                 verify=args.verify, threads=args.threads,
                                 overwrite=args.overwrite)
            print(f"packed {r.rows} images ({r.bytes / 2**20:.1f} MiB) into {len(r.files)} "
                  f"file(s) at {r.out} in {r.seconds:.1f} s ({r.rows / max(r.seconds, 1e-9):.0f} "
                  f"img/s); {len(r.skipped)} corrupt file(s) skipped")
            return 0
        from raysoup.fixture import fixture_overrides, write_imagenet_fixture

        paths = write_imagenet_fixture(args.out.absolute(), classes=args.classes,
                                       train_per_class=args.train_per_class, seed=args.seed)
        print(f"fixture at {args.out}; run the paper config on it with:")
        sets = " ".join(f"--set {shlex.quote(s)}" for s in fixture_overrides(paths))
        print(f"raysoup run experiments/clip_vit_b32_imagenet.yaml "
              f"--workdir {shlex.quote(str(args.out.absolute() / 'run'))} {sets}")
        return 0
    except (DataError, ValueError, OSError) as err:
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1


def _import_parser(sub) -> None:
    i = sub.add_parser("import", help="turn foreign checkpoints (the model-soups paper's .pt "
                                      "files, classifier state dicts) into ingredients")
    i.add_argument("sources", nargs="*", type=Path, metavar="SRC",
                   help="checkpoint files or directories of them (.pt .pth .bin .safetensors)")
    i.add_argument("--config", type=Path, required=True,
                   help="the experiment the ingredients belong to (model, classes, workdir)")
    i.add_argument("--workdir", default=None, help="default: the config's workdir or ./runs/<name>")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field, e.g. --set model.name=ViT-B-32-quickgelu "
                        "(repeatable)")
    # = checkpoints.importer.FORMATS (not imported here: it loads torch)
    i.add_argument("--format", default="auto",
                   choices=("auto", "paper", "state_dict", "safetensors"),
                   help="key layout; auto detects it")
    i.add_argument("--prefix", default=None, help="ingredient names become PREFIX-<file stem>")
    i.add_argument("--zeroshot", type=Path, default=None, metavar="FILE",
                   help="import FILE as the zero-shot ingredient (the initialisation)")


def _import(args: argparse.Namespace) -> int:
    from raysoup.checkpoints.importer import (
        CheckpointImportError,
        experiment_target,
        import_checkpoints,
        plan_names,
        source_files,
    )
    from raysoup.config import ConfigError, load_experiment
    from raysoup.workdir import Workdir
    from raysoup.workdir.lock import SOUPS, SWEEP, WorkdirLocked, WorkdirLocks

    cfg = load_experiment(args.config, args.overrides)
    if not args.sources and args.zeroshot is None:
        raise ConfigError("raysoup import: give checkpoint files/directories or --zeroshot FILE")

    workdir = cfg.resolved_workdir(args.workdir)
    root = Workdir(workdir).ingredients
    try:
        # Sources and names first: refused before anything, the locks included, is written.
        plan_names(source_files(args.sources), args.prefix)
        # Both locks: an import changes the ingredients a sweep writes beside and the
        # evaluate and soup stages read.
        with WorkdirLocks(workdir) as locks:
            locks.take(SWEEP)
            locks.take(SOUPS)
            done = import_checkpoints(args.sources, root, experiment_target(cfg, root),
                                      args.format, args.prefix, args.zeroshot)
    except WorkdirLocked as err:  # another driver: the message names it
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    except CheckpointImportError as err:  # bad input: the message names the file or option
        print(f"raysoup: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (ValueError, OSError) as err:
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    for item in done:
        print(f"{item.status:<9} {item.name:<24} {item.path}")
    return 0


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--workdir", default=None, help="default: the config's workdir or ./runs/<name>")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field, e.g. --set sweep.num_samples=4 (repeatable)")
    s.add_argument("--address", default=None,
                   help="join an existing Ray cluster ('auto' or host:port); default: start locally")
    _metrics_port(s)


def _metrics_port(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard (http://127.0.0.1:8265) with the local cluster; "
                        "on by default only with --metrics-export-port")
    s.add_argument("--metrics-export-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics of the local Ray node on PORT (a cluster "
                        "sets it in `ray start`, see cluster.yaml)")


# The commands that are not pipeline stages: name -> handler (returns the exit status).
TOOLS = {"import": _import, "export": _export, "data": _data, "pretrain": _pretrain,
         "fidelity": _fidelity, "analyze": _analyze}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; `raysoup analyze CONFIG --workdir W landscape` is accepted too (argparse
    leaves positionals after an option unparsed)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "analyze" and all(a in ANALYSES for a in extra):
        args.analyses = [*args.analyses, *extra]
    elif extra and args.command == "analyze":
        parser.error(f"unknown analysis or argument {[a for a in extra if a not in ANALYSES]}:"
                     f" analyses are {', '.join(ANALYSES)}")
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Our progress lines at INFO; libraries (open_clip, mlflow, alembic) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="raysoup: %(message)s", stream=sys.stderr)
    logging.getLogger("raysoup").setLevel(logging.INFO)
    from raysoup import storage
    from raysoup.api import load_config
    from raysoup.config import ConfigError

    try:
        if args.command in TOOLS:
            return TOOLS[args.command](args)
        if args.command == "resume":
            cfg, workdir = _saved_config(args.workdir)
            stages = STAGE_COMMANDS["run"]
        else:
            cfg = load_config(args.config, args.overrides)
            workdir, stages = cfg.resolved_workdir(args.workdir), STAGE_COMMANDS[args.command]
            if args.dry_run:
                from raysoup.dryrun import describe
                from raysoup.workdir.snapshot import has_snapshot

                if has_snapshot(workdir):  # refuse what the real run refuses, as it does
                    from raysoup.orchestration.pipeline import check_config
                    check_config(cfg, workdir)
                print(describe(cfg, workdir, stages, str(args.config)))
                return 0
    except ConfigError as err:
        print(f"raysoup: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except storage.StorageError as err:
        print(f"raysoup: error: {err}", file=sys.stderr)
        return 1
    return _run_stages(args, cfg, workdir, stages)


def _saved_config(where: str):
    """(the config, the workdir) of `raysoup resume WORKDIR`: the workdir's saved config."""
    from raysoup import storage
    from raysoup.config import ConfigError, load_experiment, workdir_path
    from raysoup.workdir import CONFIG_SNAPSHOT

    workdir = workdir_path(where)
    snapshot = workdir / CONFIG_SNAPSHOT
    storage.pull(snapshot, exact=True)  # remote workdir: its saved config, to the mirror
    if not snapshot.is_file():
        raise ConfigError(f"{where} is not a raysoup workdir (no {CONFIG_SNAPSHOT})")
    return load_experiment(snapshot), workdir


def _run_stages(args: argparse.Namespace, cfg, workdir: Path, stages: tuple[str, ...]) -> int:
    from raysoup.api import execute
    from raysoup.config import ConfigError

    try:
        run = execute(cfg, workdir, stages, address=args.address,
                      metrics_export_port=args.metrics_export_port, dashboard=args.dashboard)
    except KeyboardInterrupt:
        print("raysoup: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except ConfigError as err:  # e.g. a workdir written by a different config
        print(f"raysoup: {err}", file=sys.stderr)
        return EXIT_CONFIG
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
