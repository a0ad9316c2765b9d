"""`--dry-run` and the paper-scale config: validated and planned without data, weights or Ray."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysoup.config import ConfigError, ExperimentCfg, load_experiment
from raysoup.data.sources import resolve_classnames

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "clip_vit_b32_imagenet.yaml"
TINY = ROOT / "experiments" / "tiny.yaml"

# Runs the CLI in a fresh interpreter, then proves nothing heavy was started or imported.
PROBE = """
import sys
from raysoup.cli import main
rc = main(sys.argv[1:])
loaded = sorted(m for m in ("ray", "mlflow", "raysoup.orchestration", "raysoup.tracking")
                if m in sys.modules)
print("LOADED", loaded)
sys.exit(rc)
"""


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_paper_config_validates():
    cfg = load_experiment(PAPER)
    assert cfg.model.name == "ViT-B-32-quickgelu" and cfg.model.pretrained == "openai"
    assert cfg.data.heldout_fraction == 0.02 and cfg.data.classnames == "imagenet"
    assert cfg.data.train.format == cfg.data.test.format == "imagefolder"
    assert set(cfg.data.shifts) == {"imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a",
                                    "objectnet"}
    assert cfg.data.shifts["objectnet"].class_map  # ObjectNet: many-to-one class groups
    assert cfg.sweep.num_samples == 72 and cfg.sweep.base.batch_size == 512
    assert cfg.sweep.resources_per_trial.gpu >= 1 and cfg.eval.gpus_per_actor >= 1
    assert cfg.sweep.space["lr"].loguniform == (1e-6, 1e-4)
    assert {"uniform", "greedy"} <= set(cfg.soup.recipes)


def test_paper_config_samples_valid_hparams():
    from raysoup.orchestration.space import hparams_for, param_space

    cfg = load_experiment(PAPER)
    space = param_space(cfg.sweep.space)
    for seed in range(20):  # every sampled point passes TrainHParams' own validation
        sampled = {k: (v.sample(random_state=seed) if hasattr(v, "sample") else v)
                   for k, v in space.items()}
        hp = hparams_for(cfg, sampled)
        assert 1e-6 <= hp.lr <= 1e-4 and 4 <= hp.epochs <= 16 and 0 <= hp.randaug_n <= 2


def test_imagenet_classnames_shorthand():
    names = resolve_classnames("imagenet")
    assert len(names) == 1000 and names[0] == "tench"
    assert resolve_classnames(None) is None and resolve_classnames(["a", "b"]) == ["a", "b"]
    with pytest.raises(ConfigError, match="data.classnames"):
        load_experiment(PAPER, ["data.classnames=imagenet21k"])


def test_dry_run_paper_config(tmp_path):
    workdir = tmp_path / "w"
    proc = dry_run("run", str(PAPER), "--dry-run", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("raysoup dry run: clip_vit_b32_imagenet",
                 "ViT-B-32-quickgelu", "open_clip tag 'openai'",
                 "/data/imagenet/train", "2.0% of train",
                 "72 trials", "per trial 8 CPU + 1 GPU", "at full concurrency 64 CPU + 8 GPU",
                 "lr               loguniform [1e-06, 0.0001]",
                 "epochs           randint [4, 17) = 4..16",
                 "8 actor(s) x (8 CPU + 1 GPU)", "recipes uniform, greedy",
                 f"sqlite:///{workdir}/mlflow.db",
                 "sweep -> evaluate -> soup -> report"):
        assert text in out, text
    # Data paths are user-provided: absent here, which is a warning, not an error.
    assert "warnings" in out and "data.train.path: /data/imagenet/train does not exist" in out
    assert "LOADED []" in out  # no Ray, no MLflow, no pipeline
    assert not workdir.exists()


def test_dry_run_tiny_and_single_stage(tmp_path):
    proc = dry_run("soup", str(TINY), "--dry-run", "--workdir", str(tmp_path / "w"),
                   "--set", "sweep.num_samples=4")
    assert proc.returncode == 0, proc.stderr
    assert "raysoup dry run: tiny" in proc.stdout and "4 trials" in proc.stdout
    assert "-> soup\n" in proc.stdout and "base CLIP shipped with raysoup" in proc.stdout
    assert "warnings" not in proc.stdout and "LOADED []" in proc.stdout
    assert not (tmp_path / "w").exists()


def test_dry_run_warns_on_gelu_with_openai_weights(tmp_path, capsys):
    from raysoup.cli import main

    assert main(["run", str(PAPER), "--dry-run", "--workdir", str(tmp_path / "w"),
                 "--set", "model.name=ViT-B-32"]) == 0
    assert "quick_gelu=True" in capsys.readouterr().out


def test_dry_run_invalid_config_exits_2(capsys):
    from raysoup.cli import main

    assert main(["run", str(PAPER), "--dry-run", "--set", "sweep.num_samples=0"]) == 2
    assert "sweep.num_samples" in capsys.readouterr().err


def test_plan_uri_matches_tracking_default(tmp_path):
    from raysoup.dryrun import describe
    from raysoup.tracking import default_uri

    text = describe(load_experiment(TINY), tmp_path, ("sweep",))
    assert f"MLflow {default_uri(tmp_path)}," in text


def test_cluster_file_is_looked_for_in_the_current_directory(tmp_path, monkeypatch):
    # Nothing is read beside the package (an installed wheel has no repository around it):
    # the plan says where it looked, and sizes ./cluster.yaml where there is one.
    from raysoup.dryrun import describe

    monkeypatch.chdir(tmp_path)
    cfg = load_experiment(TINY)
    text = describe(cfg, tmp_path / "w", ("sweep",))
    assert f"cluster      no cluster.yaml in {tmp_path}: node types not checked" in text
    (tmp_path / "cluster.yaml").write_text((ROOT / "cluster.yaml").read_text())
    text = describe(cfg, tmp_path / "w", ("sweep",))
    assert f"cluster      {tmp_path / 'cluster.yaml'}: node types" in text
    assert "gpu_1x_a10g  g5.xlarge (16 GiB, 4 CPU, 1 GPU): 4 trial(s)" in text
    assert "\ncluster " not in describe(cfg, tmp_path / "w", ("sweep",), cluster=None)


def test_dry_run_refuses_what_the_real_run_refuses(tmp_path, capsys):
    # Issue 30 item 10: on a 6-trial workdir, `--dry-run --set sweep.num_samples=8` said
    # "the run resumes" (exit 0) where the real run refused. A sweep may now grow: the dry
    # run says so; shrinking it or changing its space is refused by both, the same way.
    # The CLI in this process (`raysoup` is `sys.exit(main())`): a CLI process costs seconds
    # of imports, and what a fresh one imports is the other dry-run tests' check.
    from raysoup.cli import main
    from raysoup.orchestration.pipeline import snapshot_config

    work = tmp_path / "w"
    work.mkdir()
    snapshot_config(load_experiment(TINY), work)
    args = ["run", str(TINY), "--workdir", str(work), "--set", "sweep.num_samples=4"]
    capsys.readouterr()
    dry_rc, dry = main([*args, "--dry-run"]), capsys.readouterr()
    real_rc, real = main(args), capsys.readouterr()
    assert dry_rc == real_rc == 2, dry.out + dry.err
    assert "sweep.num_samples: 6 in the workdir, now 4: a sweep grows but never shrinks" \
        in dry.err and dry.err == real.err
    assert sorted(p.name for p in work.iterdir()) == ["experiment.yaml"]
    # The dry run's plan is `describe` after `check_config`.
    from raysoup.dryrun import describe
    from raysoup.orchestration.pipeline import check_config
    from raysoup.workdir import WorkdirMismatch

    with pytest.raises(WorkdirMismatch, match="sweep.space.lr"):
        check_config(load_experiment(TINY, ["sweep.space.lr={loguniform: [1.0e-5, 1.0e-3]}"]),
                     work)
    grown = load_experiment(TINY, ["sweep.num_samples=8"])
    check_config(grown, work)
    assert "the sweep grows from 6 to 8 trials: trial-006 on continue its seeded search" \
        in describe(grown, work, ("sweep",), cluster=None)
    # An unchanged config plans as before: the run resumes.
    assert "the run resumes" in describe(load_experiment(TINY), work, ("sweep",), cluster=None)


def test_optuna_sweeps_do_not_grow(tmp_path):
    from raysoup.orchestration.pipeline import check_config, snapshot_config

    cfg = load_experiment(TINY, ["sweep.search=optuna"])
    snapshot_config(cfg, tmp_path)
    with pytest.raises(ConfigError, match="optuna sweep cannot grow: its proposals depend"):
        check_config(load_experiment(TINY, ["sweep.search=optuna", "sweep.num_samples=7"]),
                     tmp_path)


def test_a_grown_random_or_grid_sweep_replays_tunes_seeded_draws():
    """The new trials of a grown sweep (search.seeded_variants) are those Tune's own
    generator gives a fresh sweep of the larger size, continuous draws and grid rounds alike."""
    from test_sweep_outcomes import fresh_configs

    from raysoup.orchestration.search import seeded_variants

    space = {"lr": {"loguniform": [1.0e-4, 1.0e-3]}, "weight_decay": {"choice": [0.0, 0.1]},
             "seed": {"randint": [0, 100]}}
    for search in ("random", "grid"):
        raw = {**yaml.safe_load(TINY.read_text()), "name": "g"}
        raw["sweep"] = {**raw["sweep"], "num_samples": 3, "seed": 5, "search": search,
                        "space": space}
        fresh = fresh_configs(raw)
        assert seeded_variants(ExperimentCfg.model_validate(raw), len(fresh)) == fresh
        assert len({c["lr"] for c in fresh}) == len(fresh)  # draws, not a constant
