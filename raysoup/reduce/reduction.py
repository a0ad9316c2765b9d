"""Weighted averaging of one shard of tensors across ingredients (pure torch/numpy, no Ray).

Memory: each ingredient is opened lazily (safetensors `safe_open`, an mmap); per tensor name we
read one ingredient's tensor at a time and add it in place into one float32 accumulator, so peak
memory is the shard's accumulators plus one tensor read, never N models.

Bitwise guarantee (greedy soup relies on it): for ingredients p_0..p_{k-1}

    reduce_shard([p_0, ..., p_{k-1}], [1/k] * k, names)
      == scaled(add_into(...add_into(add_into(None, p_0, names), p_1, names)...,
                         p_{k-1}, names), 1/k)

bit for bit, for any shard layout. Both sides compute float32(θ_0) + θ_1 + ... left to right
(IEEE float32 addition is exactly rounded and commutative, so it does not matter whether the
running sum or the new tensor is the left operand) and then call the same `scale_` multiply.
"""

from __future__ import annotations

import math
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from raysoup.checkpoints.ingredient import weights_path


class ReductionError(ValueError):
    """Ingredients that cannot be averaged; the message names the tensor and the files."""


def reduce_shard(
    paths: list[Path], weights: list[float], names: list[str]
) -> dict[str, np.ndarray]:
    """Σ w_i·θ_i for each tensor in `names`, accumulated in float32 in `paths` order.

    `paths` are ingredient directories or safetensors files. Floating tensors come back as
    float32 arrays (the writer casts back to the stored dtype); non-floating tensors (integer
    buffers) must be identical in every ingredient and are returned as the first one's.
    """
    if not paths or len(paths) != len(weights):
        raise ReductionError(
            f"need one weight per ingredient, got {len(paths)} paths, {len(weights)} weights"
        )
    files = [weights_path(p) for p in paths]
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ReductionError(f"weights must be finite, got {weights}")
    uniform = all(w == weights[0] for w in weights)
    out: dict[str, np.ndarray] = {}
    with ExitStack() as stack:
        handles = [stack.enter_context(_open(f)) for f in files]
        for name in names:
            first = _get(handles[0], name, files[0], files[0])
            if not first.is_floating_point():
                for f, h in zip(files[1:], handles[1:]):
                    _check_same(name, first, _get(h, name, f, files[0]), files[0], f)
                out[name] = _owned(first)
                continue
            # Uniform: add then scale once, exactly as add_into + scaled do. Otherwise axpy.
            acc = first.to(torch.float32, copy=True)
            del first
            if not uniform:
                acc.mul_(weights[0])
            for f, h, w in zip(files[1:], handles[1:], weights[1:]):
                theta = _get(h, name, f, files[0])
                _check_shape(name, acc, theta, files[0], f)
                if uniform:
                    acc.add_(theta)
                else:
                    acc.add_(theta, alpha=w)
                del theta  # free the read before the next one
            out[name] = acc.numpy()
    return scale_(out, weights[0]) if uniform else out


def add_into(
    acc: dict[str, np.ndarray] | None, path: Path, names: list[str]
) -> dict[str, np.ndarray]:
    """Running sum: acc + θ(path) for `names`, as a NEW dict of new arrays.

    `acc` is never modified: it may hold read-only views from Ray's object store.
    `acc=None` starts the sum with a float32 copy of θ.
    """
    file = weights_path(path)
    out: dict[str, np.ndarray] = {}
    with _open(file) as h:
        for name in names:
            theta = _get(h, name, file, file)
            if acc is None:
                if theta.is_floating_point():
                    out[name] = theta.to(torch.float32, copy=True).numpy()
                else:
                    out[name] = _owned(theta)
                continue
            if name not in acc:
                raise ReductionError(f"tensor {name!r}: in {file} but not in the running sum")
            prev = numpy_view(acc[name])
            if not theta.is_floating_point():
                _check_same(name, prev, theta, "the running sum", file)
                out[name] = acc[name]  # never mutated, so sharing it is safe
                continue
            _check_shape(name, prev, theta, "the running sum", file)
            # θ's float32 copy becomes the new sum: no temporary beyond the read itself.
            new = theta.to(torch.float32, copy=True)
            del theta
            new.add_(prev)
            out[name] = new.numpy()
    return out


def scale_(acc: dict[str, np.ndarray], w: float) -> dict[str, np.ndarray]:
    """Multiply every floating array by w in place (float32) and return `acc`."""
    w32 = np.float32(w)
    for name, a in acc.items():
        if _is_float(a):
            if not a.flags.writeable:
                raise ReductionError(f"tensor {name!r}: read-only array, use scaled() instead")
            np.multiply(a, w32, out=a)
    return acc


def scaled(acc: dict[str, np.ndarray], w: float) -> dict[str, np.ndarray]:
    """Like scale_ but returns new arrays; same float32 multiply, so the same bits."""
    w32 = np.float32(w)
    return {
        name: np.multiply(a, w32, dtype=np.float32) if _is_float(a) else a.copy()
        for name, a in acc.items()
    }


def _is_float(a: np.ndarray) -> bool:
    if np.issubdtype(a.dtype, np.floating):
        if a.dtype != np.float32:
            raise ReductionError(f"accumulators must be float32, got {a.dtype}")
        return True
    return False


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ReductionError(f"{file}: cannot open safetensors file: {e}") from None


def _get(handle, name: str, file: Path, first: Path) -> torch.Tensor:
    if name not in handle.keys():  # noqa: SIM118 - a safe_open handle, not a dict
        other = f" (present in {first})" if file != first else ""
        raise ReductionError(f"tensor {name!r}: missing in {file}{other}")
    return handle.get_tensor(name)


def _check_shape(name: str, a: torch.Tensor, b: torch.Tensor, file_a, file_b) -> None:
    if not a.is_floating_point():
        raise ReductionError(f"tensor {name!r}: {a.dtype} in {file_a} but floating in {file_b}")
    if a.shape != b.shape:
        raise ReductionError(
            f"tensor {name!r}: shape {list(a.shape)} in {file_a} but {list(b.shape)} in {file_b}"
        )
    if not b.is_floating_point():
        raise ReductionError(f"tensor {name!r}: floating in {file_a} but {b.dtype} in {file_b}")


def _check_same(name: str, a: torch.Tensor, b: torch.Tensor, file_a, file_b) -> None:
    # Integer buffers (position ids, counters) cannot be averaged; they must agree.
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        raise ReductionError(
            f"tensor {name!r}: non-floating tensor differs between {file_a} and {file_b} "
            f"({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)})"
        )


def _owned(t: torch.Tensor) -> np.ndarray:
    # safetensors may hand out tensors that share memory between get_tensor calls; copy before
    # anything can be mutated or outlive the handle.
    return t.clone().numpy()


def numpy_view(a: np.ndarray) -> torch.Tensor:
    """A torch view of a possibly read-only array; callers must not write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(a))
