"""The import floors: what loading the config and the CLI costs, and the layer contracts
(pyproject.toml, [tool.importlinter]) that keep each stage's imports pointing down."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "ray", "mlflow")


@pytest.mark.parametrize("module", ["raysoup.config", "raysoup.cli"])
def test_light_imports(module):
    # A fresh interpreter: this test process has imported everything already.
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == [], f"importing {module} imports {out.stdout.split()}"


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.is_file():
        pytest.fail(f"{lint} not found: install the test extra (pip install -e '.[test]')")
    # --no-cache: nothing written into the checkout.
    out = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
