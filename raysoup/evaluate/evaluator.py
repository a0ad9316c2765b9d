"""Pure evaluation core: weights in, per-split accuracy out.

The model skeleton is built once; evaluating a candidate is `param.copy_` plus a forward pass
over the split's eval cache, decoded and preprocessed once (evaluate/cache.py) and streamed a
shard at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from raysoup.evaluate.cache import ArrayImages, CachedImages
from raysoup.evaluate.task_metrics import binary_counts

if TYPE_CHECKING:
    from raysoup.models.family import ModelFamily


@dataclass(frozen=True)
class EvalSplit:
    # The split's images as an eval cache (evaluate/cache.py: uint8 shards read one at a time)
    # or, for tests and benchmarks, a float32 [N, 3, H, W] array already normalised.
    images: CachedImages | ArrayImages
    labels: np.ndarray  # int64 [N], indices into the full label space (or into class_groups)
    class_subset: tuple[int, ...] | None = None  # classes this split covers (None = all)
    # ObjectNet style: the split's own classes, each a group of model classes; labels index the
    # groups, and a prediction is right if the chosen model class lies in the label's group.
    class_groups: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            object.__setattr__(self, "images", ArrayImages(self.images))

    def __len__(self) -> int:
        return len(self.labels)


def correct_mask(
    logits: torch.Tensor, labels: torch.Tensor, class_subset: tuple[int, ...] | None,
    class_groups: tuple[tuple[int, ...], ...] | None = None,
) -> torch.Tensor:
    """Per-image correctness (bool [N]); with a class subset, logits are projected onto it
    first (the model may only choose among the classes the split covers, as for
    ImageNet-R/A). With class groups (ObjectNet: one class = several ImageNet classes) the
    model chooses among the union of the groups, and is right if its class is in the label's
    group — the same as taking the max logit per group."""
    if class_groups is not None:
        group_of = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
        for g, members in enumerate(class_groups):
            group_of[list(members)] = g
        union = torch.nonzero(group_of >= 0).squeeze(1)
        preds = group_of[union[logits.index_select(1, union).argmax(dim=1)]]
        return preds == labels.to(preds.device)
    if class_subset is not None:
        subset = torch.as_tensor(class_subset, dtype=torch.long, device=logits.device)
        preds = subset[logits.index_select(1, subset).argmax(dim=1)]
    else:
        preds = logits.argmax(dim=1)
    return preds == labels


def count_correct(
    logits: torch.Tensor, labels: torch.Tensor, class_subset: tuple[int, ...] | None,
    class_groups: tuple[tuple[int, ...], ...] | None = None,
) -> int:
    """Correct predictions (`correct_mask`, counted)."""
    return int(correct_mask(logits, labels, class_subset, class_groups).sum())


def packed(mask: torch.Tensor) -> bytes:
    """Per-image correctness as `numpy.packbits` bytes, in the split's order (n/8 bytes:
    results stay small; `paired.unpack` reads them back)."""
    return np.packbits(mask.cpu().numpy().astype(bool)).tobytes()


def load_weights_(model: nn.Module, weights: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Copy a full state dict into the skeleton in place; names and shapes must match exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, target in own.items():
            src = weights[name]
            src = torch.from_numpy(np.asarray(src)) if not isinstance(src, torch.Tensor) else src
            if tuple(src.shape) != tuple(target.shape):
                raise ValueError(f"tensor {name}: shape {tuple(src.shape)} != model {tuple(target.shape)}")
            target.copy_(src)


class Evaluator:
    """Holds one model skeleton and the evaluation splits; scores weight sets. The model's
    family (default open_clip) turns a batch into logits."""

    def __init__(self, model: nn.Module, splits: Mapping[str, EvalSplit], batch_size: int = 500,
                 device: str | torch.device = "cpu", family: ModelFamily | None = None):
        if family is None:
            # Here, not at import: soup/ imports this module and must not load a model library.
            from raysoup.models.families import DEFAULT_FAMILY, get_family

            family = get_family(DEFAULT_FAMILY)
        self.family = family
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.splits = dict(splits)
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, split: str, part: tuple[int, int] | None = None) -> torch.Tensor:
        data = self.splits[split]
        lo, hi = part_range(len(data), part, self.batch_size)
        out = []
        for batch in data.images.batches(lo, hi, self.batch_size):
            # A copy: arrays from Ray's object store are read-only views (torch warns on them).
            x = torch.tensor(batch, device=self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out.append(self.family.logits(self.model, x).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def score(self, weights: Mapping[str, torch.Tensor | np.ndarray] | None,
              splits: list[str] | None = None,
              part: tuple[int, int] | None = None, loss: bool = False,
              bits: bool = False, counts: bool = False,
              on_logits: Callable[[str, torch.Tensor], None] | None = None
              ) -> dict[str, tuple]:
        """(correct, n) per split for `weights` (None = the weights already loaded); with
        `loss`, (correct, n, loss_units): the summed cross-entropy in `LOSS_UNIT`s (see
        `loss_units`); with `bits`, (correct, n, packed per-image correctness) (`packed`:
        from the same forward pass, for the paired intervals of evaluate/paired.py).

        `part=(i, k)` scores only the i-th of k contiguous slices of each split, so k actors can
        score one model data-parallel; summing their counts gives exactly the whole-split count.
        `counts` (two-class splits) appends (tp, fp, fn) of class 1, which give F1 and MCC
        (`task_metrics.from_counts`) and sum over slices as the others do.
        `on_logits(split, logits)` sees each whole split's logits (evaluate/logits_cache.py).
        """
        if loss and bits:
            raise ValueError("score: ask for the loss or the per-image bits, not both")
        if weights is not None:
            load_weights_(self.model, weights)
        result = {}
        for name in splits or list(self.splits):
            data = self.splits[name]
            lo, hi = part_range(len(data), part, self.batch_size)
            if lo == hi:  # more slices than batches: this one is empty
                empty = (0, 0, 0) if loss else (0, 0, b"") if bits else (0, 0)
                result[name] = empty + (0, 0, 0) if counts else empty
                continue
            labels = torch.tensor(data.labels[lo:hi])
            logits = self.logits(name, part)
            if on_logits is not None and part is None:
                on_logits(name, logits)
            mask = correct_mask(logits, labels, data.class_subset, data.class_groups)
            correct = int(mask.sum())
            if bits:
                result[name] = (correct, hi - lo, packed(mask))
                continue
            if (loss or counts) and (data.class_subset is not None
                                     or data.class_groups is not None):
                raise ValueError(f"split {name!r} covers a subset of the classes: its loss and "
                                 "F1/MCC are not defined (only on splits over every class)")
            row = (correct, hi - lo) + ((loss_units(logits, labels),) if loss else ())
            if counts:
                row += binary_counts(labels.numpy(), logits.argmax(dim=1).numpy())
            result[name] = row
        return result


    def ensemble_logits(self, members: Iterable[Callable[[], Mapping]],
                        splits: list[str] | None = None,
                        kept: Callable[[int, str], torch.Tensor | None] | None = None
                        ) -> dict[str, torch.Tensor]:
        """Mean logits of several models per split (the output-space ensemble of the paper,
        which averages logits). Members are loaded one at a time (`member()` returns a weight
        dict), so memory is one model plus one [N, C] sum per split, whatever their number.
        `kept(i, split)`: member i's logits on the split from an earlier evaluation, or None
        (evaluate/logits_cache.py); a member is loaded only for the splits it lacks."""
        names = splits or list(self.splits)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for i, member in enumerate(members):
            loaded = False
            for name in names:
                logits = kept(i, name) if kept is not None else None
                if logits is None:
                    if not loaded:
                        load_weights_(self.model, member())
                        loaded = True
                    logits = self.logits(name)
                sums[name] = sums[name].add_(logits) if name in sums else logits
            count += 1
        if count == 0:
            raise ValueError("an ensemble needs at least one member")
        return {name: s / count for name, s in sums.items()}

    def ensemble_score(self, members: Iterable[Callable[[], Mapping]],
                       splits: list[str] | None = None, bits: bool = False,
                       kept: Callable[[int, str], torch.Tensor | None] | None = None
                       ) -> dict[str, tuple]:
        """(correct, n) per split of the ensemble's mean logits; with `bits`, (correct, n,
        packed per-image correctness) as in `score`; `kept` as in `ensemble_logits`."""
        result: dict[str, tuple] = {}
        for name, logits in self.ensemble_logits(members, splits, kept).items():
            data = self.splits[name]
            mask = correct_mask(logits, torch.tensor(data.labels), data.class_subset,
                                data.class_groups)
            result[name] = ((int(mask.sum()), len(data), packed(mask)) if bits
                            else (int(mask.sum()), len(data)))
        return result


# Per-example cross-entropy in fixed point (2^-32 nats): integer sums are exact in any order,
# so a loss summed over data-parallel slices is the same number as a whole-split one.
LOSS_UNIT = 2.0**-32


def loss_units(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """The summed cross-entropy of `logits` against `labels` in `LOSS_UNIT`s (each example's
    loss rounded to the unit, then summed as integers)."""
    per_example = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return int(torch.round(per_example.double() / LOSS_UNIT).long().sum())


def part_range(n: int, part: tuple[int, int] | None, batch_size: int = 1) -> tuple[int, int]:
    """Rows of slice i of k: whole batches of the split's batch grid, so a sliced evaluation
    forms exactly the batches of a whole one (the same bits, whatever the kernels)."""
    if part is None:
        return 0, n
    i, k = part
    if not 0 <= i < k:
        raise ValueError(f"part must be (i, k) with 0 <= i < k, got {part}")
    batches = -(-n // batch_size)
    return min(n, batches * i // k * batch_size), min(n, batches * (i + 1) // k * batch_size)
