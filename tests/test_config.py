"""The experiment config (raysoup/config.py): the shipped experiments validate, dotted
overrides apply, and a bad override or file gets an error naming the field (the CLI exits 2
without a traceback)."""
import subprocess
import sys
from pathlib import Path

import pytest

from raysoup.config import ConfigError, load_experiment
from raysoup.soup.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"


def test_tiny_config_loads_with_overrides():
    cfg = load_experiment(TINY, ["sweep.num_samples=4", "soup.num_shards=3"])
    assert cfg.sweep.num_samples == 4
    assert cfg.soup.num_shards == 3
    assert cfg.data.world is not None and cfg.model.pretrained == "raysoup:tiny-rn-web"


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path):
    assert load_experiment(path).name == path.stem


def test_base_recipe_pretrains_on_the_default_world():
    tiny, base = load_experiment(TINY), load_experiment(ROOT / "experiments" / "tiny_base.yaml")
    assert base.data.world == tiny.data.world and base.model.name == tiny.model.name
    # The same held-out carve-out: the base never trains on the default's held-out split.
    assert base.data.heldout_fraction == tiny.data.heldout_fraction


@pytest.mark.parametrize(("override", "path", "words"), [
    ("sweep.num_smples=4", "sweep.num_smples", "unknown field; did you mean sweep.num_samples?"),
    ("soup.num_shards=0", "soup.num_shards", "greater than or equal to 1"),
    ("sweep.space.learning_rate=0.1", "sweep.space", "unknown hyper-parameter"),
    ("soup.recipes=[uniform, bogus]", "soup.recipes", f"valid: {sorted(METHODS)}"),
    ("data.heldout_fraction=0.9", "data.heldout_fraction", "less than 0.5"),
    ("soup.wiseft.alphas=[0.5, 1.5]", "soup.wiseft.alphas", "must lie in [0, 1]"),
    ("soup.learned.stepz=3", "soup.learned.stepz", "did you mean soup.learned.steps?"),
    ("soup.ties.densty=0.3", "soup.ties.densty", "did you mean soup.ties.density?"),
    ("soup.ties.density=0", "soup.ties.density", "greater than 0"),
    ("soup.dare.combine=mean", "soup.dare.combine", "'linear' or 'ties'"),
    ("soup.speculation=1", "soup", "soup.speculation is now soup.greedy.speculation"),
])
def test_bad_override_names_field(override, path, words):
    with pytest.raises(ConfigError) as err:
        load_experiment(TINY, [override])
    assert f"{path}:" in str(err.value)
    assert words in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    bad.write_text("name: x\nmodel: {name: ViT-B-32}\ndata: {world: {}}\n")
    with pytest.raises(ConfigError, match="model: .*no weight source"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_experiment(TINY, ["sweep.num_samples"])


def test_cli_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "raysoup.cli", "run", str(TINY), "--workdir", str(tmp_path),
         "--set", "sweep.base.lr=-1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "sweep.base.lr: Input should be greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written for an invalid config


@pytest.mark.parametrize("value", ["4.0", "true", "'4'"])
def test_num_samples_is_a_whole_number_not_a_float(value):
    """`sweep.num_samples=4.0` (or a bool, or a string) is refused; 4 still loads."""
    with pytest.raises(ConfigError) as err:
        load_experiment(TINY, [f"sweep.num_samples={value}"])
    assert "sweep.num_samples:" in str(err.value) and "integer" in str(err.value)
    assert load_experiment(TINY, ["sweep.num_samples=4"]).sweep.num_samples == 4
