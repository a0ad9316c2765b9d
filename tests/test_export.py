"""raysoup/export and data/lineage without Ray or MLflow: a real tiny open_clip model, real
safetensors files. (A soup of a real run, loaded by plain open_clip and MLflow:
test_published_models.py.)"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raysoup.checkpoints import write_ingredient
from raysoup.config import TrackingCfg
from raysoup.data.images import LabeledImages
from raysoup.data.lineage import samples_digest
from raysoup.export import ExportError, ModelInfo, export_open_clip, export_safetensors
from raysoup.models import build_clip, classifier_from_clip
from raysoup.models.factory import model_config

NAME = "raysoup-tiny-rn"


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_clip(NAME)


@pytest.fixture
def ingredient(tmp_path, base):
    dim = base.visual.output_dim
    model = classifier_from_clip(base, torch.randn(3, dim))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["visual.conv1.weight"] += 1.0  # "fine-tuned": differs from the base's image tower
    write_ingredient(tmp_path / "ingredients" / "trial-000", state, {"kind": "ingredient"})
    return tmp_path / "ingredients" / "trial-000", state


def _info():
    return ModelInfo(NAME, model_config(NAME), ["a", "b", "c"], 32, [0.5] * 3, [0.25] * 3,
                     "base.safetensors", {"model": "trial-000", "recipe": "single model",
                                          "ingredients": ["trial-000"],
                                          "accuracy": {"heldout": 0.5, "test": 0.75,
                                                       "sketch": 0.25, "inverted": 0.5}})


def test_open_clip_export_is_the_soups_image_tower_on_the_base(tmp_path, base, ingredient):
    path, state = ingredient
    out = export_open_clip(path, _info(), base.state_dict(), tmp_path / "out")
    clip = load_file(str(out / "open_clip_model.safetensors"))
    assert clip.keys() == base.state_dict().keys()
    for name, tensor in clip.items():
        expected = state[name] if name.startswith("visual.") else base.state_dict()[name]
        assert torch.equal(tensor, expected), name
    head = load_file(str(out / "head.safetensors"))
    assert torch.equal(head["weight"], state["head.weight"])
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == model_config(NAME) and config["classnames"] == ["a", "b", "c"]
    assert config["preprocess_cfg"]["resize_mode"] == "shortest"
    card = (out / "README.md").read_text()
    assert "| test | 75.00 |" in card and "| mean shift | 37.50 |" in card


def test_export_errors_name_the_problem(tmp_path, base, ingredient):
    path, _ = ingredient
    other = build_clip("raysoup-tiny-vit").state_dict()
    with pytest.raises(ExportError, match="image-tower tensors differ"):
        export_open_clip(path, _info(), other, tmp_path / "out")
    wrong = dict(base.state_dict())
    wrong["visual.conv1.weight"] = torch.zeros(1, 1)
    with pytest.raises(ExportError, match=r"tensor visual\.conv1\.weight has shape"):
        export_open_clip(path, _info(), wrong, tmp_path / "out")
    ensemble = tmp_path / "soups" / "ensemble"
    ensemble.mkdir(parents=True)
    (ensemble / "recipe.json").write_text('{"kind": "ensemble"}')
    with pytest.raises(ExportError, match="an ensemble has no single set of weights"):
        export_safetensors(ensemble, _info(), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_safetensors_export_is_the_classifier(tmp_path, ingredient):
    path, state = ingredient
    out = export_safetensors(path, _info(), tmp_path / "flat")
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_samples_digest_depends_on_keys_and_labels_only():
    def split(keys, labels, images):
        return LabeledImages(keys, [bytes([i]) for i in images], np.asarray(labels), ["x", "y"])

    a = samples_digest(split(["k0", "k1"], [0, 1], [1, 2]))
    assert a == samples_digest(split(["k0", "k1"], [0, 1], [7, 8]))  # same samples, any bytes
    assert a != samples_digest(split(["k0", "k1"], [1, 1], [1, 2]))
    assert a != samples_digest(split(["k0", "k2"], [0, 1], [1, 2]))


def test_tracking_register_is_spelled_register():
    assert TrackingCfg.model_validate({"register": False}).register_soups is False
    assert json.loads(TrackingCfg().model_dump_json())["register"] is True
    with pytest.raises(ValueError, match="tracking.register needs tracking.log_models"):
        TrackingCfg.model_validate({"log_models": False})


def test_pyfunc_resizes_as_raysoup_evaluates():
    """The MLflow model's file restates raysoup's eval resize (it loads without raysoup)."""
    from PIL import Image

    from raysoup.data.transforms import resize_center_crop
    from raysoup.tracking.pyfunc_model import _resize_center_crop

    rng = np.random.default_rng(0)
    for shape in ((37, 50, 3), (64, 20, 3), (32, 32, 3)):
        img = Image.fromarray(rng.integers(0, 255, shape, np.uint8))
        assert np.array_equal(np.asarray(_resize_center_crop(img, 32)),
                              np.asarray(resize_center_crop(img, 32)))


def test_export_never_deletes_a_directory_raysoup_did_not_write(tmp_path, ingredient, capsys):
    """An existing --out holding a user's files is refused, nothing touched; --overwrite moves
    it aside as .old-* (said on stderr), never deletes it. An earlier export is replaced."""
    path, _ = ingredient
    out = tmp_path / "mine"
    (out / "docs").mkdir(parents=True)
    (out / "docs" / "thesis.txt").write_text("years of work")
    with pytest.raises(ExportError, match=r"--out .*mine: exists and is a directory raysoup "
                                          r"did not write; nothing was written.*--overwrite"):
        export_safetensors(path, _info(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingredients", "mine"]
    assert (out / "docs" / "thesis.txt").read_text() == "years of work"
    export_safetensors(path, _info(), out, overwrite=True)
    old = [p for p in tmp_path.iterdir() if p.name.startswith(".old-mine-")]
    assert len(old) == 1 and (old[0] / "docs" / "thesis.txt").read_text() == "years of work"
    assert str(old[0]) in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
    export_safetensors(path, _info(), out)  # over its own earlier export: no --overwrite needed
    assert sorted(p.name for p in tmp_path.iterdir()) == [old[0].name, "ingredients", "mine"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is not a directory"):
        export_safetensors(path, _info(), tmp_path / "file")
    (tmp_path / "empty").mkdir()
    export_safetensors(path, _info(), tmp_path / "empty")


# Odd sizes (w, h): rounding and truncation differ (640x427, 300x301 at 224), tiny and tall.
ODD_SIZES = ((500, 333), (640, 427), (300, 301), (9, 5), (40, 300), (333, 500), (33, 32))


def _odd_jpegs() -> list[bytes]:
    import io

    from PIL import Image

    rng = np.random.default_rng(4)
    out = []
    for w, h in ODD_SIZES:
        # Smooth gradients plus noise: a crop one pixel off changes many values.
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)),
                        (xx + yy) % 256], axis=-1) + rng.integers(0, 40, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("size", [32, 224])
def test_eval_resize_is_open_clips_to_the_pixel(size):
    """raysoup's eval resize and normalisation are open_clip's preprocess (built from an
    export's preprocess_cfg) bit for bit, on images whose arithmetic differs most."""
    import io

    from open_clip.transform import image_transform
    from PIL import Image

    from raysoup.data.transforms import normalise, resize_center_crop
    from raysoup.tracking.pyfunc_model import _resize_center_crop

    info = _info()
    pp = {**info.preprocess_cfg, "size": size}
    preprocess = image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"],
                                 resize_mode=pp["resize_mode"], interpolation=pp["interpolation"])
    for jpeg in _odd_jpegs():
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        ours = np.asarray(resize_center_crop(img, size))
        resize, crop = preprocess.transforms[:2]  # torchvision's Resize, CenterCrop
        assert np.array_equal(ours, np.asarray(crop(resize(img)))), img.size  # the pixels
        assert np.array_equal(np.asarray(_resize_center_crop(img, size)), ours)  # MLflow's
        want = preprocess(img)
        got = torch.from_numpy(normalise(ours.transpose(2, 0, 1), pp["mean"], pp["std"]))
        assert torch.equal(got, want), img.size


def test_exported_model_through_plain_open_clip_evaluates_as_the_report(tmp_path, base,
                                                                        ingredient):
    """The model card's recipe (open_clip's create_model_and_transforms and its preprocess on
    the export) gives the inputs, logits and accuracy raysoup's evaluation gave: the eval
    cache's pixels, normalised as the evaluator does, through the evaluator."""
    import io

    import open_clip
    from PIL import Image

    from raysoup.evaluate.cache import CachedImages, build_shard, shard_name
    from raysoup.evaluate.evaluator import EvalSplit, Evaluator, load_weights_

    path, state = ingredient
    out = export_open_clip(path, _info(), base.state_dict(), tmp_path / "out")
    jpegs = _odd_jpegs()
    labels = np.arange(len(jpegs)) % 3
    data = LabeledImages([f"odd/{i}" for i in range(len(jpegs))], jpegs, labels, ["a", "b", "c"])
    info = _info()
    build_shard(data, info.image_size, tmp_path / "cache" / shard_name(0))
    cached = CachedImages(str(tmp_path / "cache"), [len(data)], tuple(info.mean),
                          tuple(info.std))
    model = classifier_from_clip(build_clip(NAME), torch.zeros(3, base.visual.output_dim))
    load_weights_(model, state)
    evaluator = Evaluator(model, {"odd": EvalSplit(cached, labels)}, batch_size=len(data))
    report_logits = evaluator.logits("odd")

    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    clip.eval()
    head = load_file(str(out / "head.safetensors"))
    x = torch.stack([preprocess(Image.open(io.BytesIO(j))) for j in jpegs])
    assert torch.equal(x, torch.from_numpy(next(cached.batches(0, len(data), len(data)))))
    with torch.no_grad():
        features = clip.encode_image(x, normalize=True)
        logits = torch.nn.functional.linear(features, head["weight"], head["bias"])
    assert torch.equal(logits, report_logits)
    assert evaluator.score(None)["odd"][0] == int((logits.argmax(1).numpy() == labels).sum())
