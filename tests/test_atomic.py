"""Durable atomic writes (raysoup/atomic.py) and the workdir files written through them.

`os.fsync` and `shutil.rmtree` are wrapped by spies that record what they were called on and
then do the real work: a host crash cannot be staged here, but what gets fsynced, and what the
final name holds when an old directory is deleted, can be observed.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from small import small_config

from raysoup.atomic import atomic_dir, remove_temp, write_atomic
from raysoup.checkpoints import write_ingredient
from raysoup.checkpoints.audit import AuditCache
from raysoup.config import ExperimentCfg
from raysoup.evaluate import results as res
from raysoup.orchestration.pipeline import snapshot_config
from raysoup.orchestration.soup_stage import write_result
from raysoup.soup import RecipeResult


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """Paths fsynced during the test, in order."""
    seen = []
    real = os.fsync

    def spy(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def _durable(final: Path, seen: list[Path]) -> bool:
    """The file's bytes were fsynced under its temp name, then the directory holding its
    final name: the file alone (`write_atomic`) or inside a directory (`atomic_dir`)."""
    for i, p in enumerate(seen):
        if p.parent == final.parent and p.name.startswith(f".tmp-{final.name}-"):
            return final.parent in seen[i + 1:]
        if p.name == final.name and p.parent.parent == final.parent.parent \
                and p.parent.name.startswith(f".tmp-{final.parent.name}-"):
            return final.parent.parent in seen[i + 1:]
    return False


def test_write_atomic_is_durable_and_keeps_the_old_file_on_error(tmp_path, fsynced):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    assert path.read_text() == "old" and _durable(path, fsynced)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


def test_workdir_files_are_fsynced_with_their_directory(tmp_path, fsynced):
    res.write_results(tmp_path / "results.parquet", res.rows("m", "soup", {"test": (1, 2)}))
    snapshot_config(ExperimentCfg.model_validate(small_config()), tmp_path)
    ing = tmp_path / "ingredients" / "a"
    write_ingredient(ing, {"w": torch.ones(2)}, {"kind": "ingredient"})
    AuditCache(tmp_path / ".audit.json").audit(ing)
    soup = tmp_path / "soups" / "ensemble"
    write_result(soup, "ensemble", RecipeResult(["a"], [1.0], kind="ensemble"), {"a": ing}, [])
    for final in (tmp_path / "results.parquet", tmp_path / "experiment.yaml",
                  tmp_path / ".audit.json", ing / "manifest.json", soup / "recipe.json"):
        assert _durable(final, fsynced), final


def test_replacing_a_directory_never_deletes_the_old_one_first(tmp_path, monkeypatch):
    """Whenever anything is deleted, the final name already holds the complete new soup."""
    ing = tmp_path / "ingredients" / "a"
    write_ingredient(ing, {"w": torch.ones(2)}, {"kind": "ingredient"})
    soup = tmp_path / "soups" / "ensemble"
    write_result(soup, "ensemble", RecipeResult(["a"], [1.0], kind="ensemble"), {"a": ing}, [])
    at_delete = []
    real = shutil.rmtree

    def spy(path, *args, **kwargs):
        recipe = soup / "recipe.json"
        at_delete.append(json.loads(recipe.read_text())["weights"] if recipe.exists() else None)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    write_result(soup, "ensemble", RecipeResult(["a"], [2.0], kind="ensemble"), {"a": ing}, [])
    assert at_delete and all(w == [2.0] for w in at_delete)
    assert json.loads((soup / "recipe.json").read_text())["weights"] == [2.0]
    assert sorted(os.listdir(soup.parent)) == ["ensemble"]


def test_atomic_dir_on_error_keeps_the_old_dir_and_remove_temp_clears_leftovers(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("killed")
    assert (out / "f").read_text() == "old" and os.listdir(tmp_path) == ["d"]
    (tmp_path / ".tmp-x-1").mkdir()
    (tmp_path / ".old-d-2").mkdir()
    (tmp_path / ".tmp-f-3").write_text("")
    assert remove_temp(tmp_path) == [".old-d-2", ".tmp-f-3", ".tmp-x-1"]
    assert os.listdir(tmp_path) == ["d"]
