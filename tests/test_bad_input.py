"""Bad input gets an error that names the culprit, and nothing half-done is left behind."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raysoup.checkpoints import IngredientError, write_ingredient
from raysoup.checkpoints.audit import AuditCache, audit_ingredient, check_compatible
from raysoup.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def make(path, **tensors):
    state = {"w": torch.ones(3, 2), "b": torch.zeros(3), **tensors}
    write_ingredient(path, state, {"kind": "ingredient"})
    return path


def test_sha256_mismatch_names_the_file(tmp_path):
    ing = make(tmp_path / "trial-000")
    data = bytearray((ing / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit in the tensor data
    (ing / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IngredientError, match=r"trial-000/model.safetensors: sha256 .*\(corrupt file\)"):
        audit_ingredient(ing)


def test_truncated_file_names_the_file(tmp_path):
    ing = make(tmp_path / "trial-001")
    f = ing / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(IngredientError, match=r"trial-001/model.safetensors: \d+ bytes.*truncated"):
        audit_ingredient(ing)


def test_audit_cache_rechecks_a_changed_file(tmp_path):
    ing = make(tmp_path / "trial-000")
    cache = AuditCache(tmp_path / "audit.json")
    assert cache.audit(ing).finite
    assert AuditCache(tmp_path / "audit.json").entries  # persisted
    f = ing / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")  # changes mtime: must be hashed again
    with pytest.raises(IngredientError, match="sha256"):
        AuditCache(tmp_path / "audit.json").audit(ing)


def test_nonfinite_weights_are_counted_per_tensor(tmp_path):
    w = torch.ones(3, 2)
    w[0, 0], w[1, 1] = float("nan"), float("inf")
    ing = make(tmp_path / "trial-002", w=w)
    audit = audit_ingredient(ing)
    assert audit.nonfinite == {"w": 2} and not audit.finite


def test_nonfinite_ingredient_left_out_or_refused_under_strict(tmp_path, caplog):
    from raysoup.orchestration.soup_stage import soup_candidates

    good = make(tmp_path / "good")
    bad = make(tmp_path / "bad", w=torch.full((3, 2), float("nan")))
    audits = {p.name: audit_ingredient(p) for p in (good, bad)}
    models = [("good", "ingredient", good), ("bad", "ingredient", bad)]
    heldout = {"good": 0.5, "bad": 0.9}
    cands = soup_candidates(models, heldout, audits, strict=False)
    assert [c.name for c in cands] == ["good"]
    assert "ingredient bad" in caplog.text and "NaN/Inf" in caplog.text
    with pytest.raises(RuntimeError, match=r"ingredient bad .*bad\).*\['w'\]; soup.strict"):
        soup_candidates(models, heldout, audits, strict=True)


@pytest.mark.parametrize("other, message", [
    ({"w": torch.ones(3, 3)},
     r"tensor 'w': shape \[3, 2\] in .*a/model.safetensors but \[3, 3\] in .*b/model.safetensors"),
    ({"w": torch.ones(3, 2, dtype=torch.float16)},
     r"tensor 'w': dtype float32 in .*a/model.safetensors but float16 in .*b/model.safetensors"),
    ({"extra": torch.ones(1)}, r"tensor 'extra': in .*b/model.safetensors but missing in .*a/"),
])
def test_mismatched_ingredients_name_tensor_and_both_files(tmp_path, other, message):
    a = make(tmp_path / "a")
    b = make(tmp_path / "b", **other)
    with pytest.raises(IngredientError, match=message):
        check_compatible([a, b])


def write_cfg(tmp_path, name, **overrides):
    raw = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_workdir_of_another_config_is_refused(tmp_path):
    from raysoup.orchestration.pipeline import snapshot_config
    from raysoup.workdir import CONFIG_SNAPSHOT
    from raysoup.workdir.snapshot import WorkdirMismatch

    work = tmp_path / "work"
    work.mkdir()
    snapshot_config(load_experiment(write_cfg(tmp_path, "a.yaml", sweep__base__epochs=8)), work)
    before = (work / CONFIG_SNAPSHOT).read_text()
    other = load_experiment(write_cfg(tmp_path, "b.yaml", sweep__base__epochs=9,
                                      data__heldout_fraction=0.1))
    with pytest.raises(WorkdirMismatch) as err:
        snapshot_config(other, work)
    assert "sweep.base.epochs: 8 in the workdir, now 9" in str(err.value)
    assert "data.heldout_fraction" in str(err.value)
    assert (work / CONFIG_SNAPSHOT).read_text() == before  # nothing overwritten
    # Soup/eval settings may change on an existing sweep (e.g. adding a recipe).
    snapshot_config(load_experiment(write_cfg(tmp_path, "c.yaml", sweep__base__epochs=8,
                                              soup__num_shards=3)), work)
    assert (work / CONFIG_SNAPSHOT).read_text() != before
    # So may how the sweep executes (not what it computes).
    snapshot_config(load_experiment(write_cfg(tmp_path, "d.yaml", sweep__base__epochs=8,
                                              soup__num_shards=3, sweep__max_concurrent=5,
                                              sweep__reuse_actors=False)), work)
    assert "reuse_actors: false" in (work / CONFIG_SNAPSHOT).read_text()


def test_cli_refuses_mixed_workdir_with_exit_2(tmp_path, capsys):
    # The CLI in this process (`raysoup` is `sys.exit(main())`): a CLI process costs seconds
    # of imports, and the refusal happens before Ray either way.
    from raysoup.cli import main
    from raysoup.orchestration.pipeline import snapshot_config

    work = tmp_path / "work"
    work.mkdir()
    snapshot_config(load_experiment(write_cfg(tmp_path, "a.yaml", sweep__base__warmup_steps=50)),
                    work)
    cfg = write_cfg(tmp_path, "b.yaml", sweep__base__warmup_steps=7)
    capsys.readouterr()
    rc, err = main(["run", str(cfg), "--workdir", str(work)]), capsys.readouterr().err
    assert rc == 2, err
    assert "sweep.base.warmup_steps: 50 in the workdir, now 7" in err
    assert sorted(p.name for p in work.iterdir()) == ["experiment.yaml"]  # nothing else started


def test_workdir_from_before_new_fields_resumes_but_a_set_new_field_is_refused(tmp_path):
    """A snapshot written before a field existed lacks it: it counts as the field's default."""
    from raysoup.orchestration.pipeline import snapshot_config
    from raysoup.workdir import CONFIG_SNAPSHOT
    from raysoup.workdir.snapshot import WorkdirMismatch

    work = tmp_path / "work"
    work.mkdir()
    cfg = load_experiment(write_cfg(tmp_path, "a.yaml"))
    snapshot_config(cfg, work)
    raw = yaml.safe_load((work / CONFIG_SNAPSHOT).read_text())
    for field in ("memory_budget_mb", "loader_workers", "shuffle_window", "train_crop"):
        del raw["data"][field]  # as an older raysoup wrote it
    (work / CONFIG_SNAPSHOT).write_text(yaml.safe_dump(raw))
    snapshot_config(cfg, work)
    assert "shuffle_window" in (work / CONFIG_SNAPSHOT).read_text()
    (work / CONFIG_SNAPSHOT).write_text(yaml.safe_dump(raw))
    other = load_experiment(write_cfg(tmp_path, "b.yaml", data__shuffle_window=64))
    with pytest.raises(WorkdirMismatch, match="data.shuffle_window: 1024 in the workdir, now 64"):
        snapshot_config(other, work)


PAPER = ROOT / "experiments" / "clip_vit_b32_imagenet.yaml"


def test_missing_data_path_is_refused_before_ray_and_writes_nothing(tmp_path):
    # Issue 30 item 10: the run started Ray, wrote experiment.yaml, then failed; the corrected
    # config was refused as "a different experiment config".
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "raysoup.cli", "run", str(PAPER),
                           "--workdir", str(work)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "data.train.path: /data/imagenet/train does not exist" in proc.stderr
    assert "Ray" not in proc.stderr and not work.exists()


def test_a_failed_preparation_leaves_no_snapshot(tmp_path, ray_session):
    from raysoup.data.errors import DataError
    from raysoup.orchestration.pipeline import run_pipeline
    from raysoup.workdir import CONFIG_SNAPSHOT

    empty = tmp_path / "empty"
    empty.mkdir()
    sets = [f"data.train.path={empty}", f"data.test.path={empty}", "data.shifts={}"]
    work = tmp_path / "work"
    with pytest.raises(DataError, match="no class directories"):
        run_pipeline(load_experiment(PAPER, sets), work)
    assert not (work / CONFIG_SNAPSHOT).exists()
    # The corrected config is not refused.
    from raysoup.orchestration.pipeline import check_config

    check_config(load_experiment(PAPER, [*sets, "data.heldout_fraction=0.1"]), work)
