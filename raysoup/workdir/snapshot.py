"""The config snapshot: `experiment.yaml`, the resolved config a workdir was made with, so
`raysoup resume WORKDIR` needs nothing else; and the check that keeps configs that differ in
what the results depend on out of one workdir."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from raysoup import storage
from raysoup.config import ConfigError, ExperimentCfg, load_experiment
from raysoup.workdir.layout import Workdir

# Config sections the workdir's ingredients and results depend on. Which of their fields only
# say how the sweep is executed (and so may change) the caller says: the sweep driver knows.
PINNED = ("model", "data", "sweep")


class WorkdirMismatch(ConfigError):
    """The workdir holds results of a config that differs in what those results depend on."""


def _flatten(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def read_snapshot(workdir: Path) -> ExperimentCfg:
    return load_experiment(Workdir(workdir).snapshot)


def pinned_changes(old: dict, new: dict, execution_only: tuple[str, ...]) -> dict[str, tuple]:
    """Dotted field → (saved value, new value) for the pinned fields that differ."""
    a, b = _flatten({k: old.get(k) for k in PINNED}), _flatten({k: new[k] for k in PINNED})
    # A field added since the snapshot was written is absent from it: it stands for the
    # field's default (what the older code did), so a workdir from before an upgrade resumes.
    try:
        filled = _flatten({k: v for k, v in json.loads(
            ExperimentCfg.model_validate(old).model_dump_json()).items() if k in PINNED})
    except ValueError:
        filled = {}
    a.update({k: filled[k] for k in set(filled) - set(a)})
    diff = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                  and k not in execution_only)
    return {k: (a.get(k, "<unset>"), b.get(k, "<unset>")) for k in diff}


def check_snapshot(cfg: ExperimentCfg, workdir: Path, execution_only: tuple[str, ...] = (),
                   check_resume: Callable[[dict], None] | None = None) -> None:
    """Refuse (WorkdirMismatch) a config that differs from the workdir's saved one in a pinned
    field other than `execution_only`; `check_resume` gets the saved config (a dict) and may
    refuse it too. Writes nothing: a run checks before it starts anything, and `--dry-run`
    checks the same way."""
    old_text = _saved_text(workdir)
    if old_text is None:
        return
    old = yaml.safe_load(old_text) or {}
    if diff := pinned_changes(old, json.loads(cfg.model_dump_json()), execution_only):
        shown = storage.display(workdir)
        listing = "\n".join(f"  {k}: {a!r} in the workdir, now {b!r}"
                            for k, (a, b) in list(diff.items())[:10])
        raise WorkdirMismatch(
            f"{shown} was written by a different experiment config; refusing to mix "
            f"results. Fields that differ:\n{listing}\nUse a new --workdir, or "
            f"`raysoup resume {shown}` to continue with the saved config.")
    if check_resume is not None:
        check_resume(old)


def write_snapshot(cfg: ExperimentCfg, workdir: Path) -> None:
    """Save `cfg` as the workdir's snapshot (unchanged text: the file is left as it is).
    A run writes it once its inputs are prepared, so a first run that fails on them leaves
    no snapshot to refuse the corrected config."""
    text = yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
    if _saved_text(workdir) != text:
        storage.write_file(Workdir(workdir).snapshot, text)


def saved_config(workdir: Path) -> dict | None:
    """The workdir's saved config as a dict (None without one), local or remote."""
    text = _saved_text(workdir)
    return None if text is None else (yaml.safe_load(text) or {})


def has_snapshot(workdir: Path) -> bool:
    return _saved_text(workdir) is not None


def _saved_text(workdir: Path) -> str | None:
    try:
        return storage.read_text(Workdir(workdir).snapshot)  # a remote workdir's own copy
    except FileNotFoundError:
        return None


def snapshot_config(cfg: ExperimentCfg, workdir: Path, execution_only: tuple[str, ...] = (),
                    check_resume: Callable[[dict], None] | None = None) -> None:
    """`check_snapshot`, then `write_snapshot`. A refused config leaves the saved one in
    place, so `raysoup resume WORKDIR` continues."""
    check_snapshot(cfg, workdir, execution_only, check_resume)
    write_snapshot(cfg, workdir)
