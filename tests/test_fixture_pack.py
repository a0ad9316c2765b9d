"""The ImageNet-shaped fixture (raysoup/fixture.py) and `raysoup data pack` (data/pack.py): real
files, the real Parquet reader, moto's real S3 server."""

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysoup.config import load_experiment
from raysoup.data.images import DataError
from raysoup.data.pack import COMPLETE, check_image, pack_imagefolder
from raysoup.data.parquet import read_parquet_split
from raysoup.fixture import TINY_MODEL, fixture_overrides, wnid, write_imagenet_fixture

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "clip_vit_b32_imagenet.yaml"


def dirs(path) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir() if p.is_dir())


def files(path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- fixture


def test_fixture_has_the_paper_layout(imagenet_fixture):
    fx = imagenet_fixture
    train = dirs(fx["train"])
    assert len(train) == 1000 and train == [wnid(i) for i in range(1000)]
    assert all(len(list((Path(fx["train"]) / d).iterdir())) == 2 for d in train)
    assert dirs(fx["val"]) == train and dirs(fx["imagenet_sketch"]) == train
    assert dirs(fx["imagenet_v2"]) == sorted(str(i) for i in range(1000))
    for subset in ("imagenet_r", "imagenet_a"):
        covered = dirs(fx[subset])
        assert len(covered) == 200 and set(covered) <= set(train)
    assert dirs(fx["imagenet_r"]) != dirs(fx["imagenet_a"])
    class_map = json.loads(Path(fx["objectnet_class_map"]).read_text())
    objectnet = dirs(fx["objectnet"])
    assert set(class_map) < set(objectnet)  # some ObjectNet classes are not ImageNet classes
    assert all(set(v) <= set(train) and v for v in class_map.values())
    assert any(len(v) > 1 for v in class_map.values())  # many-to-one
    everything = files(fx["root"])
    assert sum(f.stat().st_size for f in everything) < 80 * 2**20
    sizes = {Image.open(f).size for f in files(fx["train"])[:200]}
    assert len(sizes) > 100 and all(40 <= min(s) and max(s) <= 200 for s in sizes)
    assert len({round(w / h, 1) for w, h in sizes}) > 10  # varied aspect ratios


def test_fixture_content_depends_on_the_class(imagenet_fixture):
    def mean_colour(d):
        return np.mean([np.asarray(Image.open(f).convert("RGB"), np.float32).mean((0, 1))
                        for f in files(Path(imagenet_fixture["train"]) / d)], axis=0)

    same = np.abs(mean_colour(wnid(0)) - mean_colour(wnid(0))).max()
    across = [np.abs(mean_colour(wnid(0)) - mean_colour(wnid(i))).max() for i in (1, 2, 3)]
    assert same == 0 and min(across) > 10  # clearly different colours, 0..255 scale


def test_fixture_is_deterministic_and_reused(tmp_path):
    a = write_imagenet_fixture(tmp_path / "a", classes=12, weights=False)
    b = write_imagenet_fixture(tmp_path / "b", classes=12, weights=False)
    c = write_imagenet_fixture(tmp_path / "c", classes=12, weights=False, seed=1)
    for role in ("train", "imagenet_v2", "objectnet"):
        fa, fb, fc = files(a[role]), files(b[role]), files(c[role])
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
        assert [f.read_bytes() for f in fa] != [f.read_bytes() for f in fc]
    assert Path(a["objectnet_class_map"]).read_text() == Path(b["objectnet_class_map"]).read_text()
    # A complete fixture of the same parameters is kept; other parameters rebuild it.
    stamp = (Path(a["train"]) / wnid(0)).stat().st_mtime_ns
    write_imagenet_fixture(tmp_path / "a", classes=12, weights=False)
    assert (Path(a["train"]) / wnid(0)).stat().st_mtime_ns == stamp
    write_imagenet_fixture(tmp_path / "a", classes=10, weights=False)
    assert len(dirs(a["train"])) == 10 and len(dirs(a["imagenet_v2"])) == 10


def test_fixture_weights_load_as_model_pretrained(imagenet_fixture):
    import torch

    from raysoup.config import ModelCfg
    from raysoup.models.factory import get_tokenizer, image_stats, load_clip

    cfg = ModelCfg(name=TINY_MODEL, pretrained=imagenet_fixture["weights"])
    clip = load_clip(cfg)
    assert image_stats(clip)[0] == 224
    tokens = get_tokenizer(cfg)(["a photo of a tench."])  # CLIP's BPE vocabulary, offline
    assert tokens.shape == (1, 32) and int(tokens.max()) == 49407  # end-of-text token
    with torch.no_grad():
        feats = clip.encode_image(torch.zeros(2, 3, 224, 224))
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()
    # Seeded: the same seed gives the same weights.
    from safetensors.torch import load_file

    from raysoup.fixture import write_tiny_weights

    again = load_file(str(write_tiny_weights(Path(imagenet_fixture["root"]) / "again.st", 0)))
    first = load_file(imagenet_fixture["weights"])
    assert all(torch.equal(first[k], again[k]) for k in first)
    Path(imagenet_fixture["root"], "again.st").unlink()


def test_overrides_run_the_paper_config_on_the_fixture(imagenet_fixture, tmp_path, capsys):
    from raysoup.cli import main

    sets = fixture_overrides(imagenet_fixture)
    cfg = load_experiment(PAPER, sets)
    assert cfg.model.name == TINY_MODEL and cfg.sweep.num_samples == 2
    assert cfg.data.classnames == "imagenet" and cfg.data.templates == "openai_imagenet"
    assert cfg.data.shifts["objectnet"].class_map == imagenet_fixture["objectnet_class_map"]
    args = ["run", str(PAPER), "--dry-run", "--workdir", str(tmp_path / "w")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "does not exist" not in out and "MISSING" not in out, out


def test_cli_fixture_prints_the_command(tmp_path, capsys):
    from raysoup.cli import main

    assert main(["data", "fixture", str(tmp_path / "fx"), "--classes", "12"]) == 0
    out = capsys.readouterr().out
    assert "raysoup run experiments/clip_vit_b32_imagenet.yaml" in out
    assert f"--set model.pretrained={tmp_path}/fx/tiny-vit224.safetensors" in out
    assert (tmp_path / "fx" / "tiny-vit224.safetensors").is_file()


# ---------------------------------------------------------------- pack


def test_pack_round_trip(imagenet_fixture, tmp_path):
    src, out = imagenet_fixture["train"], tmp_path / "train.parquet"
    r = pack_imagefolder(src, str(out), rows_per_group=100, rows_per_file=900, progress=False)
    assert r.rows == 2000 and list(r.files) == ["part-00000.parquet", "part-00001.parquet",
                                               "part-00002.parquet"]
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE, *r.files]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    marker = json.loads((out / COMPLETE).read_text())
    assert marker["rows"] == 2000 and marker["files"] == {
        "part-00000.parquet": 900, "part-00001.parquet": 900, "part-00002.parquet": 200}
    meta = pq.ParquetFile(out / "part-00000.parquet").metadata
    assert meta.num_row_groups == 9 and meta.row_group(0).num_rows == 100
    assert meta.row_group(0).column(1).compression == "UNCOMPRESSED"  # image bytes
    assert meta.row_group(0).column(1).statistics is None  # no image bytes in the footer
    data = read_parquet_split(out)  # raysoup's own reader
    assert len(data) == 2000 and data.classnames == dirs(src) and data.class_subset is None
    assert data.keys[:2] == [f"{wnid(0)}/{wnid(0)}_00000.JPEG", f"{wnid(0)}/{wnid(0)}_00001.JPEG"]
    for i in (0, 1, 1001, 1999):
        d, name = data.keys[i].split("/")
        assert data.images[i] == (Path(src) / d / name).read_bytes()  # bytes unchanged
        assert data.labels[i] == dirs(src).index(d)
    assert data.captions is None


def test_pack_holds_one_row_group(imagenet_fixture, tmp_path):
    # The train folder holds 12+ MiB of JPEGs; 16-image row groups need a few hundred KiB.
    # A first pack imports what pyarrow loads lazily (pandas) and grows the interpreter's
    # table of interned strings (path parts) once: neither is the data's cost.
    pack_imagefolder(imagenet_fixture["train"], str(tmp_path / "w"), progress=False)
    tracemalloc.start()
    try:
        pack_imagefolder(imagenet_fixture["train"], str(tmp_path / "o"), rows_per_group=16,
                         threads=4, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(f.stat().st_size for f in files(imagenet_fixture["train"]))
    assert total > 10 * 2**20 and peak < 2 * 2**20, (total, peak)


def test_pack_shift_sets_into_the_train_label_space(imagenet_fixture, tmp_path):
    fx = imagenet_fixture
    v2 = pack_imagefolder(fx["imagenet_v2"], str(tmp_path / "v2"), classes_from=fx["train"],
                          classnames="imagenet", progress=False)
    data = read_parquet_split(tmp_path / "v2")
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert v2.rows == 1000 and data.classnames == list(IMAGENET_CLASSNAMES)
    # Dirs named by class index keep that index as the label (not their string-sorted rank).
    assert all(int(k.split("/")[0]) == label for k, label in zip(data.keys, data.labels))
    pack_imagefolder(fx["imagenet_r"], str(tmp_path / "r"), classes_from=fx["train"],
                     progress=False)
    r = read_parquet_split(tmp_path / "r")
    train = dirs(fx["train"])
    assert r.classnames == train and r.class_subset == sorted(
        train.index(d) for d in dirs(fx["imagenet_r"]))
    with pytest.raises(DataError, match="objectnet.*not class directories of --classes-from"):
        pack_imagefolder(fx["objectnet"], str(tmp_path / "on"), classes_from=fx["train"],
                         progress=False)


def small_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20 + k, 30, 3), np.uint8)).save(buf, "JPEG")
            (root / c / f"{k}.jpg").write_bytes(buf.getvalue())
    return root


def test_pack_bad_input_names_the_path(tmp_path):
    src = small_folder(tmp_path / "src")
    (src / "empty").mkdir()
    with pytest.raises(DataError, match=f"class folder.*without images.*{src}/empty"):
        pack_imagefolder(str(src), str(tmp_path / "o"), progress=False)
    (src / "empty").rmdir()
    good = (src / "dog" / "1.jpg").read_bytes()
    (src / "dog" / "1.jpg").write_bytes(good[: len(good) // 2])  # a download cut short
    (src / "cat" / "2.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{src}/cat/2.jpg: not a readable image"):
        pack_imagefolder(str(src), str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir removed
    r = pack_imagefolder(str(src), str(tmp_path / "o"), skip_corrupt=True, progress=False)
    assert r.rows == 4 and r.skipped == ["cat/2.jpg", "dog/1.jpg"]
    assert json.loads((tmp_path / "o" / COMPLETE).read_text())["skipped"] == 2
    # An existing OUT is never replaced by accident.
    with pytest.raises(DataError, match=f"{tmp_path}/o exists.*--overwrite"):
        pack_imagefolder(str(src), str(tmp_path / "o"), skip_corrupt=True, progress=False)
    with pytest.raises(DataError, match="image folder not found|not found"):
        pack_imagefolder(str(tmp_path / "nope"), str(tmp_path / "o2"), progress=False)


def test_check_image():
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    jpeg = buf.getvalue()
    assert check_image(jpeg) is None and check_image(jpeg + b"\0" * 10) is None
    # Cut inside the image data: the header parses, the end marker is missing.
    assert check_image(jpeg[:-2000]) == "truncated JPEG (no end-of-image marker)"
    assert check_image(b"GIF89a garbage") is not None
    assert check_image(jpeg[:-2000], "decode") is not None


def test_pack_s3_to_s3(s3, tmp_path):
    src = small_folder(tmp_path / "src", classes=("a", "b", "c"), per_class=4)
    for f in files(src):
        s3.put(f"in/{f.parent.name}/{f.name}", f.read_bytes())
    s3.put("in/b/notes.txt", "not an image: ignored by suffix")
    out = s3.uri("packed")
    r = pack_imagefolder(s3.uri("in"), out, rows_per_group=3, rows_per_file=5, progress=False)
    assert r.rows == 12 and len(r.files) == 3
    assert s3.files("packed") == ["packed/_COMPLETE", "packed/part-00000.parquet",
                                  "packed/part-00001.parquet", "packed/part-00002.parquet"]
    table = pq.read_table(io.BytesIO(s3.get("packed/part-00001.parquet")))
    assert table.column("key").to_pylist() == ["b/1.jpg", "b/2.jpg", "b/3.jpg", "c/0.jpg",
                                               "c/1.jpg"]
    assert table.column("label").to_pylist() == [1, 1, 1, 2, 2]
    assert table.column("image").to_pylist()[3] == (src / "c" / "0.jpg").read_bytes()
    assert json.loads(s3.get("packed/_COMPLETE"))["rows"] == 12
    with pytest.raises(DataError, match=f"{out} exists"):
        pack_imagefolder(s3.uri("in"), out, progress=False)
    # Overwrite with fewer, larger files: the stale shard goes, the marker is rewritten last.
    r = pack_imagefolder(s3.uri("in"), out, rows_per_file=100, overwrite=True, progress=False)
    assert s3.files("packed") == ["packed/_COMPLETE", "packed/part-00000.parquet"]
    assert json.loads(s3.get("packed/_COMPLETE"))["files"] == {"part-00000.parquet": 12}


def test_cli_pack(tmp_path, capsys):
    from raysoup.cli import main

    src = small_folder(tmp_path / "src")
    assert main(["data", "pack", str(src), str(tmp_path / "o"), "--rows-per-group", "2"]) == 0
    assert "packed 6 images" in capsys.readouterr().out
    assert main(["data", "pack", str(src), str(tmp_path / "o")]) == 1
    assert "exists" in capsys.readouterr().err


def test_pack_overwrite_moves_a_users_directory_aside(tmp_path, caplog):
    """--overwrite replaces an earlier pack output, but a directory holding anything else is
    moved aside as .old-* (and said so), never deleted."""
    src = small_folder(tmp_path / "src")
    out = tmp_path / "o"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.txt").write_text("years of work")
    with caplog.at_level("WARNING", logger="raysoup"):
        pack_imagefolder(str(src), str(out), overwrite=True, progress=False)
    old = [p for p in tmp_path.iterdir() if p.name.startswith(".old-o-")]
    assert len(old) == 1 and (old[0] / "notes" / "thesis.txt").read_text() == "years of work"
    assert str(old[0]) in caplog.text and (out / COMPLETE).is_file()
    pack_imagefolder(str(src), str(out), overwrite=True, progress=False)  # its own: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == [old[0].name, "o", "src"]
