"""sweep.space is checked against TrainHParams: every value a distribution can draw must be a
valid hyper-parameter, and the error names sweep.space.<name>."""

import subprocess
import sys
from pathlib import Path

import pytest

from raysoup.config import ConfigError, load_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"


@pytest.mark.parametrize(("override", "words"), [
    ("sweep.space.lr=-0.1", "can draw -0.1: Input should be greater than 0"),
    ("sweep.space.epochs={uniform: [1, 4]}", "epochs is an integer"),
    ("sweep.space.epochs={loguniform: [1, 4]}", "epochs is an integer"),
    ("sweep.space.epochs={randint: [3, 3]}", "draws nothing"),
    ("sweep.space.epochs={randint: [0, 3]}", "can draw 0"),
    ("sweep.space.epochs={choice: [2, 2.5]}", "can draw 2.5"),
    ("sweep.space.randaug_m={randint: [0, 32]}", "can draw 31"),  # high is exclusive: 31, not 32
    ("sweep.space.label_smoothing={uniform: [0.1, 1.0]}", "can draw 1.0"),
    ("sweep.space.weight_decay={choice: [0.1, -1]}", "can draw -1"),
    ("sweep.space.lr={uniform: [0.01, 0.001]}", "low must be below high"),
    ("sweep.space.lr={loguniform: [0, 0.1]}", "must be positive"),
])
def test_space_value_outside_the_hparam_is_refused(override, words):
    with pytest.raises(ConfigError) as err:
        load_experiment(TINY, [override])
    name = override.split("=", 1)[0]
    assert f"{name}: " in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("override", [
    "sweep.space.epochs={randint: [1, 4]}",
    "sweep.space.randaug_m={randint: [0, 31]}",
    "sweep.space.epochs={choice: [1, 2.0]}",
    "sweep.space.lr={choice: [1.0e+4, 1.0e-3]}",  # valid values; training may still diverge
    "sweep.space.label_smoothing={uniform: [0.0, 0.2]}",
    "sweep.space.seed=3",
])
def test_space_inside_the_hparam_is_accepted(override):
    load_experiment(TINY, [override])


@pytest.mark.parametrize("name", [".", ".."])
def test_name_that_is_a_relative_directory_is_refused(name):
    with pytest.raises(ConfigError, match=r"  name: .*not a usable name"):
        load_experiment(TINY, [f"name={name}"])


def test_cli_dry_run_exits_2_naming_the_space_entry(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "raysoup.cli", "run", str(TINY), "--dry-run",
         "--workdir", str(tmp_path), "--set", "sweep.space.lr=-0.1",
         "--set", "sweep.space.epochs={uniform: [1, 4]}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "sweep.space.lr: " in proc.stderr and "sweep.space.epochs: " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_each_distribution_describes_converts_and_validates_itself():
    from ray import tune

    from raysoup.search.distributions import Choice, LogUniform, RandInt, Uniform, as_dist

    cases = [(LogUniform(loguniform=(1e-4, 1e-2)), "loguniform [0.0001, 0.01]", "Float"),
             (Uniform(uniform=(0.0, 0.5)), "uniform [0, 0.5]", "Float"),
             (RandInt(randint=(4, 17)), "randint [4, 17) = 4..16", "Integer"),
             (Choice(choice=[0.0, 0.2]), "choice [0.0, 0.2]", "Categorical")]
    for dist, text, domain in cases:
        assert dist.describe() == text and type(dist.to_tune(tune)).__name__ == domain
    assert Choice(choice=[1, 2]).to_tune(tune, grid=True) == {"grid_search": [1, 2]}
    assert RandInt(randint=(4, 17)).mean() == 10 and as_dist(3).mean() == 3.0
    assert as_dist(3).describe() == "constant 3" and as_dist(3).to_tune(tune) == 3
    assert Uniform(uniform=(0.0, 0.5)).problem("epochs", is_int=True).startswith("uniform draws")
