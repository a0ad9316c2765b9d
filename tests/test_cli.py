"""The command line as a user meets it: `--version`, `python -m raysoup`, help on every option
with its default, and a fast `--help`."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import raysoup
from raysoup.cli import HelpFormatter, _parser, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def parsers(parser: argparse.ArgumentParser, name: str = "raysoup"):
    """(command line, parser) for the top level and every subcommand, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from parsers(child, f"{name} {sub}")


def options():
    return [(name, action) for name, p in parsers(_parser()) for action in p._actions
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction
                                          | argparse._VersionAction)]


def test_every_option_has_help_and_shows_its_default():
    missing, hidden = [], []
    for name, action in options():
        label = f"{name} {'/'.join(action.option_strings) or action.dest}"
        if not (action.help or "").strip():
            missing.append(label)
            continue
        shown = HelpFormatter("raysoup")._get_help_string(action) % vars(action)
        default = action.default
        if not (default is None or default is False or default == []) and \
                str(default) not in shown:
            hidden.append(f"{label} (default {default!r})")
    assert not missing, f"options without help: {missing}"
    assert not hidden, f"options whose help hides the default: {hidden}"


def test_every_subcommand_formats_its_defaults():
    for name, p in parsers(_parser()):
        assert p.formatter_class is HelpFormatter, name


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"raysoup {raysoup.__version__}"


def test_python_dash_m_and_a_light_help():
    """`python -m raysoup --help` works and imports none of the heavy libraries (the time a
    `--help` takes is their import: < 1 s without them)."""
    code = ("import runpy, sys\n"
            "sys.argv = ['raysoup', '--help']\n"
            "try:\n    runpy.run_module('raysoup', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = {'torch', 'ray', 'pydantic', 'pyarrow', 'numba', 'mlflow', 'yaml'}\n"
            "print('HEAVY', sorted(heavy & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=ENV, timeout=60).stdout
    assert "usage: raysoup" in out and "--version" in out
    assert "HEAVY []" in out
    done = subprocess.run([sys.executable, "-m", "raysoup", "--version"], capture_output=True,
                          text=True, env=ENV, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("raysoup ")


def test_a_bad_override_is_named_in_one_line(capsys):
    code = main(["run", str(ROOT / "experiments" / "tiny.yaml"), "--dry-run",
                 "--set", "sweep.num_sample=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[1] == ("  sweep.num_sample: unknown field; did you mean "
                                   "sweep.num_samples? (from --set sweep.num_sample=3)")
