"""raysoup's live metrics: `ray.util.metrics` counters and gauges, one call per event.

Safe to call from the driver, from Ray tasks and from actors: each process creates its metric
objects lazily on first use, and every call is a no-op when the process is not connected to
Ray (the plain classes behind the actors are also used without Ray). Ray's metrics agent on
each node exports them for Prometheus with a `ray_` prefix (counters also get `_total`):
`raysoup_trials_finished` is scraped as `ray_raysoup_trials_finished_total`, with the labels
`SessionName`, `NodeAddress` and `WorkerId` added. `dashboards/raysoup.json` charts them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping

import ray
from ray.util.metrics import Counter, Gauge

log = logging.getLogger(__name__)

# name → (kind, description, label keys)
SPECS: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "raysoup_trials_finished": (Counter, "Sweep trials that finished.", ()),
    "raysoup_trials_failed": (Counter, "Sweep trial errors (a retried trial counts again).", ()),
    "raysoup_models_evaluated": (Counter, "Models (ingredients, soups) evaluated.", ()),
    "raysoup_eval_images": (Counter, "Images scored by the eval actors.", ()),
    "raysoup_eval_seconds": (Counter, "Seconds the eval actors spent scoring.", ()),
    "raysoup_eval_images_per_second": (Gauge, "Throughput of an eval actor's last model.", ()),
    # Greedy soup: every ingredient is a candidate, the best one (accepted without a soup
    # evaluation) included.
    "raysoup_soup_candidates_tried": (Counter, "Ingredients a soup recipe decided on.",
                                      ("recipe",)),
    "raysoup_soup_candidates_accepted": (Counter, "Ingredients a soup recipe accepted.",
                                         ("recipe",)),
    "raysoup_reduction_bytes": (Counter, "Float32 bytes accumulated by the reduction tasks.", ()),
    "raysoup_reduction_seconds": (Counter, "Seconds the reduction tasks spent accumulating.", ()),
    "raysoup_stage_active": (Gauge, "1 while a pipeline stage runs, 0 after.", ("stage",)),
    "raysoup_stage_seconds": (Gauge, "Duration of a pipeline stage's last run.", ("stage",)),
}

_metrics: dict[str, Counter | Gauge] = {}
_lock = threading.Lock()


def _metric(name: str) -> Counter | Gauge | None:
    if not ray.is_initialized():
        return None
    with _lock:
        if name not in _metrics:
            kind, description, labels = SPECS[name]
            _metrics[name] = kind(name, description=description, tag_keys=labels)
        return _metrics[name]


def _record(name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
    try:
        metric = _metric(name)
        if metric is None:
            return
        if isinstance(metric, Counter):
            if value > 0:
                metric.inc(value, tags=dict(tags) if tags else None)
            else:
                # Publish the series at 0 (Prometheus practice: a panel shows 0, not "no
                # data", and rate() works from the start). inc() refuses 0.
                metric._record(0, tags=dict(tags) if tags else None)
        else:
            metric.set(value, tags=dict(tags) if tags else None)
    except Exception:  # observability must never fail a stage
        log.debug("metric %s not recorded", name, exc_info=True)


# ---------------------------------------------------------------- events


def sweep_started() -> None:
    """Both trial counters exist from the start of a sweep, even if no trial ever fails."""
    _record("raysoup_trials_finished", 0)
    _record("raysoup_trials_failed", 0)


def trial_finished() -> None:
    _record("raysoup_trials_finished", 1)


def trial_failed() -> None:
    _record("raysoup_trials_failed", 1)


def scored(scores: Mapping[str, tuple], seconds: float, model: bool = True) -> None:
    """An eval actor scored `scores` ({split: (correct, n[, loss])}) in `seconds`;
    `model=False` for a candidate soup of a recipe (images count, the model does not)."""
    images = sum(s[1] for s in scores.values())
    if model:
        _record("raysoup_models_evaluated", 1)
    _record("raysoup_eval_images", images)
    _record("raysoup_eval_seconds", seconds)
    if seconds > 0:
        _record("raysoup_eval_images_per_second", images / seconds)


def soup_decisions(recipe: str, trace: Iterable[Mapping]) -> None:
    """Trace entries of a recipe ({"accepted": bool, ...}), each one a candidate tried."""
    entries = [e for e in trace if "accepted" in e]
    _record("raysoup_soup_candidates_tried", len(entries), {"recipe": recipe})
    _record("raysoup_soup_candidates_accepted", sum(bool(e["accepted"]) for e in entries),
            {"recipe": recipe})


def reduced(nbytes: int, seconds: float) -> None:
    _record("raysoup_reduction_bytes", nbytes)
    _record("raysoup_reduction_seconds", seconds)


def stage_started(stage: str) -> None:
    _record("raysoup_stage_active", 1, {"stage": stage})


def stage_finished(stage: str, seconds: float) -> None:
    _record("raysoup_stage_active", 0, {"stage": stage})
    _record("raysoup_stage_seconds", seconds, {"stage": stage})
