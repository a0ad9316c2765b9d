"""The metrics every model's MLflow run carries, from results.parquet: one set of names for
every model (zero-shot, each trial, each soup, the ensemble), so that one runs table or chart
compares them all.

Names are chosen for MLflow's UI, which groups charts by the part before the first `/`:
- `acc/<split>` (`acc/heldout`, `acc/test`, `acc/<shift>`...) and `acc/mean_shift` (the mean
  over the model's shift sets, as the report's "mean shift"): one "acc" chart group;
- `vs_best/<split>`, `vs_best/<split>_lo`, `vs_best/<split>_hi`: a soup's or the ensemble's
  accuracy minus the best single model's on the split and its paired 95 % interval
  (evaluate/paired.py; the Parquet columns diff_vs_best, diff_lo, diff_hi);
- for a two-class task (GLUE's MRPC, CoLA...), `f1/<split>` (F1 of class 1) and `mcc/<split>`
  (Matthews correlation), from the rows' per-example correctness (evaluate/task_metrics.py).
Fractions, as results.parquet's `accuracy`. Pure: no MLflow here (tracker.py logs them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raysoup.evaluate.paired import best_single
from raysoup.evaluate.task_metrics import task_metrics

FIXED_SPLITS = ("heldout", "test")
ACC = "acc/"
VS_BEST = "vs_best/"
MEAN_SHIFT = "acc/mean_shift"


@dataclass
class ModelMetrics:
    model: str
    kind: str  # zeroshot | ingredient | soup | ensemble
    soup_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def acc_key(split: str) -> str:
    return f"{ACC}{split}"


def split_of(key: str) -> str | None:
    """The split an `acc/<split>` key names (None: not a split, e.g. `acc/mean_shift`)."""
    if not key.startswith(ACC) or key == MEAN_SHIFT:
        return None
    return key.removeprefix(ACC)


def model_metrics(table: pa.Table, labels: dict[str, np.ndarray] | None = None
                  ) -> dict[str, ModelMetrics]:
    """model name → its kind, soup id and metrics (see the module's docstring). `labels`:
    {split: labels in evaluation order} of a two-class task (`two_class_labels`), which adds
    F1 and MCC; None for any other task."""
    out: dict[str, ModelMetrics] = {}
    columns = ("model", "kind", "split", "accuracy", "soup_id", "diff_vs_best", "diff_lo",
               "diff_hi")
    for model, kind, split, acc, soup_id, diff, lo, hi in zip(
            *(table[c].to_pylist() for c in columns), strict=True):
        entry = out.setdefault(model, ModelMetrics(model, kind, soup_id))
        entry.metrics[acc_key(split)] = acc
        if diff is not None:
            entry.metrics.update({f"{VS_BEST}{split}": diff, f"{VS_BEST}{split}_lo": lo,
                                  f"{VS_BEST}{split}_hi": hi})
    for entry in out.values():
        shifts = [v for k, v in entry.metrics.items()
                  if (s := split_of(k)) is not None and s not in FIXED_SPLITS]
        if shifts:
            entry.metrics[MEAN_SHIFT] = sum(shifts) / len(shifts)
    if labels:
        _task_metrics(table, labels, out)
    return out


def _task_metrics(table: pa.Table, labels: dict[str, np.ndarray],
                  out: dict[str, ModelMetrics]) -> None:
    """F1 and MCC of each (model, split) row that has its per-example correctness."""
    columns = ("model", "split", "n", "correct_bits")
    for model, split, n, bits in zip(*(table[c].to_pylist() for c in columns), strict=True):
        if split in labels and bits is not None and n == len(labels[split]):
            m = task_metrics(labels[split], bits, 2)
            out[model].metrics.update({f"f1/{split}": m["f1"], f"mcc/{split}": m["mcc"]})


# A saved view of MLflow's runs table (3.x: an experiment tag `mlflow.sharedViewState.<key>`
# holding the table's UI state as JSON, what its "Share" button writes): the models side by
# side with their held-out, test and mean-shift accuracy and the test interval.
VIEW_KEY = "raysoup"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_COLUMNS = ["metrics.`acc/heldout`", "metrics.`acc/test`", "metrics.`acc/mean_shift`",
                "metrics.`vs_best/test`", "metrics.`vs_best/test_lo`",
                "metrics.`vs_best/test_hi`", "tags.`raysoup.kind`"]


def comparison_view() -> str:
    return json.dumps({"selectedColumns": VIEW_COLUMNS, "orderByKey": "attributes.start_time",
                       "orderByAsc": True, "columnWidths": {c: 120 for c in VIEW_COLUMNS}})


def best_single_model(table: pa.Table) -> str | None:
    """The report's best single model (held-out; ties to the smaller name)."""
    return best_single(table)
