"""The sweep's part of the workdir: where Tune keeps its state, how trials are named, and the
records a trial leaves in `ingredients/<trial>/` however it ended.

Read by the driver (resume policy, callbacks, the anytime soup) and written by trials and
callbacks; no Ray here, so this is plain workdir bookkeeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysoup import storage
from raysoup.checkpoints import list_ingredients, read_manifest
from raysoup.workdir import (
    MANIFEST_FILE,
    SWEEP_NAME,
    WEIGHTS_FILE,
    Workdir,
    read_record,
    write_trial_outcome,
)

# A diverged trial leaves ingredients/<name>/manifest.json with this kind and no tensor file:
# it is a finished trial, but not an ingredient (list_ingredients needs the tensor file), so
# evaluation and soups never see it.
DIVERGED = "diverged"
# A trial the scheduler (sweep.scheduler: asha) stopped early likewise leaves a record of this
# kind: its last checkpoint is an under-trained model, not an ingredient of any soup.
STOPPED = "stopped"


def trial_name(trial_id: str) -> str:
    """Tune's ids end in a 5-digit counter (`<uuid>_00003`); ingredients get stable names."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return f"trial-{int(suffix):03d}" if suffix.isdigit() else f"trial-{trial_id}"


@dataclass(frozen=True)
class Segment:
    """One Tune experiment of the sweep: trials first..end-1. A sweep grown in place (a
    larger sweep.num_samples) runs its new trials as a segment of their own, after the
    earlier ones: Tune cannot add trials to a finished experiment."""

    first: int
    end: int

    @property
    def name(self) -> str:
        return SWEEP_NAME if self.first == 0 else f"{SWEEP_NAME}-{self.first:03d}-{self.end:03d}"

    def done(self, ended: list[str]) -> bool:
        """Every trial of the segment has ended (`ended`: the names of ended trials)."""
        return {f"trial-{i:03d}" for i in range(self.first, self.end)} <= set(ended)


def recorded_segments(workdir: Path) -> list[Segment]:
    """The segments started so far (`WORKDIR/tune/segments.json`), in order."""
    try:
        text = storage.read_text(Workdir(workdir).sweep_segments)
    except FileNotFoundError:
        return []
    return [Segment(int(a), int(b)) for a, b in json.loads(text)]


def sweep_segments(workdir: Path, trials: int) -> list[Segment]:
    """The segments a sweep of `trials` trials runs: those started, then one for the trials
    none covers yet."""
    done = [s for s in recorded_segments(workdir) if s.first < trials]
    end = done[-1].end if done else 0
    return [*done, *([Segment(end, trials)] if trials > end else [])]


def record_segment(workdir: Path, segment: Segment) -> None:
    """Note `segment` as started (before its Tune experiment is created)."""
    segments = recorded_segments(workdir)
    if segment not in segments:
        storage.write_file(Workdir(workdir).sweep_segments,
                           json.dumps([[s.first, s.end] for s in [*segments, segment]]))


def sweep_path(workdir: Path, segment: Segment | None = None) -> tuple[str, Any]:
    """Tune's experiment directory of `segment` (default: the first): (a local path or the
    workdir's URI, None), or (a path in the filesystem of a URI with store options, that
    filesystem): `storage.tune_storage`."""
    name = segment.name if segment is not None else SWEEP_NAME
    return storage.tune_storage(Workdir(workdir).sweep / name)


def write_diverged(workdir: Path, name: str, error: str, hparams: dict[str, Any]) -> None:
    """The record of a trial whose loss became non-finite."""
    record = {"kind": DIVERGED, "status": DIVERGED, "trial": name, "error": error,
              "hparams": hparams}
    write_trial_outcome(Workdir(workdir).ingredient(name), record)


def write_stopped(workdir: Path, name: str, reason: str, epoch: int, heldout_acc,
                  hparams: dict[str, Any]) -> None:
    """The record of a trial the scheduler stopped before its last epoch."""
    record = {"kind": STOPPED, "status": STOPPED, "trial": name, "reason": reason,
              "epoch": epoch, "heldout_acc": heldout_acc, "hparams": hparams}
    write_trial_outcome(Workdir(workdir).ingredient(name), record)


def finished_trials(workdir: Path) -> list[str]:
    """Trials that produced an ingredient (an imported ingredient is never one, whatever its
    name: older raysoup imported `trial-005.pt` as `trial-005`)."""
    manifests = {p.name: read_manifest(p) for p in list_ingredients(Workdir(workdir).ingredients)}
    return [name for name, m in manifests.items()
            if m.get("kind") == "ingredient" and not m.get("imported")]


def ended_without_ingredient(workdir: Path) -> dict[str, str]:
    """Finished trials without an ingredient -> how they ended (DIVERGED, "stopped at ...")."""
    root = Workdir(workdir).ingredients
    files = set(storage.list_files(root))
    names = sorted({rel.split("/", 1)[0] for rel in files if rel.endswith(f"/{MANIFEST_FILE}")}
                   - {rel.split("/", 1)[0] for rel in files if rel.endswith(f"/{WEIGHTS_FILE}")})
    out = {}
    for name in names:
        if name.startswith("."):
            continue
        record = read_record(root / name)
        if record.get("kind") in (DIVERGED, STOPPED):
            out[name] = record.get("reason", record["kind"])
    return out


def diverged_trials(workdir: Path) -> list[str]:
    """Trials that ended with a non-finite loss: finished, but without an ingredient (reads
    only the records of trials without one)."""
    return EndedTrials([], ended_without_ingredient(workdir)).diverged


@dataclass(frozen=True)
class EndedTrials:
    """The trials of a sweep that have ended, as the workdir records them."""

    finished: list[str]  # with an ingredient
    without_ingredient: dict[str, str]  # trial -> how it ended (DIVERGED, "stopped at ...")

    @property
    def count(self) -> int:
        return len(self.finished) + len(self.without_ingredient)

    @property
    def names(self) -> list[str]:
        return [*self.finished, *self.without_ingredient]

    @property
    def diverged(self) -> list[str]:
        return [n for n, how in self.without_ingredient.items() if how == DIVERGED]

    @property
    def stopped(self) -> list[str]:
        """Ended without an ingredient, other than by diverging (the scheduler stopped them)."""
        return sorted(set(self.without_ingredient) - set(self.diverged))


def ended_trials(workdir: Path) -> EndedTrials:
    return EndedTrials(finished_trials(workdir), ended_without_ingredient(workdir))
