"""`--dry-run` sizes the job from the sources: images per split (listings, Parquet footers, on
local disk and on S3), eval cache bytes, memory per trial and eval actor, GPU-hours, and
warnings for the cluster file's node types that cannot hold a trial or an actor."""

from pathlib import Path

import pytest
import yaml

from raysoup.config import load_experiment
from raysoup.dryrun import describe
from raysoup.dryrun.sizing import RUNTIME_BYTES, gpu_hours
from raysoup.dryrun.sources import Sizes, count_imagefolder, count_parquet
from raysoup.fixture import fixture_overrides

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "clip_vit_b32_imagenet.yaml"
S = 224 * 224 * 3  # bytes of one uint8 image at the model's input size


def plan(tmp_path, sets, cluster=None) -> str:
    return describe(load_experiment(PAPER, sets), tmp_path / "w", ("sweep",), cluster=cluster)


def test_counts_every_split_of_the_fixture(imagenet_fixture, tmp_path):
    text = plan(tmp_path, fixture_overrides(imagenet_fixture))
    assert "warnings" not in text, text
    fx = imagenet_fixture
    assert f"train      imagefolder {fx['train']}  (2,000 images)" in text
    assert f"shift imagenet_v2 imagefolder {fx['imagenet_v2']}  (1,000 images)" in text
    # ObjectNet: only the class dirs its class_map names are scored (50 of 60, 2 images each).
    assert f"shift objectnet imagefolder {fx['objectnet']}  (100 images)" in text
    assert ("images     train 2,000 (held-out ~40 of them); test 1,000, imagenet_v2 1,000, "
            "imagenet_r 200, imagenet_sketch 1,000, imagenet_a 200, objectnet 100") in text
    evals = 40 + 1000 + 1000 + 200 + 1000 + 200 + 100
    assert f"eval cache {evals * S / 2**30:.2f} GiB ({evals:,} images x 3x224x224 uint8)" in text
    assert "GPU-hours  not estimated: no measured throughput for raysoup-tiny-vit224" in text


def test_parquet_is_counted_from_footers(imagenet_fixture, tmp_path):
    from raysoup.data.pack import pack_imagefolder

    out = tmp_path / "val.parquet"
    pack_imagefolder(imagenet_fixture["val"], str(out), rows_per_file=300, progress=False)
    rows, names = count_parquet(str(out))
    assert rows == 1000 and len(names) == 1000
    text = plan(tmp_path, fixture_overrides(imagenet_fixture)
                + ["data.test.format=parquet", f"data.test.path={out}"])
    assert f"test       parquet {out}  (1,000 images)" in text and "warnings" not in text
    (out / "part-00001.parquet").write_bytes(b"not parquet")
    text = plan(tmp_path, fixture_overrides(imagenet_fixture)
                + ["data.test.format=parquet", f"data.test.path={out}"])
    assert f"data.test.path: cannot read the Parquet footer of {out}/part-00001.parquet" in text


def test_remote_sources_are_listed(s3, tmp_path, imagenet_fixture):
    from raysoup.data.pack import pack_imagefolder

    for d in sorted(Path(imagenet_fixture["imagenet_r"]).iterdir())[:5]:
        for f in d.iterdir():
            s3.put(f"r/{d.name}/{f.name}", f.read_bytes())
    pack_imagefolder(imagenet_fixture["val"], s3.uri("val"), rows_per_file=400, progress=False)
    assert count_imagefolder(s3.uri("r"))[0] == 5
    assert count_parquet(s3.uri("val"))[0] == 1000
    text = plan(tmp_path, fixture_overrides(imagenet_fixture)
                + [f"data.shifts.imagenet_r.path={s3.uri('r')}", "data.test.format=parquet",
                   f"data.test.path={s3.uri('val')}",
                   f"data.shifts.imagenet_a.path={s3.uri('missing')}"])
    assert f"shift imagenet_r imagefolder {s3.uri('r')}  (5 images)" in text
    assert f"test       parquet {s3.uri('val')}  (1,000 images)" in text
    assert f"data.shifts.imagenet_a.path: {s3.uri('missing')} does not exist" in text


def test_memory_estimates_for_vit_b32(imagenet_fixture, tmp_path):
    sets = fixture_overrides(imagenet_fixture)
    text = plan(tmp_path, [s for s in sets if not s.startswith(("model.", "sweep.", "eval."))]
                + ["model.pretrained=openai"])
    params = 87_849_216 + 512 * 1000 + 1000  # ViT-B-32 image tower + a 1000-class head
    prefetch = 512 * S * (7 * 2 + 2)  # batch 512, 8 CPUs per trial -> 7 loader workers
    trial = params * 16 + prefetch + RUNTIME_BYTES
    assert f"per trial  ~{trial / 2**30:.2f} GiB" in text
    assert f"({params / 1e6:.1f}M params x 16 B)" in text and "7 loader workers" in text
    assert "per actor  ~" in text and "cache shard 147.0 MiB (1024 images)" in text


def test_gpu_hours_at_imagenet_scale():
    cfg = load_experiment(PAPER)
    train, heldout = 1_281_167, 25_623
    evals = {"heldout": heldout, "test": 50_000, "imagenet_v2": 10_000}
    lines = gpu_hours(cfg, Sizes(train, 1000, evals))
    # randint [4, 17): 10 epochs on average; 72 trials at 4547 img/s on one H200.
    hours = 72 * 10 * (train - heldout) / 4547 / 3600
    assert f"sweep ~{hours:,.1f}: 72 trials x 10 epochs (mean)" in lines[0]
    assert round(hours) == 55
    assert f"evaluation ~{73 * 85_623 / 6944 / 3600:,.2f}" in lines[1]


def test_cluster_node_types_that_cannot_hold_a_trial(imagenet_fixture, tmp_path):
    # The repository's cluster.yaml with the paper's 8-CPU trials: the 4-CPU A10G node can't.
    sets = [s for s in fixture_overrides(imagenet_fixture) if not s.startswith("sweep.resources")
            and not s.startswith("eval.")]
    text = plan(tmp_path, sets, cluster=ROOT / "cluster.yaml")
    assert ("cluster node type gpu_1x_a10g (g5.xlarge: 4 CPU, 1 GPU) cannot run a trial: it "
            "needs 8 CPU + 1 GPU") in text
    assert "gpu_8x_a100  p4d.24xlarge (1152 GiB, 96 CPU, 8 GPU): 8 trial(s)" in text
    assert "gpu_8x_a100 (" not in text  # it holds them
    # A node whose memory is too small: batches of 224-px images, prefetched 4 times over
    # (1 loader worker x 2 + 2), of 8192 (5.5 GiB a trial: 4 do not fit) and 32768 images.
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"available_node_types": {
        "small": {"resources": {"CPU": 4, "GPU": 1},
                  "node_config": {"InstanceType": "g5.xlarge"}}}}))
    text = plan(tmp_path, fixture_overrides(imagenet_fixture) + ["sweep.base.batch_size=8192"],
                cluster=cluster)
    assert "small (g5.xlarge, 16 GiB): 4 trials fit its CPUs/GPUs but need ~22.1" in text
    text = plan(tmp_path, fixture_overrides(imagenet_fixture) + ["sweep.base.batch_size=32768"],
                cluster=cluster)
    assert "cluster node type small (g5.xlarge, 16 GiB) cannot hold a trial: it needs ~19" in text
    text = plan(tmp_path, fixture_overrides(imagenet_fixture), cluster=cluster)
    # 4 one-CPU trials fit its CPUs, and their memory (plus the decoded train split) its RAM.
    assert "small        g5.xlarge (16 GiB, 4 CPU, 1 GPU): 4 trial(s), 4 eval actor(s)" in text
    assert "warnings" not in text


@pytest.mark.parametrize("missing", ["/nonexistent/train"])
def test_missing_train_is_a_warning_and_sizes_stay_partial(imagenet_fixture, tmp_path, missing):
    text = plan(tmp_path, fixture_overrides(imagenet_fixture) + [f"data.train.path={missing}"])
    assert f"data.train.path: {missing} does not exist on this machine" in text
    assert "images     train ? (held-out ~? of them)" in text
