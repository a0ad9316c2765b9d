"""The reduction's tensor reader (`raysoup.reduce.open_tensors`, `reduce_shard`) turns a file
that is truncated, stale or shrinks while mapped into an error naming the file, never a
SIGBUS that kills the worker."""

import subprocess
import sys
import textwrap

import pytest
import torch

from raysoup.checkpoints import write_ingredient
from raysoup.checkpoints.tensorfile import TensorFileError
from raysoup.reduce import reduce_shard

STATE = {"a": torch.arange(4096, dtype=torch.float32), "b": torch.ones(64, 1024)}


def make(path, scale=1.0):
    write_ingredient(path, {k: v * scale for k, v in STATE.items()}, {"kind": "ingredient"})
    return path


def test_file_shrinking_under_the_mapping_is_an_error_not_sigbus(tmp_path):
    ing = make(tmp_path / "trial-000")
    script = textwrap.dedent(f"""
        import os
        from raysoup.checkpoints.tensorfile import Scratch, TensorFileError, open_tensors
        f = {str(ing / "model.safetensors")!r}
        with open_tensors(f) as h:
            scratch = Scratch()
            h.get_tensor("a", scratch)  # the mapping exists
            os.truncate(f, 4096)  # e.g. a copy over the file, or an NFS client's stale view
            try:
                print(float(h.get_tensor("b", scratch).sum()))
            except TensorFileError as e:
                print("ERROR", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("ERROR") and "trial-000/model.safetensors" in proc.stdout
    assert "while being read" in proc.stdout


def test_stale_file_of_another_size_is_refused_against_the_manifest(tmp_path):
    good = make(tmp_path / "trial-000")
    stale = make(tmp_path / "trial-001")
    # A valid safetensors file, but not the one the manifest describes (a left-over copy).
    torch_file = stale / "model.safetensors"
    from safetensors.torch import save_file
    save_file({"a": STATE["a"], "b": STATE["b"], "extra": torch.zeros(8)}, torch_file)
    with pytest.raises(TensorFileError, match=r"trial-001/model.safetensors.*manifest.*says"):
        reduce_shard([good, stale], [0.5, 0.5], ["a", "b"])


def test_truncated_ingredient_is_refused_naming_the_file(tmp_path):
    good, bad = make(tmp_path / "trial-000"), make(tmp_path / "trial-001", 2.0)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(TensorFileError, match=r"trial-001/model.safetensors"):
        reduce_shard([good, bad], [0.5, 0.5], ["a", "b"])
    # The intact pair still reduces.
    out = reduce_shard([good, good], [0.5, 0.5], ["a", "b"])
    assert torch.equal(torch.from_numpy(out["a"]), STATE["a"])
