"""results.parquet: one row per (model, split). Pure pyarrow; rewritten atomically.

Each row keeps its per-image correctness (`correct_bits`, `numpy.packbits` in the split's
order: n/8 bytes), and each soup's and ensemble's row its paired comparison with the best
single model (`paired.annotate`; docs/reading-results.md). Files written before these columns
read back with them null."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysoup import storage

SCHEMA = pa.schema([
    ("model", pa.string()),
    ("kind", pa.string()),  # zeroshot | ingredient | soup
    ("split", pa.string()),  # heldout | test | <shift name>
    ("accuracy", pa.float64()),
    ("correct", pa.int64()),
    ("n", pa.int64()),
    # A soup's id (its candidate set, recipe.json "soup_id"); null for ingredients. A row
    # measured another soup than the one now under that name when the ids differ.
    ("soup_id", pa.string()),
    # Per-image correctness, packed (evaluator.packed); null where not kept (older files).
    ("correct_bits", pa.binary()),
    # A soup's or ensemble's accuracy − the best single model's on this split, with the
    # paired 95 % interval (fractions, as `accuracy`; evaluate/paired.py); null otherwise.
    ("best_single", pa.string()),
    ("diff_vs_best", pa.float64()),
    ("diff_lo", pa.float64()),
    ("diff_hi", pa.float64()),
])
LATER_COLUMNS = ("soup_id", "correct_bits", "best_single", "diff_vs_best", "diff_lo", "diff_hi")


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def read_results(path: Path) -> pa.Table:
    try:
        data = storage.read_bytes(path)  # a remote workdir's copy is the current one
    except FileNotFoundError:
        return empty()
    table = pq.read_table(pa.BufferReader(data))
    for name in LATER_COLUMNS:  # written before rows carried it
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def rows(model: str, kind: str, scores: dict[str, tuple],
         soup_id: str | None = None) -> pa.Table:
    """A model's rows from its scores: {split: (correct, n)} or (correct, n, packed bits)."""
    items = sorted(scores.items())
    return pa.table({
        "model": [model] * len(items),
        "kind": [kind] * len(items),
        "split": [s for s, _ in items],
        "accuracy": [v[0] / v[1] if v[1] else float("nan") for _, v in items],
        "correct": [v[0] for _, v in items],
        "n": [v[1] for _, v in items],
        "soup_id": [soup_id] * len(items),
        "correct_bits": [v[2] if len(v) > 2 else None for _, v in items],
        **{name: [None] * len(items) for name in LATER_COLUMNS[2:]},
    }, schema=SCHEMA)


def done_pairs(table: pa.Table, soup_ids: dict[str, str] | None = None) -> set[tuple[str, str]]:
    """(model, split) pairs already measured; with `soup_ids` (soup model → its current id),
    a soup's rows count only if they were measured for that id."""
    triples = zip(table["model"].to_pylist(), table["split"].to_pylist(),
                  table["soup_id"].to_pylist(), strict=True)
    return {(m, s) for m, s, i in triples if soup_ids is None or soup_ids.get(m) == i}


def merge(table: pa.Table, new: list[pa.Table]) -> pa.Table:
    """Append new rows; a (model, split) already present is replaced by the newer row."""
    combined = pa.concat_tables([table, *new]) if new else table
    seen: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(combined["model"].to_pylist(), combined["split"].to_pylist(), strict=True)):
        seen[key] = i
    keep = sorted(seen.values())
    out = combined.take(keep)
    return out.sort_by([("kind", "ascending"), ("model", "ascending"), ("split", "ascending")])


def write_results(path: Path, table: pa.Table) -> None:
    storage.write_file(path, lambda tmp: pq.write_table(table, tmp))


def _triples(table: pa.Table):
    return zip(table["model"].to_pylist(), table["split"].to_pylist(),
               table["accuracy"].to_pylist(), strict=True)


def accuracy_of(table: pa.Table, split: str) -> dict[str, float]:
    """model → accuracy on one split."""
    return {m: a for m, s, a in _triples(table) if s == split}


def accuracies_of_model(table: pa.Table, model: str) -> dict[str, float]:
    """split → accuracy of one model."""
    return {s: a for m, s, a in _triples(table) if m == model}
