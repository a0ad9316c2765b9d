"""`raysoup import`: foreign checkpoints → ingredients (real files, real open_clip models)."""

import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from raysoup.checkpoints import (
    CheckpointImportError,
    Target,
    import_checkpoints,
    list_ingredients,
    load_state_dict,
    read_checkpoint,
    read_manifest,
)
from raysoup.checkpoints.importer import FORMATS, preprocess_of
from raysoup.cli import main
from raysoup.models.classifier import classifier_from_clip, classifier_skeleton
from raysoup.models.factory import CONFIG_DIR, build_clip, image_stats

NUM_CLASSES = 5
# The paper's checkpoints are OpenAI CLIP (QuickGELU): a tiny QuickGELU ViT stands in for
# ViT-B/32 in the fast tests; test_real_vit_b32_layout checks the real key layout.
TINY = "raysoup-test-tiny-vit-quickgelu"


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    cfg = json.loads((CONFIG_DIR / "raysoup-tiny-vit.json").read_text())
    cfg["quick_gelu"] = True
    path = tmp_path_factory.mktemp("configs") / f"{TINY}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TINY


def paper_checkpoint(name: str, num_classes: int, seed: int = 0):
    """(paper-layout state dict, the CLIP it came from, head weight, head bias).

    The layout of model-soups' released files: ModelWrapper(model=CLIP without its text
    `transformer`, classification_head=nn.Linear).state_dict().
    """
    torch.manual_seed(seed)
    clip = build_clip(name)
    dim = clip.visual.output_dim
    weight, bias = torch.randn(num_classes, dim), torch.randn(num_classes)
    state = {f"model.{k}": v.clone() for k, v in clip.state_dict().items()
             if not k.startswith("transformer.")}
    state["classification_head.weight"] = weight
    state["classification_head.bias"] = bias
    return state, clip, weight, bias


def imported_classifier(path, name, num_classes):
    model = classifier_skeleton(name, num_classes)
    model.load_state_dict(load_state_dict(path, verify=True), strict=True)
    return model.eval()


def test_paper_layout_imports_with_identical_logits(tiny_name, tmp_path):
    state, clip, weight, bias = paper_checkpoint(tiny_name, NUM_CLASSES)
    src = tmp_path / "model_3.pt"
    torch.save(state, src)
    [done] = import_checkpoints([src], tmp_path / "ingredients", Target(tiny_name))
    assert done.status == "imported" and done.name == "model_3"

    manifest = read_manifest(done.path)
    assert manifest["kind"] == "ingredient" and manifest["imported"] is True
    assert manifest["source"] == str(src.absolute()) and manifest["source_format"] == "paper"
    assert len(manifest["source_sha256"]) == 64 and manifest["model_name"] == tiny_name
    assert manifest["num_classes"] == NUM_CLASSES
    assert "model.token_embedding.weight" in manifest["dropped_keys"]
    assert "cast_to_float32" not in manifest

    images = torch.randn(4, 3, 32, 32)
    model = imported_classifier(done.path, tiny_name, NUM_CLASSES)
    by_hand = classifier_from_clip(clip, weight)
    with torch.no_grad():
        by_hand.head.bias.copy_(bias)
        # The paper's forward: ModelWrapper(normalize=True) = head(encode_image / ||.||).
        paper = F.linear(F.normalize(clip.encode_image(images), dim=-1), weight, bias)
        assert torch.equal(model(images), by_hand.eval()(images))
        assert torch.allclose(model(images), paper, atol=1e-6)


def test_imported_ingredients_are_listed_with_their_kind(tiny_name, tmp_path):
    state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES)
    torch.save(state, tmp_path / "model_1.pt")
    torch.save(state, tmp_path / "model_0.pt")
    root = tmp_path / "ingredients"
    import_checkpoints([tmp_path / "model_1.pt"], root, Target(tiny_name),
                       zeroshot=tmp_path / "model_0.pt")
    # What pipeline.Run.models() enumerates: complete ingredient dirs and their manifest kind.
    kinds = {p.name: read_manifest(p)["kind"] for p in list_ingredients(root)}
    assert kinds == {"model_1": "ingredient", "zeroshot": "zeroshot"}
    assert read_manifest(root / "zeroshot")["preprocess"]["image_size"] == 32


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2), "payload": Evil()}, src)
    with pytest.raises(CheckpointImportError, match="refused") as err:
        read_checkpoint(src)
    assert str(src) in str(err.value)
    with pytest.raises(CheckpointImportError, match="refused"):
        import_checkpoints([src], tmp_path / "ingredients", Target("raysoup-tiny-vit"))
    assert not marker.exists()
    assert list_ingredients(tmp_path / "ingredients") == []


def test_cli_refuses_malicious_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, src)
    rc = main(["import", str(src), "--config", "experiments/tiny.yaml",
               "--workdir", str(tmp_path / "w")])
    assert rc == 2 and not marker.exists()  # bad input: exit 2, as for a bad config
    assert str(src.absolute()) in capsys.readouterr().err


def test_wrong_shape_and_missing_tensor_name_tensor_and_file(tiny_name, tmp_path):
    state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES)
    bad = dict(state)
    bad["model.visual.proj"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(CheckpointImportError, match=r"shape\.pt: tensor visual\.proj has shape"):
        import_checkpoints([tmp_path / "shape.pt"], tmp_path / "i", Target(tiny_name))
    missing = {k: v for k, v in state.items() if k != "model.visual.ln_post.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointImportError,
                       match=r"missing\.pt: tensor visual\.ln_post\.weight is missing"):
        import_checkpoints([tmp_path / "missing.pt"], tmp_path / "i", Target(tiny_name))
    with pytest.raises(CheckpointImportError, match=r"head\.weight has 5 classes.*has 7"):
        torch.save(state, tmp_path / "ok.pt")
        import_checkpoints([tmp_path / "ok.pt"], tmp_path / "i", Target(tiny_name, 7))
    assert list_ingredients(tmp_path / "i") == []


def test_directory_import_names_are_deterministic_and_reimport_skips(tiny_name, tmp_path):
    src = tmp_path / "release"
    src.mkdir()
    for i in (10, 2, 0):
        state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES, seed=i)
        torch.save(state, src / f"model_{i}.pt")
    (src / "notes.txt").write_text("not a checkpoint")
    root = tmp_path / "ingredients"
    done = import_checkpoints([src], root, Target(tiny_name), prefix="paper")
    assert [d.name for d in done] == ["paper-model_0", "paper-model_2", "paper-model_10"]
    assert {d.status for d in done} == {"imported"}
    before = {p.name: read_manifest(p)["sha256"] for p in list_ingredients(root)}

    again = import_checkpoints([src], root, Target(tiny_name), prefix="paper")
    assert [d.status for d in again] == ["skipped"] * 3
    assert {p.name: read_manifest(p)["sha256"] for p in list_ingredients(root)} == before

    # Same name, other contents: an error, never a silent overwrite.
    state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES, seed=99)
    torch.save(state, src / "model_2.pt")
    with pytest.raises(CheckpointImportError, match="paper-model_2 already exists"):
        import_checkpoints([src], root, Target(tiny_name), prefix="paper")


def test_fp16_is_cast_and_recorded(tiny_name, tmp_path):
    state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES)
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "half.pt")
    [done] = import_checkpoints([tmp_path / "half.pt"], tmp_path / "i", Target(tiny_name))
    manifest = read_manifest(done.path)
    assert set(manifest["cast_to_float32"]) == {"float16"}
    assert {t["dtype"] for t in manifest["tensors"].values()} == {"float32"}


def test_classifier_state_dict_and_safetensors_and_format_checks(tmp_path):
    from safetensors.torch import save_file

    name = "raysoup-tiny-rn"
    model = classifier_skeleton(name, NUM_CLASSES)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "a.pth")
    save_file(state, str(tmp_path / "b.safetensors"))
    done = import_checkpoints([tmp_path / "a.pth", tmp_path / "b.safetensors"], tmp_path / "i",
                              Target(name), fmt="state_dict")
    assert [d.name for d in done] == ["a", "b"]
    assert all(read_manifest(d.path)["source_format"] == "state_dict" for d in done)
    assert torch.equal(load_state_dict(done[1].path)["head.weight"], state["head.weight"])
    with pytest.raises(CheckpointImportError, match="expects the paper key layout"):
        import_checkpoints([tmp_path / "a.pth"], tmp_path / "j", Target(name), fmt="paper")
    with pytest.raises(CheckpointImportError, match="needs a .safetensors file"):
        import_checkpoints([tmp_path / "a.pth"], tmp_path / "j", Target(name), fmt="safetensors")
    # The paper's layout is OpenAI CLIP: importing it into a GELU model would change its outputs.
    paper = {f"model.{k}": v for k, v in state.items() if k.startswith("visual.")}
    paper |= {"classification_head.weight": state["head.weight"],
              "classification_head.bias": state["head.bias"]}
    torch.save(paper, tmp_path / "p.pt")
    with pytest.raises(CheckpointImportError, match="QuickGELU"):
        import_checkpoints([tmp_path / "p.pt"], tmp_path / "j", Target(name))


def test_clip_without_head_and_name_clashes_are_clear_errors(tmp_path):
    clip = build_clip("raysoup-tiny-vit")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    with pytest.raises(CheckpointImportError, match="without a classification head.*pretrained"):
        import_checkpoints([tmp_path / "clip.pt"], tmp_path / "i", Target("raysoup-tiny-vit"))
    torch.save({}, tmp_path / "x.pt")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointImportError, match="would both become ingredient 'x'"):
        import_checkpoints([tmp_path / "x.pt", tmp_path / "x.safetensors"], tmp_path / "i",
                           Target("raysoup-tiny-vit"))
    with pytest.raises(CheckpointImportError, match="no such file"):
        import_checkpoints([tmp_path / "nope.pt"], tmp_path / "i", Target("raysoup-tiny-vit"))


def test_cli_import_state_dict_into_the_tiny_experiment(tmp_path, capsys):
    model = classifier_skeleton("raysoup-tiny-rn", 10)  # tiny.yaml: 10 world classes
    torch.save(model.state_dict(), tmp_path / "ft.pt")
    argv = ["import", str(tmp_path / "ft.pt"), "--config", "experiments/tiny.yaml",
            "--workdir", str(tmp_path / "w")]
    assert main(argv) == 0
    assert "imported" in capsys.readouterr().out
    assert [p.name for p in list_ingredients(tmp_path / "w" / "ingredients")] == ["ft"]
    assert main(argv) == 0 and "skipped" in capsys.readouterr().out
    # A head for another class count does not fit the experiment.
    torch.save(classifier_skeleton("raysoup-tiny-rn", 3).state_dict(), tmp_path / "c3.pt")
    assert main(["import", str(tmp_path / "c3.pt"), "--config", "experiments/tiny.yaml",
                 "--workdir", str(tmp_path / "w")]) == 2
    assert "3 classes, the experiment has 10" in capsys.readouterr().err


def test_cli_formats_and_preprocess_match_the_model(tiny_name):
    from raysoup.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices["import"]
    assert next(a for a in sub._actions if a.dest == "format").choices == FORMATS
    size, mean, std = image_stats(build_clip(tiny_name))
    assert preprocess_of(tiny_name) == {"image_size": size, "mean": list(mean), "std": list(std)}


@pytest.mark.slow
def test_real_vit_b32_layout(tmp_path):
    """The released files' exact layout: OpenAI CLIP ViT-B/32 keys under model.*, 1000 classes."""
    state, clip, weight, bias = paper_checkpoint("ViT-B-32-quickgelu", 1000)
    assert not any(k.startswith("model.transformer.") for k in state)
    assert {"model.visual.conv1.weight", "model.visual.proj", "model.logit_scale",
            "model.token_embedding.weight", "model.ln_final.weight"} <= set(state)
    torch.save(state, tmp_path / "model_5.pt")
    del state
    [done] = import_checkpoints([tmp_path / "model_5.pt"], tmp_path / "i",
                                Target("ViT-B-32-quickgelu", 1000))
    manifest = read_manifest(done.path)
    assert manifest["preprocess"]["image_size"] == 224
    assert sorted(manifest["dropped_keys"]) == [
        "model.ln_final.bias", "model.ln_final.weight", "model.logit_scale",
        "model.positional_embedding", "model.text_projection", "model.token_embedding.weight"]
    model = imported_classifier(done.path, "ViT-B-32-quickgelu", 1000)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        paper = F.linear(F.normalize(clip.encode_image(images), dim=-1), weight, bias)
        assert torch.allclose(model(images), paper, atol=1e-5)


@pytest.mark.parametrize("file", ["trial-005.pt", "trial-5.safetensors", "trial-abc.pt"])
def test_imported_checkpoints_are_never_trials(tmp_path, file):
    """A file named like a sweep trial is refused (the error says how to import it), nothing
    written; imported ingredients, even ones named trial-NNN by an older raysoup, are not
    counted as finished trials (nor offered to the anytime soup as one)."""
    from safetensors.torch import save_file

    from raysoup.checkpoints import write_ingredient
    from raysoup.orchestration.trial_records import finished_trials

    state = classifier_skeleton("raysoup-tiny-rn", 10).state_dict()
    src = tmp_path / file
    if file.endswith(".pt"):
        torch.save(state, src)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(src))
    root = tmp_path / "w" / "ingredients"
    target = Target("raysoup-tiny-rn", 10)
    stem = src.name.split(".")[0]
    with pytest.raises(CheckpointImportError, match=rf"{file}: the name '{stem}' is reserved "
                                                    rf"for the sweep's trials.*--prefix"):
        import_checkpoints([src], root, target)
    assert not root.exists() or list_ingredients(root) == []
    assert [i.name for i in import_checkpoints([src], root, target, prefix="imp")] == \
        [f"imp-{stem}"]
    # an imported ingredient under a trial's name, from before names were checked
    write_ingredient(root / "trial-007", state, {"kind": "ingredient", "imported": True})
    write_ingredient(root / "trial-001", state, {"kind": "ingredient"})  # the sweep's own
    assert finished_trials(tmp_path / "w") == ["trial-001"]
