"""`raysoup import` refuses bad input with a message naming the file or option and exit 2,
and writes nothing: prefixes that would leave ingredients/, non-string keys, tied tensors."""

import random
from collections import defaultdict

import pytest
import torch

from raysoup.checkpoints import CheckpointImportError, Target, import_checkpoints, list_ingredients
from raysoup.cli import main
from raysoup.models.classifier import classifier_skeleton

TINY_YAML = "experiments/tiny.yaml"  # raysoup-tiny-rn, 10 classes


@pytest.fixture(scope="module")
def state():
    return classifier_skeleton("raysoup-tiny-rn", 10).state_dict()


def run_import(tmp_path, *args):
    return main(["import", *map(str, args), "--config", TINY_YAML,
                 "--workdir", str(tmp_path / "w")])


@pytest.mark.parametrize("prefix", ["../x", "a/b", "..", ".hidden", "/abs", "a\\b", ""])
def test_prefix_that_is_not_one_directory_name_is_refused(state, tmp_path, capsys, prefix):
    torch.save(state, tmp_path / "ft.pt")
    assert run_import(tmp_path, tmp_path / "ft.pt", "--prefix", prefix) == 2
    assert f"--prefix {prefix!r}" in capsys.readouterr().err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "ft.pt"]
    assert written == []  # nothing inside ingredients/, nothing beside it


def test_prefix_with_dots_and_dashes_is_one_listed_ingredient(state, tmp_path):
    torch.save(state, tmp_path / "ft.pt")
    assert run_import(tmp_path, tmp_path / "ft.pt", "--prefix", "run-2.b") == 0
    assert [p.name for p in list_ingredients(tmp_path / "w" / "ingredients")] == ["run-2.b-ft"]


def test_non_string_keys_are_refused_naming_the_file(state, tmp_path, capsys):
    src = tmp_path / "intkeys.pt"
    torch.save({**state, 7: torch.zeros(3)}, src)
    with pytest.raises(CheckpointImportError, match=r"keys \[7\] are not tensor names"):
        import_checkpoints([src], tmp_path / "i", Target("raysoup-tiny-rn", 10))
    assert run_import(tmp_path, src) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "Traceback" not in err


def test_tied_tensors_are_refused_naming_both(state, tmp_path, capsys):
    by_shape = defaultdict(list)
    for key, value in state.items():
        if value.is_floating_point():
            by_shape[tuple(value.shape)].append(key)
    a, b = sorted(next(keys for keys in by_shape.values() if len(keys) > 1)[:2])
    src = tmp_path / "tied.pt"
    torch.save({**state, b: state[a]}, src)  # one tensor under two names
    assert run_import(tmp_path, src) == 2
    err = capsys.readouterr().err
    assert str(src) in err and a in err and b in err and "share memory" in err
    assert list_ingredients(tmp_path / "w" / "ingredients") == []

    # Disjoint views of one buffer are not tied: each name has its own bytes.
    flat = torch.cat([state[a].flatten(), state[b].flatten()])
    views = {**state, a: flat[: state[a].numel()].view_as(state[a]),
             b: flat[state[a].numel():].view_as(state[b])}
    torch.save(views, tmp_path / "views.pt")
    assert run_import(tmp_path, tmp_path / "views.pt") == 0


def test_corrupt_and_empty_torch_files_are_told_apart_from_unsafe_ones(tmp_path):
    """Random bytes are a corrupt file, not code; an empty file says so; a pickle calling a
    function is the one refused as able to execute code."""
    from raysoup.checkpoints.importer import read_checkpoint

    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointImportError) as err:
        read_checkpoint(noise)
    assert "noise.pt: corrupt or not a torch checkpoint" in str(err.value)
    assert "execute code" not in str(err.value)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointImportError, match=r"empty\.pt: empty file \(0 bytes\)"):
        read_checkpoint(empty)
    truncated = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointImportError, match=r"cut\.pt: corrupt or not a torch "
                                                    r"checkpoint \(.+\)"):
        read_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(CheckpointImportError, match=r"unsafe\.pt: refused: .*could execute "
                                                    r"code when loaded \(.*GLOBAL posix\.system"):
        read_checkpoint(unsafe)
