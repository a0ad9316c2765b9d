"""Import foreign checkpoints as ingredients, without ever executing pickled code.

Accepted key layouts (`--format`):

- ``paper`` — the 72 released ViT-B/32 fine-tunes of "Model soups" (Wortsman et al. 2022,
  github.com/mlfoundations/model-soups). Each file is ``torch.save(ModelWrapper.state_dict())``
  (utils.py): ``model`` is OpenAI CLIP ViT-B/32 with its text ``transformer`` deleted, so the
  keys are ``model.visual.*``, the rest of CLIP's top level (``model.positional_embedding``,
  ``model.text_projection``, ``model.logit_scale``, ``model.token_embedding.weight``,
  ``model.ln_final.*``) and ``classification_head.weight`` / ``.bias`` (an ``nn.Linear``).
  Mapping: ``model.visual.X`` → ``visual.X`` (OpenAI CLIP and open_clip use the same visual key
  names: open_clip's ``build_model_from_openai_state_dict`` loads OpenAI state dicts with a
  strict ``load_state_dict``), ``classification_head.*`` → ``head.*``; the text-side keys are
  dropped (listed in the manifest).
  Head convention: the paper evaluates with ``get_model_from_sd`` → ``ModelWrapper(...,
  normalize=True)``, i.e. logits = head(visual(x) / ‖visual(x)‖), and its zero-shot head is
  ``100 * unit text embeddings`` (zeroshot.py; 100 = CLIP's exp(logit_scale)). That is exactly
  raysoup's ImageClassifier (L2-normalised features; the head carries the logit scale, see
  ``zero_shot_head``), so the weights map one to one with unchanged semantics.
  Activation: OpenAI CLIP uses QuickGELU, so the target model must too
  (``ViT-B-32-quickgelu``; plain ``ViT-B-32`` in open_clip uses GELU) — checked below.
- ``state_dict`` — raysoup's own ImageClassifier state dict (``visual.*``, ``head.*``) in a torch
  or safetensors file; ``safetensors`` — the same, but the file must be safetensors.

A plain CLIP state dict (visual + text tower, no classification head) is refused: it belongs in
``model.pretrained``, from which `raysoup run` builds the zero-shot head.

Reading: safetensors via safetensors; anything else only via
``torch.load(map_location="cpu", weights_only=True)``. A pickle that would run code is refused
with an error naming the file — there is no fallback to ``weights_only=False``.

Re-import is idempotent: an existing complete ingredient of the same name imported from a
file with the same sha256 is skipped; one with other contents is an error (never overwritten).
"""

from __future__ import annotations

import itertools
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from raysoup.checkpoints.ingredient import (
    IngredientError,
    file_sha256,
    list_ingredients,
    read_manifest,
    write_ingredient,
)
from raysoup.workdir import ZEROSHOT

log = logging.getLogger(__name__)

FORMATS = ("auto", "paper", "state_dict", "safetensors")
SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class CheckpointImportError(IngredientError):
    """A foreign checkpoint cannot be imported; the message names the file (and tensor)."""


@dataclass(frozen=True)
class Imported:
    name: str
    path: Path
    status: str  # "imported" | "skipped" (already there, same source sha256)


# ---------------------------------------------------------------- reading


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from safetensors or a torch file, never running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several error types
            raise CheckpointImportError(
                f"{path}: not a readable safetensors file ({exc})") from None
    if path.stat().st_size == 0:
        raise CheckpointImportError(f"{path}: empty file (0 bytes), not a torch checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if not _refused_as_unsafe(reason):
            raise CheckpointImportError(
                f"{path}: corrupt or not a torch checkpoint ({reason})") from None
        # weights_only refuses globals outside torch's allow-list (e.g. os.system).
        raise CheckpointImportError(
            f"{path}: refused: the pickle references objects that are not plain tensors/"
            f"containers and could execute code when loaded ({reason}). raysoup never loads "
            "with weights_only=False; re-save the file as a plain state dict or safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        reason = str(exc).strip() or f"{type(exc).__name__}: the file ends too early"
        raise CheckpointImportError(
            f"{path}: corrupt or not a torch checkpoint ({reason})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # training checkpoints often wrap the weights
    if not isinstance(obj, dict) or not obj:
        raise CheckpointImportError(f"{path}: expected a state dict (a dict of tensors), "
                                    f"got {type(obj).__name__}")
    odd = [k for k in obj if not isinstance(k, str)]
    if odd:
        raise CheckpointImportError(f"{path}: keys {odd[:5]!r} are not tensor names (strings)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(f"{path}: entries {bad[:5]} are not tensors")
    if all(k.startswith("module.") for k in obj):  # saved from (Distributed)DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The weights-only unpickler's own reason: torch wraps it in a long generic message
    (whose last line is a link) and keeps it as the exception's context."""
    inner = exc.__context__ if isinstance(exc.__context__, pickle.UnpicklingError) else exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return lines[0] if lines else repr(exc)


def _refused_as_unsafe(reason: str) -> bool:
    """True when the unpickler refused a well-formed pickle for what it would call or build
    (a global, a reduce, a class); an unknown opcode is a corrupt file, not an attack."""
    return not reason.startswith(("Unsupported operand", "invalid load key"))


# ---------------------------------------------------------------- key layouts


def detect_format(state: dict[str, torch.Tensor], path: Path) -> str:
    """'paper' or 'state_dict' from the key layout; anything else is an error naming the file."""
    keys = set(state)
    if "classification_head.weight" in keys and any(k.startswith("model.visual.") for k in keys):
        return "paper"
    if "head.weight" in keys and any(k.startswith("visual.") for k in keys):
        return "state_dict"
    if any(k.startswith("visual.") for k in keys) and "text_projection" in keys:
        raise CheckpointImportError(
            f"{path}: a CLIP state dict without a classification head; an ingredient needs one. "
            "Use it as model.pretrained (the zero-shot head is then built from the class names)"
        )
    raise CheckpointImportError(
        f"{path}: unknown key layout (e.g. {sorted(keys)[:4]}); expected the model-soups paper's "
        "(model.visual.*, classification_head.*) or raysoup's (visual.*, head.*)"
    )


def paper_to_classifier(state: dict[str, torch.Tensor],
                        path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """ModelWrapper keys → ImageClassifier keys; returns (mapped, dropped key names)."""
    out, dropped = {}, []
    for key, tensor in state.items():
        if key.startswith("model.visual."):
            out["visual." + key[len("model.visual."):]] = tensor
        elif key.startswith("classification_head."):
            out["head." + key[len("classification_head."):]] = tensor
        elif key.startswith("model."):
            dropped.append(key)  # text side of CLIP: not part of an image classifier
        else:
            raise CheckpointImportError(f"{path}: tensor {key} is not part of the paper's "
                                        "ModelWrapper layout (model.*, classification_head.*)")
    return out, sorted(dropped)


def to_classifier(state: dict[str, torch.Tensor], fmt: str,
                  path: Path) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(ImageClassifier state dict, detected layout, dropped keys) for the requested format."""
    if fmt not in FORMATS:
        raise CheckpointImportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "safetensors" and path.suffix != ".safetensors":
        raise CheckpointImportError(f"{path}: --format safetensors needs a .safetensors file")
    layout = detect_format(state, path)
    wanted = {"paper": "paper", "state_dict": "state_dict", "safetensors": "state_dict"}.get(fmt)
    if wanted is not None and layout != wanted:
        raise CheckpointImportError(f"{path}: --format {fmt} expects the {wanted} key layout, "
                                    f"but the file has the {layout} layout")
    if layout == "paper":
        mapped, dropped = paper_to_classifier(state, path)
        return mapped, layout, dropped
    return dict(state), layout, []


def check_and_cast(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                   path: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Every reference key present with its shape; floats cast to float32 (integer buffers
    such as BatchNorm's num_batches_tracked must match exactly).

    Returns (state in reference key order, {source dtype: tensors cast}).
    """
    missing = [k for k in reference if k not in state]
    if missing:
        raise CheckpointImportError(f"{path}: tensor {missing[0]} is missing{_more(missing)}")
    extra = sorted(set(state) - set(reference))
    if extra:
        raise CheckpointImportError(
            f"{path}: tensor {extra[0]} is not part of the target model{_more(extra)}")
    out, cast = {}, {}
    for key, ref in reference.items():
        t = state[key]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointImportError(f"{path}: tensor {key} has shape {tuple(t.shape)}, "
                                        f"the target model expects {tuple(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point() or (
                not ref.is_floating_point() and t.dtype != ref.dtype):
            raise CheckpointImportError(f"{path}: tensor {key} has dtype {t.dtype}, the target "
                                        f"model expects {ref.dtype}")
        if t.is_floating_point() and t.dtype != torch.float32:
            name = str(t.dtype).removeprefix("torch.")
            cast[name] = cast.get(name, 0) + 1
            t = t.float()
        out[key] = t
    _check_no_shared_memory(out, path)
    return out, cast


def _check_no_shared_memory(state: dict[str, torch.Tensor], path: Path) -> None:
    """Two names over the same bytes are tied weights; the target model has no tied tensors
    (and safetensors cannot store aliases), so which value each should get is ambiguous."""
    spans: dict[int, list[tuple[int, int, str]]] = {}
    for key, t in state.items():
        if t.numel() == 0:
            continue
        start = t.storage_offset() * t.element_size()
        extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
        spans.setdefault(t.untyped_storage().data_ptr(), []).append(
            (start, start + extent * t.element_size(), key))
    for group in spans.values():
        group.sort()
        for (_, end, a), (begin, _, b) in itertools.pairwise(group):
            if begin < end:
                raise CheckpointImportError(
                    f"{path}: tensors {a} and {b} share memory (tied weights); the target "
                    "model keeps them separate. Re-save the file with a copy of each "
                    "(e.g. {k: v.clone() for k, v in state.items()})")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


# ---------------------------------------------------------------- files and names


def source_files(sources: list[Path]) -> list[Path]:
    """Files named directly, plus the checkpoint files (SUFFIXES) directly inside directories."""
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise CheckpointImportError(f"{src}: no checkpoint files ({', '.join(SUFFIXES)})")
            files.extend(found)
        elif src.is_file():
            files.append(src)
        else:
            raise CheckpointImportError(f"{src}: no such file or directory")
    seen: dict[Path, Path] = {}
    return [seen.setdefault(f.resolve(), f) for f in files if f.resolve() not in seen]


# The sweep names its ingredients trial-<n> (orchestration.trial_records.trial_name), and
# counts and orders trials by that name: an import under it would pose as a trial.
TRIAL_PREFIX = "trial-"

# A prefix becomes part of a directory name directly under ingredients/: no separators, no
# leading dot (hidden names are temp dirs), nothing that could climb out ("..").
PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def ingredient_name(path: Path, prefix: str | None = None) -> str:
    """`model_7.pt` → `model_7` (or `<prefix>-model_7`): the file stem, made directory-safe."""
    if prefix is not None and (not PREFIX.fullmatch(prefix) or ".." in prefix):
        raise CheckpointImportError(
            f"--prefix {prefix!r}: use letters, digits, '_', '-' and '.' only (not first, no "
            "'..'): an ingredient is a directory directly under ingredients/")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip(".-") or "checkpoint"
    return f"{prefix}-{stem}" if prefix else stem


def _sort_key(name: str) -> list:
    # Natural order, so model_2 comes before model_10 in listings and logs.
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def plan_names(files: list[Path], prefix: str | None = None) -> list[tuple[str, Path]]:
    """(ingredient name, file) in natural name order; two files with one name is an error."""
    named: dict[str, Path] = {}
    for f in files:
        name = ingredient_name(f, prefix)
        if name == ZEROSHOT:
            raise CheckpointImportError(f"{f}: the name {ZEROSHOT!r} is reserved; import the "
                                        "zero-shot model with --zeroshot FILE")
        if name.startswith(TRIAL_PREFIX):
            raise CheckpointImportError(
                f"{f}: the name {name!r} is reserved for the sweep's trials ({TRIAL_PREFIX}NNN): "
                "an imported checkpoint is never a trial. Import it under --prefix (e.g. "
                f"--prefix imported: 'imported-{Path(f).stem}') or rename the file")
        if name in named:
            raise CheckpointImportError(f"{named[name]} and {f} would both become ingredient "
                                        f"{name!r}; rename one or import them separately")
        named[name] = f
    return sorted(named.items(), key=lambda item: _sort_key(item[0]))


# ---------------------------------------------------------------- import


@dataclass(frozen=True)
class Target:
    """What imported ingredients must fit: the experiment's model and label space."""

    model_name: str
    num_classes: int | None = None  # None: take it from the checkpoint's head
    classnames: list[str] | None = None
    family: str | None = None  # the model family (models/families.py); None: the default


def experiment_target(cfg, ingredients_root: Path) -> Target:
    """The model and class count an experiment's ingredients must have.

    From the config (model.name; classnames or the world's class count) and, when the workdir
    already has one, the zero-shot ingredient: every ingredient must fit the same skeleton.
    """
    from raysoup.data.sources import resolve_classnames
    from raysoup.models.families import family_of

    names = resolve_classnames(cfg.data.classnames)
    num = len(names) if names else (cfg.data.world.num_classes if cfg.data.world else None)
    root = Path(ingredients_root)
    zs = root / ZEROSHOT
    if zs in list_ingredients(root):
        manifest = read_manifest(zs)
        if manifest.get("model_name") != cfg.model.name:
            raise CheckpointImportError(
                f"{zs}: the workdir's zero-shot ingredient is a {manifest.get('model_name')!r}, "
                f"but the config's model.name is {cfg.model.name!r}")
        if num is None:
            num = manifest.get("num_classes")
        elif manifest.get("num_classes") != num:
            raise CheckpointImportError(
                f"{zs}: the workdir's zero-shot ingredient has {manifest.get('num_classes')} "
                f"classes, the config has {num}")
    return Target(cfg.model.name, num, names, family_of(cfg.model).name)


def _existing(dir: Path, digest: str, src: Path) -> bool:
    """True if `dir` already holds this import; error if it holds something else."""
    if dir not in list_ingredients(dir.parent):
        return False
    manifest = read_manifest(dir)
    if manifest.get("imported") and manifest.get("source_sha256") == digest:
        return True
    raise CheckpointImportError(
        f"{src}: ingredient {dir} already exists with other contents (source "
        f"{manifest.get('source', 'not imported')}); remove it or import under --prefix"
    )


def import_checkpoint(src: Path, dest: Path, target: Target, fmt: str = "auto",
                      kind: str = "ingredient",
                      reference: Callable[[int], dict[str, torch.Tensor]] | None = None
                      ) -> Imported:
    """Import one file as the ingredient directory `dest` (skipped if already imported)."""
    src, dest = Path(src).absolute(), Path(dest)
    digest = file_sha256(src)
    if _existing(dest, digest, src):
        log.info("%s: already imported from %s, skipped", dest.name, src)
        return Imported(dest.name, dest, "skipped")
    state, layout, dropped = to_classifier(read_checkpoint(src), fmt, src)
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise CheckpointImportError(f"{src}: tensor head.weight is missing or not 2-D")
    num_classes = int(head.shape[0])
    if target.num_classes is not None and num_classes != target.num_classes:
        raise CheckpointImportError(f"{src}: tensor head.weight has {num_classes} classes, the "
                                    f"experiment has {target.num_classes}")
    if layout == "paper":
        _require_quick_gelu(target.model_name, src)
    ref = (reference or (lambda n: skeleton_state(target.model_name, n, target.family)))(num_classes)
    state, cast = check_and_cast(state, ref, src)
    meta = {
        "kind": kind,
        "imported": True,
        "source": str(src),
        "source_sha256": digest,
        "source_format": layout,
        "model_name": target.model_name,
        "num_classes": num_classes,
        "preprocess": preprocess_of(target.model_name),
        "dropped_keys": dropped,
        **({"cast_to_float32": cast} if cast else {}),
        **({"classnames": target.classnames} if target.classnames else {}),
    }
    write_ingredient(dest, state, meta)
    log.info("%s: imported from %s (%s layout)", dest.name, src, layout)
    return Imported(dest.name, dest, "imported")


def import_checkpoints(sources: list[Path], ingredients_root: Path, target: Target,
                       fmt: str = "auto", prefix: str | None = None,
                       zeroshot: Path | None = None) -> list[Imported]:
    """Import files / directories of files into `ingredients_root`/<name>.

    Names are the file stems (natural order), with `prefix-` if given; `zeroshot` becomes the
    ingredient "zeroshot" (kind "zeroshot"), which `raysoup run` then uses as its initialisation.
    Files are imported one by one: a bad file stops the import there with an error naming it;
    those before it stay imported (re-running skips them).
    """
    root = Path(ingredients_root)
    jobs = [(n, f, "ingredient") for n, f in plan_names(source_files(sources), prefix)]
    if zeroshot is not None:
        jobs.insert(0, (ZEROSHOT, Path(zeroshot), ZEROSHOT))
    if not jobs:
        raise CheckpointImportError("nothing to import: give checkpoint files or directories")
    references: dict[int, dict[str, torch.Tensor]] = {}

    def reference(num_classes: int) -> dict[str, torch.Tensor]:
        # Building ViT-B/32 takes seconds: one skeleton per class count for the whole import.
        if num_classes not in references:
            references[num_classes] = skeleton_state(target.model_name, num_classes,
                                                     target.family)
        return references[num_classes]

    return [import_checkpoint(f, root / name, target, fmt, kind, reference)
            for name, f, kind in jobs]


# ---------------------------------------------------------------- target model


def skeleton_state(model_name: str, num_classes: int,
                   family: str | None = None) -> dict[str, torch.Tensor]:
    # At call time: building a skeleton loads the family's model library.
    from raysoup.models.families import DEFAULT_FAMILY, get_family

    return get_family(family or DEFAULT_FAMILY).skeleton(model_name, num_classes).state_dict()


def preprocess_of(model_name: str) -> dict:
    """The image preprocessing the model's config declares (what eval actors apply)."""
    import open_clip

    from raysoup.models.factory import model_config

    vision = model_config(model_name)["vision_cfg"]
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean = vision.get("image_mean") or open_clip.OPENAI_DATASET_MEAN
    std = vision.get("image_std") or open_clip.OPENAI_DATASET_STD
    return {"image_size": int(size), "mean": list(mean), "std": list(std)}


def _require_quick_gelu(model_name: str, src: Path) -> None:
    from raysoup.models.factory import model_config

    if not model_config(model_name).get("quick_gelu", False):
        raise CheckpointImportError(
            f"{src}: the model-soups checkpoints are OpenAI CLIP weights, which use QuickGELU, "
            f"but model.name {model_name!r} builds GELU; use the '-quickgelu' variant "
            f"(e.g. 'ViT-B-32-quickgelu') so imported weights compute what they were trained for"
        )
