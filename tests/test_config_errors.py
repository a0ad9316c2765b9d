"""Config errors as a user reads them: one line per problem, the nearest field for a typo, and
where the bad value came from (the file, or the `--set` that gave it)."""

from pathlib import Path

import pytest

from raysoup.config import ConfigError, load_experiment

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"


def _error(tmp_path=None, text=None, overrides=()):
    path = TINY
    if text is not None:
        path = tmp_path / "exp.yaml"
        path.write_text(TINY.read_text() + text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path, list(overrides))
    return str(err.value).splitlines()


def test_unknown_key_suggests_the_nearest_field():
    lines = _error(overrides=["sweep.num_sample=3", "data.wrld.seed=1"])
    assert sorted(lines[1:]) == [
        "  data.wrld: unknown field; did you mean data.world? (from --set data.wrld.seed=1)",
        ("  sweep.num_sample: unknown field; did you mean sweep.num_samples? "
        "(from --set sweep.num_sample=3)"),
    ]


def test_unknown_key_without_a_near_one_lists_the_valid_fields():
    [_, line] = _error(overrides=["eval.zzz=1"])
    assert line.startswith("  eval.zzz: unknown field (valid: batch_size, cpus_per_actor")


def test_bad_distribution_is_one_line_without_union_branches():
    lines = _error(overrides=["sweep.space.lr=foo"])
    assert lines[1:] == [
        ("  sweep.space.lr: 'foo' is none of the accepted forms: {loguniform: ...}, "
        "{uniform: ...}, {randint: ...}, {choice: ...}, a float, an int "
        "(from --set sweep.space.lr=foo)")]


def test_a_value_from_the_file_is_not_blamed_on_an_override(tmp_path):
    lines = _error(tmp_path, "tracking: {bogus: 1}\n", overrides=["eval.batch_size=0"])
    assert lines[0] == f"invalid experiment config {tmp_path / 'exp.yaml'}:"
    assert "  tracking.bogus: unknown field" in lines[1] + lines[2]
    assert not [ln for ln in lines if "tracking.bogus" in ln and "--set" in ln]
    assert "  eval.batch_size: Input should be greater than or equal to 1 " \
           "(from --set eval.batch_size=0)" in lines


def test_the_last_override_of_a_field_is_named():
    lines = _error(overrides=["eval.batch_size=4", "eval.batch_size=-1"])
    assert lines[1].endswith("(from --set eval.batch_size=-1)")
