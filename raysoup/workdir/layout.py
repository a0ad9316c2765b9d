"""Where a run keeps everything: the one spelling of the workdir's layout.

    WORKDIR/
      experiment.yaml            the resolved config (`snapshot.py`)
      ingredients/<name>/        model.safetensors + manifest.json (`manifest.py`); a trial
                                 that ended without weights leaves manifest.json alone
      soups/<recipe>/            recipe.json (`soup_record.py`) + shards, or an ensemble's list
      soups/.<recipe>.journal.jsonl   a merge method's decisions while it cooks
      tune/sweep/                Ray Tune's experiment state
      tune/sweep-<a>-<b>/        the same for trials a..b-1 of a grown sweep
      tune/segments.json         the sweep's Tune experiments, as [first, end) trial ranges
      tune/train/<trial>/        the Ray Train run of a data-parallel trial
      results.parquet            accuracy of every (model, split)
      anytime.jsonl              the anytime soup's decisions during the sweep
      report/                    README.md and figures
      report/analysis/           `raysoup analyze`: its tables (Parquet) and figures
      analysis/                  `raysoup analyze`'s journal of finished evaluations, logits
      cache/eval/                decoded, resized eval splits
      cache/logits/              the ingredients' logits, kept for the logit ensemble
      base/ data/                pre-trained base weights, generated data
      data/world/                the synthetic world's splits (data.world)
      .audit.json                ingredient audits (sha256, NaN/Inf), keyed by size and mtime
      mlflow.db mlartifacts/     the tracking store when tracking.uri is unset

Paths only: nothing here touches the disk, so a remote workdir (its local mirror path) is
spelled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ZEROSHOT = "zeroshot"  # ingredient 0: the pre-trained model with its zero-shot head
CONFIG_SNAPSHOT = "experiment.yaml"
RESULTS_FILE = "results.parquet"
RECIPE_FILE = "recipe.json"
AUDIT_FILE = ".audit.json"
SWEEP_DIR = "tune"
SWEEP_NAME = "sweep"  # Tune's experiment name: its state is in tune/sweep
TRAIN_DIR = "train"  # tune/train/<trial>: the Ray Train run of a data-parallel trial
EVAL_CACHE_DIR = Path("cache") / "eval"
LOGITS_CACHE_DIR = Path("cache") / "logits"
ANYTIME_JOURNAL = "anytime.jsonl"


def soup_journal(soups_dir: Path, recipe: str) -> Path:
    """A recipe's decision journal: hidden, next to the soups, because a soup directory
    appears only once complete."""
    return Path(soups_dir) / f".{recipe}.journal.jsonl"


@dataclass(frozen=True)
class Workdir:
    """The paths of one workdir (local, or the mirror of a remote one)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_model(cls, model_dir: Path) -> Workdir:
        """The workdir of WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name>."""
        return cls(Path(model_dir).parent.parent)

    @property
    def ingredients(self) -> Path:
        return self.root / "ingredients"

    def ingredient(self, name: str) -> Path:
        return self.ingredients / name

    @property
    def zeroshot(self) -> Path:
        return self.ingredient(ZEROSHOT)

    @property
    def soups(self) -> Path:
        return self.root / "soups"

    def soup(self, recipe: str) -> Path:
        return self.soups / recipe

    def journal(self, recipe: str) -> Path:
        return soup_journal(self.soups, recipe)

    @property
    def sweep(self) -> Path:
        return self.root / SWEEP_DIR

    @property
    def sweep_experiment(self) -> Path:
        return self.sweep / SWEEP_NAME

    @property
    def sweep_segments(self) -> Path:
        return self.sweep / "segments.json"

    @property
    def train_runs(self) -> Path:
        return self.sweep / TRAIN_DIR

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def anytime_journal(self) -> Path:
        return self.root / ANYTIME_JOURNAL

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def analysis_report(self) -> Path:
        return self.report / "analysis"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def snapshot(self) -> Path:
        return self.root / CONFIG_SNAPSHOT

    @property
    def audits(self) -> Path:
        return self.root / AUDIT_FILE

    @property
    def eval_cache(self) -> Path:
        return self.root / EVAL_CACHE_DIR

    @property
    def logits_cache(self) -> Path:
        return self.root / LOGITS_CACHE_DIR

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def world(self) -> Path:
        return self.data / "world"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"
