"""raysoup: fine-tune many times on Ray, evaluate in parallel, average the weights (model soups).

The Python API (docs/python-api.md):

    import raysoup
    table = raysoup.run("experiments/tiny.yaml")              # the whole pipeline
    soup = raysoup.soup_checkpoints(["a.pt", "b.pt"], out="soup.safetensors")
    found = raysoup.analyze("experiments/tiny.yaml")          # why the soups work (figures)

`import raysoup` loads nothing heavy: each name is imported on first use (module __getattr__),
so the CLI's `--help` and a notebook's first cell stay fast.
"""

from __future__ import annotations

__all__ = ["HeldOut", "__version__", "analyze", "load_config", "run", "soup_checkpoints"]

# The version when raysoup is not installed (a bare checkout on PYTHONPATH); keep it equal to
# pyproject.toml's.
_SOURCE_VERSION = "0.1.0"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raysoup")
    except PackageNotFoundError:
        return _SOURCE_VERSION


def __getattr__(name: str):
    if name == "__version__":
        return _version()
    if name in ("HeldOut", "analyze", "load_config", "run", "soup_checkpoints"):
        from raysoup import api

        return getattr(api, name)
    raise AttributeError(f"module 'raysoup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
