"""Task metrics as GLUE defines them, beside accuracy: F1 of the positive class (MRPC, QQP)
and Matthews correlation (CoLA), from a split's labels and a model's predictions.

raysoup keeps each (model, split)'s per-example correctness (`results.parquet`,
`correct_bits`); for a two-class task that and the labels give the predictions back
(a wrong answer is the other class), so F1 and MCC come from the results without
scoring again. A task of more classes has only accuracy there.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("accuracy", "f1", "mcc")


def f1(labels: np.ndarray, preds: np.ndarray, positive: int = 1) -> float:
    """F1 of class `positive` (GLUE's binary F1); 0 when it is never predicted nor present."""
    tp = int(np.sum((preds == positive) & (labels == positive)))
    fp = int(np.sum((preds == positive) & (labels != positive)))
    fn = int(np.sum((preds != positive) & (labels == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def mcc(labels: np.ndarray, preds: np.ndarray) -> float:
    """Matthews correlation (multi-class form, as scikit-learn's `matthews_corrcoef` that GLUE
    uses); 0 when either side is constant."""
    classes = np.union1d(labels, preds)
    conf = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(conf, (np.searchsorted(classes, labels), np.searchsorted(classes, preds)), 1)
    t, p = conf.sum(1), conf.sum(0)
    c, s = np.trace(conf), conf.sum()
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


def binary_counts(labels, preds) -> tuple[int, int, int]:
    """(tp, fp, fn) of class 1: integers, so slices of a split sum to the whole split's."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return (int(np.sum((preds == 1) & (labels == 1))), int(np.sum((preds == 1) & (labels != 1))),
            int(np.sum((preds != 1) & (labels == 1))))


def from_counts(metric: str, correct: int, n: int, tp: int = 0, fp: int = 0,
                fn: int = 0) -> float:
    """`metric` (accuracy, f1, mcc) of a two-class split from its counts (`binary_counts`):
    the same numbers `f1` and `mcc` give from the labels and predictions."""
    if metric == "accuracy":
        return correct / n
    if metric == "f1":
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if metric == "mcc":
        tn = n - tp - fp - fn
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return (tp * tn - fp * fn) / denom if denom else 0.0
    raise ValueError(f"unknown metric {metric!r}; valid: {list(METRICS)}")


def binary_predictions(labels: np.ndarray, bits: bytes) -> np.ndarray:
    """A two-class model's predictions from its packed per-example correctness."""
    labels = np.asarray(labels, np.int64)
    correct = np.unpackbits(np.frombuffer(bits, np.uint8), count=len(labels)).astype(bool)
    return np.where(correct, labels, 1 - labels)


def task_metrics(labels: np.ndarray, bits: bytes, num_classes: int) -> dict[str, float]:
    """accuracy, and for two classes f1 and mcc, of one (model, split)."""
    labels = np.asarray(labels, np.int64)
    correct = np.unpackbits(np.frombuffer(bits, np.uint8), count=len(labels)).astype(bool)
    out = {"accuracy": float(correct.mean()) if len(labels) else float("nan")}
    if num_classes == 2:
        preds = binary_predictions(labels, bits)
        out.update(f1=f1(labels, preds), mcc=mcc(labels, preds))
    return out


def two_class_labels(splits) -> dict[str, np.ndarray] | None:
    """{split: labels in evaluation order} of a two-class task's splits (`DatasetSplits`),
    else None: F1 and MCC are reported for two-class tasks."""
    if len(splits.classnames) != 2:
        return None
    named = {"heldout": splits.heldout, "test": splits.test, **splits.shifts}
    return {name: np.asarray(data.labels, np.int64) for name, data in named.items()}


def metric_table(table, labels: dict[str, np.ndarray]) -> str:
    """A markdown table of F1 and MCC (in %) per model and split, from the results rows'
    per-example correctness (`results.parquet`); rows without it are left out."""
    cells: dict[str, dict[str, str]] = {}
    for row in table.to_pylist():
        split, bits = row["split"], row["correct_bits"]
        if split not in labels or bits is None or row["n"] != len(labels[split]):
            continue
        m = task_metrics(labels[split], bits, 2)
        cells.setdefault(row["model"], {})[split] = (f"{100 * m['f1']:.2f} / "
                                                     f"{100 * m['mcc']:.2f}")
    splits = [s for s in labels if any(s in c for c in cells.values())]
    lines = ["| model | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {model} | " + " | ".join(c.get(s, "") for s in splits) + " |"
              for model, c in sorted(cells.items())]
    return "\n".join(lines)
