"""`raysoup.soup_checkpoints`: a soup of checkpoint files people already have, cooked in this
process — no workdir, no experiment config, no Ray.

The same code as the CLI path (`raysoup import`, then the soup stage): files are read by the
importer (`checkpoints.importer`: safetensors, torch files via weights-only loading, the
model-soups paper's layout mapped to raysoup's), floats cast to float32 as an import does; the
method is raysoup's own (`soup.registry`), and its weights are reduced by `reduce.Blend` — the
shard function the Ray tasks run — over the whole model at once (a reduction is per tensor, so
it gives the bits of any shard layout).

Methods that pick their soup on held-out data (greedy, learned, WiSE-FT, a λ grid) score it
with `heldout=HeldOut(...)` (api/heldout.py) through an in-process kitchen (api/local_kitchen.py)
that runs the soup stage's arithmetic and evaluator: the same choices, the same bits.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from raysoup.api.heldout import HeldOut

# Methods that score candidate soups on held-out data (`heldout=`), and what for.
SCORED_METHODS = {
    "greedy": "held-out scoring of each candidate soup",
    "learned": "held-out data to learn the mixing coefficients on",
    "wiseft": "held-out scoring of each mixing ratio α",
}
# Not a weight average: nothing to write as one checkpoint.
REFUSED_METHODS = {
    "ensemble": "an ensemble is no weight average: it averages the N models' outputs at "
                "inference (N forward passes), so there is no single checkpoint to write; "
                "load the checkpoints and average their logits",
}
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare")
ANCHORED_METHODS = ("model_stock", "wiseft", *TASK_VECTOR_METHODS)
BASE_NAME = "zeroshot"  # the anchor's name, as in a workdir (soup.base.anchored)


class SoupCheckpointsError(ValueError):
    """The files or the method cannot make a soup here; the message says what is needed."""


def _named(message: str, sources: dict[str, str]) -> str:
    """`message` naming the user's checkpoints instead of the converted temporary files."""
    for tmp, src in sources.items():
        message = message.replace(tmp, src)
    return message


def soup_checkpoints(paths: Iterable[str | Path], method: str = "uniform", *,
                     out: str | Path, heldout: HeldOut | None = None,
                     weights: Sequence[float] | None = None,
                     base: str | Path | None = None, format: str = "auto",
                     **settings) -> Path:
    """Cook `method` over the checkpoints at `paths` and write the soup to `out` (one
    safetensors file of raysoup's ImageClassifier keys, `visual.*` and `head.*`); returns `out`.

    `paths`: checkpoint files (.safetensors, .pt/.pth/.bin read with weights_only=True; the
    model-soups paper's layout or raysoup's), directories of them, or raysoup ingredient
    directories (`WORKDIR/ingredients/<name>`). `weights`: one per checkpoint, a weighted
    average (method "uniform" only). `base`: the pre-trained θ_0 that WiSE-FT, model_stock and
    the task-vector methods (task_arithmetic, ties, dare) start from. `settings`: the method's
    settings as in the config's `soup.<method>` section. `heldout`: a `raysoup.HeldOut` (the
    split and the model) for the methods that score candidates on held-out data: greedy,
    learned, wiseft, and a task-vector method's λ grid (without it, give one λ,
    e.g. `lambdas=[0.5]`).
    """
    from raysoup.checkpoints.importer import CheckpointImportError

    recipe, chosen = _method(method, weights, base, heldout, settings)
    metric = getattr(chosen, "metric", "accuracy")  # greedy's criterion (soup.greedy.metric)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise SoupCheckpointsError(f"out={str(out)!r}: the soup is written as one "
                                   ".safetensors file; name it <name>.safetensors")
    sources: dict[str, str] = {}  # converted file -> the checkpoint it came from
    with tempfile.TemporaryDirectory(prefix="raysoup-soup-") as tmp:
        try:
            members = _ingredients(paths, Path(tmp), format, sources)
            anchor = None if base is None else _base(Path(base), Path(tmp), format, sources)
        except CheckpointImportError as err:
            raise SoupCheckpointsError(str(err)) from None
        by_name = {**dict(members), **({BASE_NAME: anchor[1]} if anchor else {})}
        try:
            # The soup stage's tasks and eval actors flush denormals
            # (orchestration.reduce_tasks): the same mode gives the same bits and scores.
            with (_flush_denormal(),
                  _scoring(heldout, [p for _, p in members], anchor, chosen) as ev):
                result = _cook(recipe, members, anchor, weights, ev, metric)
                return _write(out, result, [by_name[n] for n in result.ingredients],
                              None if anchor is None else anchor[1])
        except SoupCheckpointsError:
            raise
        except (ValueError, OSError) as err:  # e.g. checkpoints of different models
            raise SoupCheckpointsError(_named(str(err), sources)) from None


@contextmanager
def _flush_denormal() -> Iterator[None]:
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # the process's default


@contextmanager
def _scoring(heldout: HeldOut | None, files: list[Path], anchor, settings) -> Iterator:
    """The held-out `Evaluator` (None without `heldout`)."""
    if heldout is None:
        yield None
        return
    from raysoup.api.heldout import evaluator_for, model_spec

    spec = model_spec(heldout, files + ([anchor[1]] if anchor else []))
    _check_model(spec.model_name, files + ([anchor[1]] if anchor else []))
    if hasattr(settings, "check_task"):  # greedy by F1 or MCC: a two-class task only
        try:
            settings.check_task(spec.num_classes)
        except ValueError as err:
            raise SoupCheckpointsError(str(err).replace("soup.greedy.metric", "metric")) from None
    with evaluator_for(heldout, spec) as evaluator:
        yield evaluator


def _check_model(model_name: str, files: list[Path]) -> None:
    """The paper's checkpoints are OpenAI CLIP weights: scored with GELU instead of their
    QuickGELU they would compute something else (the importer's rule)."""
    from safetensors import safe_open

    from raysoup.checkpoints.importer import _require_quick_gelu

    for f in files:
        with safe_open(str(f), "pt") as h:
            if (h.metadata() or {}).get("layout") == "paper":
                _require_quick_gelu(model_name, f)  # names f: `_named` maps it to the source
                return


def _method(method: str, weights, base, heldout, settings: dict):
    """The merge method built from `settings`, or an error naming what it would need."""
    from pydantic import ValidationError

    from raysoup.soup.registry import METHODS, get_recipe

    if method in REFUSED_METHODS:
        raise SoupCheckpointsError(f"method {method!r}: {REFUSED_METHODS[method]}")
    if method not in METHODS:
        raise SoupCheckpointsError(f"unknown method {method!r}; valid: "
                                   f"{sorted(set(METHODS) - set(REFUSED_METHODS))}")
    if heldout is not None and not isinstance(heldout, HeldOut):
        raise SoupCheckpointsError("heldout: pass raysoup.HeldOut(<split path>, model=<open_clip "
                                   f"model name>), not a {type(heldout).__name__}")
    if method in SCORED_METHODS and heldout is None:
        raise SoupCheckpointsError(
            f"method {method!r} needs {SCORED_METHODS[method]}: pass "
            "heldout=raysoup.HeldOut(<split path>, model=<open_clip model name>)")
    if heldout is not None and method in ("uniform", "model_stock"):
        raise SoupCheckpointsError(f"heldout: method {method!r} scores nothing; leave it out")
    if weights is not None and (method != "uniform" or settings):
        raise SoupCheckpointsError("weights= gives a weighted average: use it with the "
                                   "default method 'uniform' and no settings")
    if method in ANCHORED_METHODS and base is None:
        raise SoupCheckpointsError(f"method {method!r} starts from the pre-trained model: pass "
                                   "base=<its checkpoint> (θ_0, e.g. the zero-shot model)")
    if method not in ANCHORED_METHODS and base is not None:
        raise SoupCheckpointsError(f"base: method {method!r} has no base model; leave it out")
    try:
        chosen = METHODS[method].Settings(**settings)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SoupCheckpointsError(f"method {method!r} settings: {problems}") from None
    lambdas = getattr(chosen, "lambdas", "absent")
    if (method in TASK_VECTOR_METHODS and heldout is None
            and (lambdas is None or len(lambdas) != 1)):
        raise SoupCheckpointsError(
            f"method {method!r} picks its scale λ on held-out data from a grid: pass "
            "heldout=raysoup.HeldOut(...), or give one λ, e.g. lambdas=[1.0]")
    return get_recipe(method, chosen), chosen


def _ingredients(paths: Iterable[str | Path], tmp: Path, fmt: str,
                 sources: dict[str, str]) -> list[tuple[str, Path]]:
    """(name, safetensors file) per checkpoint, in the order given (a directory's files in
    name order): an ingredient's own file, or the checkpoint converted as `raysoup import`
    converts it (key layout mapped, floats cast to float32)."""
    from raysoup.checkpoints.importer import ingredient_name, source_files
    from raysoup.checkpoints.ingredient import WEIGHTS_FILE

    paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
    if not paths:
        raise SoupCheckpointsError("paths: no checkpoints given")
    tmp.mkdir(parents=True, exist_ok=True)
    out, reference = [], None
    for p in paths:
        if (p / WEIGHTS_FILE).is_file():  # a raysoup ingredient directory
            out.append((p.name, p / WEIGHTS_FILE))
            continue
        for src in source_files([p]):
            name = ingredient_name(src)
            dest = tmp / f"{len(out)}-{name}.safetensors"
            reference = _convert(src, dest, fmt, reference)
            sources[str(dest)] = str(src)
            out.append((name, dest))
    names = [n for n, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SoupCheckpointsError(f"paths: more than one checkpoint named {twice} (a soup's "
                                   "ingredients are told apart by file or directory name)")
    return out


def _base(base: Path, tmp: Path, fmt: str, sources: dict[str, str]) -> tuple[str, Path]:
    """(BASE_NAME, its safetensors file): an ingredient's own file, or the checkpoint converted
    (as `raysoup import --zeroshot FILE` converts it)."""
    from raysoup.checkpoints.ingredient import WEIGHTS_FILE

    if (base / WEIGHTS_FILE).is_file():
        return BASE_NAME, base / WEIGHTS_FILE
    _convert(base, tmp / f"{BASE_NAME}.safetensors", fmt, None)
    sources[str(tmp / f"{BASE_NAME}.safetensors")] = str(base)
    return BASE_NAME, tmp / f"{BASE_NAME}.safetensors"


def _convert(src: Path, dest: Path, fmt: str, reference):
    """Write `src` as raysoup's layout to `dest`; the first file is the reference the others
    must match in keys and shapes (an import checks them against the experiment's model)."""
    from safetensors.torch import save_file

    from raysoup.checkpoints.importer import check_and_cast, read_checkpoint, to_classifier

    state, layout, _ = to_classifier(read_checkpoint(src), fmt, src)
    state, _ = check_and_cast(state, reference or state, src)
    # The layout travels with the file: held-out scoring checks the model against it.
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest), {"layout": layout})
    return reference or state


def _cook(recipe, members: list[tuple[str, Path]], anchor, weights, evaluator,
          metric: str = "accuracy"):
    """The method's result over the members; with an `evaluator`, each member first gets its
    held-out accuracy (the evaluate stage's, which the soup stage ranks candidates by), and
    its held-out `metric` where greedy ranks by F1 or MCC."""
    from safetensors.torch import load_file

    from raysoup.api.local_kitchen import LocalKitchen
    from raysoup.checkpoints.tensorfile import open_tensors
    from raysoup.soup.base import Candidate, RecipeResult

    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(members):
            raise SoupCheckpointsError(f"weights: {len(weights)} given for {len(members)} "
                                       "checkpoints (one each, in the order of paths)")
        return RecipeResult(ingredients=[n for n, _ in members], weights=weights)
    with open_tensors(members[0][1]) as first:
        names = list(first.keys())
    kitchen = LocalKitchen(None if anchor is None else Candidate(BASE_NAME, math.nan, anchor[1]),
                           names, evaluator)
    # One model loaded at a time (the scale rule); without held-out data nothing ranks them.
    candidates = []
    for n, p in members:
        acc, metrics = ((math.nan, {}) if evaluator is None
                        else kitchen.heldout(load_file(str(p)), metric))
        candidates.append(Candidate(n, acc, p, metrics))
    return recipe.cook(candidates, kitchen)  # a ValueError (e.g. model_stock with one
    # fine-tuned model) becomes a SoupCheckpointsError in `soup_checkpoints`


def _write(out: Path, result, files: list[Path], anchor: Path | None) -> Path:
    """Reduce `result` over `files` (the soup stage's `Blend`, as one shard) into `out`;
    `anchor`: the base's file, whose integer buffers a soup does not take (as in the stage)."""
    from raysoup.checkpoints.tensorfile import open_tensors
    from raysoup.reduce import Blend, write_shard
    from raysoup.soup.base import Candidate, integers_source

    with open_tensors(files[0]) as first:
        names = list(first.keys())
    base = None if anchor is None else Candidate(BASE_NAME, math.nan, anchor)
    blend = Blend(tuple(result.weights), result.tensor_weights, result.merge, result.scale,
                  integers_source(files, base))
    blend.check(set(names))
    tensors = blend.shard(files, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_shard(out, tensors, _dtypes(files[0]))
    return out


def _dtypes(first: Path) -> dict[str, str] | None:
    """The soup keeps the first ingredient's dtypes, as the soup stage does (an ingredient
    directory's manifest); a converted checkpoint is float32 already, as an import makes it."""
    from raysoup.checkpoints.ingredient import WEIGHTS_FILE, read_manifest

    if first.name != WEIGHTS_FILE:
        return None
    return {n: t["dtype"] for n, t in read_manifest(first.parent)["tensors"].items()}
