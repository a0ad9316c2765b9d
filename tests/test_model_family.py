"""models/family.py + families.py: the registry, and the open_clip family building exactly the
models the stages built before it (tiny configs, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from raysoup.config import ModelCfg, TrainHParams
from raysoup.data.world import CLASSNAMES, TEMPLATES
from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.models.families import DEFAULT_FAMILY, FAMILIES, family_of, get_family
from raysoup.models.family import ModelFamily
from raysoup.models.open_clip_family import OpenClipImageFamily

TINY = ("raysoup-tiny-vit", "raysoup-tiny-rn")
SHIPPED = ModelCfg(name="raysoup-tiny-rn", tokenizer="world", pretrained="raysoup:tiny-rn-web")


def test_registry_finds_open_clip_and_names_the_valid_families():
    family = get_family("open_clip")
    assert isinstance(family, OpenClipImageFamily) and isinstance(family, ModelFamily)
    assert DEFAULT_FAMILY in FAMILIES and FAMILIES["open_clip"] is family
    with pytest.raises(ValueError, match=r"unknown model family 'timm'; valid: \['hf_text', "
                                         r"'open_clip'\]"):
        get_family("timm")


def test_family_of_a_config_or_a_manifest_without_a_family_field_is_open_clip():
    assert family_of(SHIPPED) is get_family("open_clip")
    assert family_of({"model_name": "raysoup-tiny-rn", "num_classes": 4}).name == "open_clip"
    assert family_of().name == "open_clip"
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        family_of({"family": "nope"})


@pytest.mark.parametrize("name", TINY)
def test_skeleton_has_the_classifiers_names_and_shapes(name):
    """visual.* of open_clip's image tower + a [C, D] head, as every ingredient on disk."""
    from raysoup.models.factory import register_configs

    register_configs()  # raysoup's tiny JSON configs, straight to open_clip
    clip = open_clip.create_model(name, pretrained=None)
    expected = {f"visual.{k}": tuple(v.shape) for k, v in clip.visual.state_dict().items()}
    dim = clip.visual.output_dim
    expected.update({"head.weight": (5, dim), "head.bias": (5,)})
    model = get_family("open_clip").skeleton(name, 5)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert list(model.state_dict()) == [*[f"visual.{k}" for k in clip.visual.state_dict()],
                                        "head.weight", "head.bias"]
    assert not model.training


def test_initial_model_is_zero_shot_clip_from_the_shipped_base():
    from raysoup.models import classifier_from_clip, get_tokenizer, load_clip, zero_shot_head
    from raysoup.models.base_models import base_vocab

    family = get_family("open_clip")
    splits = type("Splits", (), {"classnames": CLASSNAMES[:4], "templates": TEMPLATES})()
    base = family.packaged_base(SHIPPED, splits)
    assert base is not None and base.name == "clip.safetensors"
    torch.manual_seed(3)
    initial = family.initial_model(SHIPPED, base, splits.classnames, splits.templates)
    # The same calls, in the same order, as prepare.py made before the seam.
    torch.manual_seed(3)
    clip = load_clip(SHIPPED, base)
    tokenizer = get_tokenizer(SHIPPED, base_vocab(base))
    head = zero_shot_head(clip, tokenizer, splits.classnames, splits.templates)
    before = classifier_from_clip(clip, head).state_dict()
    after = initial.model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert initial.preprocess == {"image_size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                                  "std": [0.26862954, 0.26130258, 0.27577711]}
    assert family.input_args(initial.preprocess) == initial.preprocess
    skeleton = family.skeleton(SHIPPED.name, 4).state_dict()
    assert {k: v.shape for k, v in skeleton.items()} == {k: v.shape for k, v in after.items()}


def test_no_packaged_base_without_the_world_tokenizer():
    cfg = ModelCfg(name="raysoup-tiny-rn", tokenizer="open_clip", pretrained="raysoup:tiny-rn-web")
    assert get_family("open_clip").packaged_base(cfg, None) is None


def test_objective_and_logits_are_the_plain_classifier_ones():
    family = get_family("open_clip")
    torch.manual_seed(0)
    model = family.skeleton("raysoup-tiny-vit", 3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    objective = family.train_objective(TrainHParams(label_smoothing=0.1), 3)
    assert objective.mix(x, y) == (x, y)
    logits, loss = objective.forward_loss(model, x, y)
    assert torch.equal(logits, model(x))
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))
    mixed = family.train_objective(TrainHParams(mixup=0.2), 3)
    np.random.seed(0)
    _, target = mixed.mix(x.clone(), y)
    assert target.shape == (4, 3)  # soft targets
    split = EvalSplit(x.numpy(), y.numpy())
    with torch.no_grad():  # the evaluator's mode (attention takes its inference path)
        assert Evaluator(model, {"s": split}, 4).logits("s").equal(model(x))


def test_export_and_mlflow_names():
    import ast
    import sys
    from importlib import metadata

    import raysoup.tracking
    from raysoup.cli import _parser

    family = get_family("open_clip")
    # the CLI spells the choices out (its --help loads no model library): every family's
    sub = next(a for a in _parser()._actions if a.dest == "command")
    export = sub.choices["export"]
    choices = next(a for a in export._actions if a.dest == "format").choices
    assert set(choices) == {f for fam in FAMILIES.values() for f in fam.export_formats}
    spec = family.mlflow
    assert (spec.flavour, spec.artifact, spec.export_format) == ("pyfunc", "open_clip", "open_clip")
    assert spec.export_format in family.export_formats
    assert spec.code == Path(raysoup.tracking.__file__).parent / "pyfunc_model.py"
    # the served model imports nothing the requirements leave out (mlflow: MLflow adds it)
    dists = metadata.packages_distributions()
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(ast.parse(spec.code.read_text()))
                if isinstance(n, ast.Import | ast.ImportFrom) and not getattr(n, "level", 0)
                for a in n.names}
    needed = {d.lower() for m in imported - set(sys.stdlib_module_names) - {"__future__", "mlflow"}
              for d in dists[m]}
    assert needed == {r.lower() for r in spec.requirements}
    assert family.architecture("raysoup-tiny-rn")["vision_cfg"]["image_size"] == 32


def test_the_evaluator_loads_no_model_library_at_import():
    """soup/ imports the evaluator: the family is looked up when an evaluator is built."""
    import subprocess
    import sys

    code = "import sys, raysoup.evaluate.evaluator; print('open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
