"""Data layer: the synthetic world, Parquet and ImageFolder readers, the held-out split, sources."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysoup.config import DataCfg, SplitSource, WorldCfg
from raysoup.data import (
    DataError,
    LabeledImages,
    generate_world,
    heldout_mask,
    load_splits,
    normalize_words,
    read_imagefolder,
    read_parquet_split,
    split_heldout,
    vocabulary,
    world,
    write_parquet_split,
)
from raysoup.data.transforms import preprocess_eval

SMALL = WorldCfg(num_classes=4, image_size=32, train_per_class=12, test_per_class=5,
                 shift_per_class=5, seed=3)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, generate_world(SMALL, root, progress=False)


def _files_digest(split_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(split_dir.glob("*.parquet"))}


# ---------------------------------------------------------------- world


def test_world_is_deterministic(small_world, tmp_path):
    _, paths = small_world
    again = generate_world(SMALL, tmp_path / "again", progress=False)
    assert set(paths) == {"train", "test", *world.SHIFTS}
    for split in paths:
        a, b = read_parquet_split(paths[split]), read_parquet_split(again[split])
        assert a.keys == b.keys and a.captions == b.captions
        assert a.images.read(range(len(a))) == b.images.read(range(len(b)))
        assert np.array_equal(a.labels, b.labels)
    # A different seed gives different images.
    other = world.build_split(SMALL.model_copy(update={"seed": 4}), "test")
    assert other.images != read_parquet_split(paths["test"]).images


# sha256 over every split of SMALL (in SPLITS + SHIFTS order) of: decoded pixels, the captions
# joined by newlines, the int64 labels. Pins the generator's output across machines and
# refactors; a deliberate change to the world must update it.
GOLDEN_SMALL_WORLD_SHA256 = "ccdd69eaf5f2ca976ef91fb2218786b428a4220e95e6b0a477def085fbbea309"


def test_world_pixels_match_golden_digest(small_world):
    _, paths = small_world
    h = hashlib.sha256()
    for split in world.SPLITS + world.SHIFTS:
        data = read_parquet_split(paths[split])
        h.update(data.decode_all().tobytes())
        h.update("\n".join(data.captions).encode())
        h.update(data.labels.tobytes())
    assert h.hexdigest() == GOLDEN_SMALL_WORLD_SHA256


def test_world_splits_sizes_labels_and_subset(small_world):
    _, paths = small_world
    train = read_parquet_split(paths["train"])
    assert len(train) == 4 * 12 and train.classnames == world.CLASSNAMES[:4]
    assert np.bincount(train.labels).tolist() == [12] * 4
    assert train.keys[:2] == ["train/000000", "train/000001"]
    assert train.decode_all().shape == (48, 32, 32, 3)
    sketch = read_parquet_split(paths["sketch"])
    assert sketch.class_subset == [0, 1] and set(sketch.labels.tolist()) == {0, 1}
    assert sketch.classnames == train.classnames  # full label space, subset covered
    for split in ("test", "background", "inverted", "blur_noise", "geometric"):
        data = read_parquet_split(paths[split])
        assert data.class_subset is None and len(data) == 4 * 5


def test_web_corpus_mixes_every_style_in_samples_of_its_own():
    """The pre-training corpus (model.pretrain.corpus: web): photos and every shift's style,
    each caption naming its shape in the vocabulary, no image shared with a task split."""
    cfg = SMALL
    web = world.web_corpus(cfg, per_class=40)
    assert len(web) == 4 * 40 and np.bincount(web.labels).tolist() == [40] * 4
    words = [set(normalize_words(c)) for c in web.captions]
    vocab = set(vocabulary(cfg))
    for caption, w, label in zip(web.captions, words, web.labels):
        assert web.classnames[label] in w and w <= vocab, caption
    # the styles the task's train split never shows, named in the captions
    for styles in ({"sketch"}, {"inverted"}, {"greyscale"}, {"blurry", "noisy"},
                   set(world.SHIFT_TEXTURES)):
        assert any(styles & w for w in words), styles
    # the mixture's share of photos of the train kind (0.5), within sampling noise
    photos = sum(not ({"sketch", "drawing", "inverted", "greyscale", "blurry", "noisy"} & w)
                 for w in words)
    assert 0.3 < photos / len(web) < 0.75
    task = set()
    for split in ("train", "test", *world.SHIFTS):
        data = world.build_split(cfg, split)
        task.update(data.images.read(range(len(data))))
    assert not task & set(web.images.read(range(len(web))))
    # the same corpus for any size of the task's splits; the photo share is a knob
    again = world.web_corpus(cfg.model_copy(update={"train_per_class": 99}), per_class=40)
    assert again.captions == web.captions
    assert again.images.read(range(len(again))) == web.images.read(range(len(web)))
    photos_only = world.web_corpus(cfg, per_class=40, photo_share=1.0)
    assert not any({"sketch", "inverted", "greyscale", "blurry"} & set(normalize_words(c))
                   for c in photos_only.captions)


def test_world_captions_name_the_shape_and_use_the_vocabulary(small_world):
    _, paths = small_world
    vocab = set(vocabulary(SMALL))
    assert vocabulary(SMALL) == sorted(vocab)
    for split, path in paths.items():
        data = read_parquet_split(path)
        for caption, label in zip(data.captions, data.labels):
            words = normalize_words(caption)
            assert data.classnames[label] in words, (split, caption)
            assert set(words) <= vocab, (split, caption)
    for template in world.TEMPLATES:
        assert set(normalize_words(template.format("circle"))) <= vocab
    assert normalize_words("A photo, of a Star.") == ["a", "photo", "of", "a", "star"]


def test_shapes_differ_from_each_other():
    """Every class renders to a distinct silhouette at 32x32 (same pose, same colours)."""
    from raysoup.data.render import Scene, render

    rng = np.random.Generator(np.random.PCG64(0))
    masks = []
    for shape in world.CLASSNAMES:
        scene = Scene(shape, (255, 255, 255), ((0, 0, 0), (0, 0, 0)), "plain", 11.0, (16, 16), 0)
        masks.append(render(scene, 32, rng)[..., 0].astype(float) / 255)
    for i in range(len(masks)):
        assert masks[i].sum() > 60, world.CLASSNAMES[i]
        for j in range(i):
            diff = np.abs(masks[i] - masks[j]).sum()
            assert diff > 15, (world.CLASSNAMES[i], world.CLASSNAMES[j], diff)


def test_generate_world_is_idempotent_and_rebuilds_for_a_new_cfg(small_world, tmp_path):
    root, paths = small_world
    before = _files_digest(paths["train"])
    mtime = (paths["train"] / "_COMPLETE").stat().st_mtime_ns
    generate_world(SMALL, root, progress=False)
    assert (paths["train"] / "_COMPLETE").stat().st_mtime_ns == mtime
    assert _files_digest(paths["train"]) == before
    # A split without _COMPLETE (e.g. a crash) is rebuilt; no temp dirs are left behind.
    cfg = SMALL.model_copy(update={"train_per_class": 10, "test_per_class": 5})
    generate_world(cfg, tmp_path, progress=False)
    (tmp_path / "test" / "_COMPLETE").unlink()
    generate_world(cfg, tmp_path, progress=False)
    assert (tmp_path / "test" / "_COMPLETE").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    bigger = cfg.model_copy(update={"train_per_class": 11})
    generate_world(bigger, tmp_path, progress=False)
    assert len(read_parquet_split(tmp_path / "train")) == 44


# ---------------------------------------------------------------- parquet


def _tiny(n=5, classes=("a", "b", "c"), subset=None, captions=True):
    imgs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40 % 256, 0, 0)).save(buf, format="PNG")
        imgs.append(buf.getvalue())
    return LabeledImages([f"s/{i}" for i in range(n)], imgs, np.arange(n) % len(classes),
                         list(classes), [f"cap {i}" for i in range(n)] if captions else None,
                         subset)


def test_parquet_round_trip_with_shards_and_class_subset(tmp_path):
    data = _tiny(7, subset=[0, 2])
    files = write_parquet_split(tmp_path / "split", data, rows_per_shard=3)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet",
                                       "part-00002.parquet"]
    back = read_parquet_split(tmp_path / "split")
    assert back.keys == data.keys
    assert back.images.read(range(len(back))) == data.images.read(range(len(data)))
    assert back.labels.dtype == np.int64 and np.array_equal(back.labels, data.labels)
    assert back.classnames == ["a", "b", "c"] and back.class_subset == [0, 2]
    assert back.captions == data.captions
    assert np.array_equal(back.decode_all(), data.decode_all())
    meta = pq.read_schema(files[0]).metadata
    assert json.loads(meta[b"raysoup.class_subset"]) == [0, 2]
    # One file can be read alone; no captions -> None; no subset -> null in the metadata.
    write_parquet_split(tmp_path / "nocap", _tiny(2, captions=False))
    one = read_parquet_split(tmp_path / "nocap" / "part-00000.parquet")
    assert one.captions is None and one.class_subset is None and len(one) == 2


def test_parquet_reads_hf_style_tables(tmp_path):
    """Real datasets: image struct{bytes, path}, ClassLabel names in HF metadata, no key column."""
    data = _tiny(3)
    (tmp_path / "files").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "files" / "x.png")
    images = [{"bytes": data.images[0], "path": None}, {"bytes": data.images[1], "path": "b.png"},
              {"bytes": None, "path": "files/x.png"}]
    hf = {"info": {"features": {"label": {"names": ["cat", "dog"], "_type": "ClassLabel"}}}}
    table = pa.table({"image": images, "label": pa.array([0, 1, 1], pa.int64())})
    table = table.replace_schema_metadata({b"huggingface": json.dumps(hf)})
    (tmp_path / "hf").mkdir()
    pq.write_table(table, tmp_path / "hf" / "train-00000-of-00001.parquet")
    got = read_parquet_split(tmp_path / "hf")
    assert got.classnames == ["cat", "dog"] and got.keys == ["hf/0", "hf/1", "hf/2"]
    assert got.images.read([0, 1]) == data.images.read([0, 1])
    # The relative path resolves against the parquet file's directory (read when needed).
    with pytest.raises(DataError, match="hf/files/x.png"):
        got.images.read([2])
    (tmp_path / "hf" / "files").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "hf" / "files" / "x.png")
    assert got.images.read([2]) == [(tmp_path / "hf" / "files" / "x.png").read_bytes()]
    assert got.decode(2).size == (4, 4)
    assert read_parquet_split(tmp_path / "hf", classnames=["c", "d"]).classnames == ["c", "d"]


def test_parquet_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        read_parquet_split(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.parquet files in .*empty"):
        read_parquet_split(tmp_path / "empty")
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: missing column\(s\) \['image'\]"):
        read_parquet_split(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "nonames.parquet")
    with pytest.raises(DataError, match="nonames.parquet: no class names"):
        read_parquet_split(tmp_path / "nonames.parquet")
    pq.write_table(pa.table({"image": [b"x"], "label": [5]}), tmp_path / "label.parquet")
    with pytest.raises(DataError, match="label.parquet: .*labels must lie in"):
        read_parquet_split(tmp_path / "label.parquet", classnames=["a", "b"])
    with pytest.raises(DataError, match="cannot decode image s/0"):
        LabeledImages(["s/0"], [b"not an image"], [0], ["a"]).decode(0)


# ---------------------------------------------------------------- held-out split

# sha256 of "\n".join(sorted held-out keys) for the default world's train keys
# ("train/000000" ... "train/019999", WorldCfg() = 10 classes x 2000) at fraction 0.02,
# computed once with heldout_mask; 422 keys, the first three train/000053, 000079, 000123.
GOLDEN_HELDOUT_SHA256 = "593c152b25036d060f99fd9856e1d7dfc6bcc57885ff43dd5fc1c0a97b57642e"


def test_heldout_split_golden_hash():
    cfg = WorldCfg()
    keys = [f"train/{i:06d}" for i in range(world.split_size(cfg, "train"))]
    mask = heldout_mask(keys, 0.02)
    members = sorted(k for k, m in zip(keys, mask) if m)
    assert len(members) == 422 and members[:3] == ["train/000053", "train/000079", "train/000123"]
    assert hashlib.sha256("\n".join(members).encode()).hexdigest() == GOLDEN_HELDOUT_SHA256
    # Membership depends on the key alone, not on order or the other keys.
    assert np.array_equal(heldout_mask(keys[::-1], 0.02)[::-1], mask)
    assert heldout_mask(keys, 0.0).sum() == 0 and heldout_mask(keys, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        heldout_mask(keys, 1.5)


def test_split_heldout_partitions_train():
    data = _tiny(200, classes=("a", "b"))
    train, heldout = split_heldout(data, 0.25)
    assert len(train) + len(heldout) == 200 and 25 < len(heldout) < 75
    assert not set(train.keys) & set(heldout.keys)
    assert heldout.captions == [data.captions[data.keys.index(k)] for k in heldout.keys]


# ---------------------------------------------------------------- image folders


def _folder(root, dirs, per_dir=2, size=(10, 6)):
    for d in dirs:
        (root / d).mkdir(parents=True)
        for i in range(per_dir):
            Image.new("RGB", size, (i * 50, 10, 200)).save(root / d / f"img{i}.png")
        (root / d / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_reads_layout(tmp_path):
    root = _folder(tmp_path / "train", ["n02", "n01", "n03"])
    data = read_imagefolder(root)
    assert data.classnames == ["n01", "n02", "n03"]  # dirs sorted
    assert data.keys[:2] == ["n01/img0.png", "n01/img1.png"] and len(data) == 6
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2] and data.class_subset is None
    assert data.decode(0).size == (10, 6) and data.decode(0).mode == "RGB"
    named = read_imagefolder(root, classnames=["goldfish", "shark", "ray"])
    assert named.classnames[1] == "shark"


def test_imagefolder_subset_maps_into_reference_space(tmp_path):
    shift = _folder(tmp_path / "shift", ["n03", "n01"])
    data = read_imagefolder(shift, classnames=["goldfish", "shark", "ray"],
                            class_dirs=["n01", "n02", "n03"])
    assert data.classnames == ["goldfish", "shark", "ray"]
    assert data.labels.tolist() == [0, 0, 2, 2] and data.class_subset == [0, 2]


def test_imagefolder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*missing"):
        read_imagefolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no class directories"):
        read_imagefolder(tmp_path / "empty")
    (tmp_path / "noimg" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match=r"noimg: 1 class folder\(s\) without images .*\['n01'\]"):
        read_imagefolder(tmp_path / "noimg")
    shift = _folder(tmp_path / "shift", ["n01", "zzz"])
    with pytest.raises(DataError, match=r"shift: class directories \['zzz'\] are not in"):
        read_imagefolder(shift, class_dirs=["n01", "n02"])


# ---------------------------------------------------------------- sources


def test_load_splits_from_world(small_world, tmp_path):
    root, _ = small_world
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "world").symlink_to(root)  # reuse the generated world
    splits = load_splits(DataCfg(world=SMALL, heldout_fraction=0.2, templates="world"), tmp_path,
                         progress=False)
    assert len(splits.train) + len(splits.heldout) == 48 and len(splits.heldout) > 0
    assert set(splits.shifts) == set(world.SHIFTS) and splits.classnames == world.CLASSNAMES[:4]
    assert splits.templates == world.TEMPLATES
    assert splits.shifts["sketch"].class_subset == [0, 1]


def test_load_splits_imagefolders_and_templates(tmp_path):
    _folder(tmp_path / "train", [f"n0{i}" for i in range(4)], per_dir=25)
    _folder(tmp_path / "test", [f"n0{i}" for i in range(4)], per_dir=1)
    _folder(tmp_path / "r", ["n03", "n01"], per_dir=1)
    cfg = DataCfg(
        train=SplitSource(format="imagefolder", path=str(tmp_path / "train")),
        test=SplitSource(format="imagefolder", path=str(tmp_path / "test")),
        shifts={"r": SplitSource(format="imagefolder", path=str(tmp_path / "r")),
                "r2": SplitSource(format="imagefolder", path=str(tmp_path / "test"),
                                  classes=["a", "b"])},
        classnames=["a", "b", "c", "d"], heldout_fraction=0.1,
        templates=["a {} here.", "one {}."])
    splits = load_splits(cfg, tmp_path)
    assert splits.classnames == ["a", "b", "c", "d"] and len(splits.test) == 4
    shift = splits.shifts["r"]
    assert shift.labels.tolist() == [1, 3] and shift.class_subset == [1, 3]
    assert splits.shifts["r2"].class_subset == [0, 1]
    assert splits.templates == ["a {} here.", "one {}."]
    # open_clip's lambdas become plain format strings (picklable, what the zero-shot head takes).
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from raysoup.data.sources import resolve_templates

    templates = resolve_templates("openai_imagenet")
    assert [t.format("dog") for t in templates] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]


def test_load_splits_parquet_shift_remapped_by_name(tmp_path):
    write_parquet_split(tmp_path / "train", _tiny(30, classes=("a", "b", "c")))
    write_parquet_split(tmp_path / "test", _tiny(3, classes=("a", "b", "c")))
    write_parquet_split(tmp_path / "shift", _tiny(4, classes=("c", "a")))
    cfg = DataCfg(train=SplitSource(format="parquet", path=str(tmp_path / "train")),
                  test=SplitSource(format="parquet", path=str(tmp_path / "test")),
                  shifts={"s": SplitSource(format="parquet", path=str(tmp_path / "shift"))},
                  heldout_fraction=0.2)
    shift = load_splits(cfg, tmp_path, progress=False).shifts["s"]
    assert shift.classnames == ["a", "b", "c"]
    assert shift.labels.tolist() == [2, 0, 2, 0] and shift.class_subset == [0, 2]
    write_parquet_split(tmp_path / "bad", _tiny(2, classes=("a", "zebra")))
    bad = cfg.model_copy(update={"shifts": {"s": SplitSource(format="parquet",
                                                             path=str(tmp_path / "bad"))}})
    with pytest.raises(DataError, match=r"s \(.*bad\): classes \['zebra'\]"):
        load_splits(bad, tmp_path, progress=False)


# ---------------------------------------------------------------- transforms


def test_preprocess_eval_and_train_augment(tmp_path):
    data = _tiny(3)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = preprocess_eval(data, 8, mean, std)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    raw = data.decode_all()[1].transpose(2, 0, 1) / 255.0
    expected = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(x[1], expected, rtol=1e-5, atol=1e-5)
    root = _folder(tmp_path / "f", ["a"], per_dir=1, size=(20, 10))
    assert preprocess_eval(read_imagefolder(root), 8, mean, std).shape == (1, 3, 8, 8)
    import torch

    from raysoup.train.augment import random_shift_flip, uint8_images
    from raysoup.train.batches import Augment, make_batch

    pixels = uint8_images(data, 8)
    assert pixels.shape == (3, 3, 8, 8) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[1], torch.from_numpy(data.decode_all()[1]).permute(2, 0, 1))
    assert uint8_images(read_imagefolder(root), 8).shape == (1, 3, 8, 8)  # resized on decode
    aug = make_batch(list(pixels.permute(0, 2, 3, 1).numpy()),
                     Augment(8, "shift_flip", randaug_n=2, randaug_m=9, mean=tuple(mean)), seed=0)
    assert aug.shape == pixels.shape and aug.dtype == torch.uint8
    noise = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    shifted = random_shift_flip(noise, torch.Generator().manual_seed(0), shift=2)
    assert shifted.shape == noise.shape and shifted.dtype == torch.float32
    assert not torch.equal(shifted, noise.float())  # some sample moved


def test_class_groups_objectnet_style(tmp_path):
    """A shift set whose classes each stand for a group of train classes (ObjectNet): labels
    index its own classes; unmapped dirs are skipped; a prediction counts if the chosen train
    class is in the label's group (= max logit per group)."""
    import json

    import torch

    from raysoup.evaluate.evaluator import count_correct

    _folder(tmp_path / "train", ["n00", "n01", "n02", "n03"], per_dir=20)
    _folder(tmp_path / "test", ["n00", "n01", "n02", "n03"], per_dir=1)
    _folder(tmp_path / "objnet", ["chair", "dog", "toaster"], per_dir=2)  # toaster: unmapped
    (tmp_path / "map.json").write_text(json.dumps({"dog": ["n01", "n03"], "chair": ["n00"]}))
    cfg = DataCfg(
        train=SplitSource(format="imagefolder", path=str(tmp_path / "train")),
        test=SplitSource(format="imagefolder", path=str(tmp_path / "test")),
        shifts={"objectnet": SplitSource(format="imagefolder", path=str(tmp_path / "objnet"),
                                         class_map=str(tmp_path / "map.json"))},
        heldout_fraction=0.1, templates=["a {}."])
    data = load_splits(cfg, tmp_path).shifts["objectnet"]
    assert data.classnames == ["chair", "dog"] and data.class_groups == [[0], [1, 3]]
    assert data.labels.tolist() == [0, 0, 1, 1] and len(data) == 4

    logits = torch.tensor([
        [5.0, 1.0, 9.0, 0.0],   # label chair: n02 (9) is outside every group -> n00 wins: right
        [0.0, 2.0, 0.0, 1.0],   # label chair: n01 (dog's group) wins: wrong
        [0.0, 1.0, 0.0, 3.0],   # label dog: n03 is in dog's group: right
        [4.0, 1.0, 0.0, 3.0],   # label dog: n00 (chair) wins: wrong
    ])
    groups = tuple(tuple(g) for g in data.class_groups)
    assert count_correct(logits, torch.tensor(data.labels), None, groups) == 2

    (tmp_path / "bad.json").write_text(json.dumps({"dog": ["n09"]}))
    bad = cfg.model_copy(update={"shifts": {"o": SplitSource(
        format="imagefolder", path=str(tmp_path / "objnet"), class_map=str(tmp_path / "bad.json"))}})
    with pytest.raises(DataError, match=r"bad.json: 'dog' maps to \['n09'\], not train classes"):
        load_splits(bad, tmp_path)
    with pytest.raises(ValueError, match="either classes .* or class_map"):
        SplitSource(format="imagefolder", path="x", classes=["a"], class_map="m.json")


def test_overlapping_class_map_groups_are_refused(tmp_path):
    from raysoup.data.imagefolder import read_mapped_imagefolder

    for d in ("cup", "mug"):
        (tmp_path / "on" / d).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "on" / d / "x.png")
    ok = read_mapped_imagefolder(tmp_path / "on", {"cup": ["n1"], "mug": ["n2", "n3"]},
                                 ["n1", "n2", "n3"])
    assert ok.class_groups == [[0], [1, 2]]
    with pytest.raises(DataError, match="'n2' is in the groups of both 'cup' and 'mug'"):
        read_mapped_imagefolder(tmp_path / "on", {"cup": ["n1", "n2"], "mug": ["n2", "n3"]},
                                ["n1", "n2", "n3"])


def test_decode_pixels_applies_pils_decompression_bomb_limit(monkeypatch):
    """The fast JPEG route (torchvision) refuses what PIL refuses: an image over
    2 x Image.MAX_IMAGE_PIXELS is a DataError naming it, before any pixel is decoded."""
    from raysoup.data.images import decode_image, decode_pixels

    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    normal = decode_pixels(jpeg, "ok")
    assert np.array_equal(normal, np.asarray(decode_image(jpeg, "ok")))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 // 2 - 1)
    with pytest.raises(DataError, match=r"cannot decode image shard-3/row-9: .*decompression"):
        decode_pixels(jpeg, "shard-3/row-9")
    with pytest.raises(DataError, match="shard-3/row-9"):
        decode_image(jpeg, "shard-3/row-9")  # the PIL route says the same
