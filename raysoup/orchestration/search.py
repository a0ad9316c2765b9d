"""How the sweep proposes and stops trials: `sweep.search` and `sweep.scheduler` as Tune objects.

- random, grid: Tune's BasicVariantGenerator over the space (grid: each `choice` a grid_search
  dimension, num_samples draws of the rest per grid point).
- optuna: Tune's OptunaSearch (TPE) on the trials' final held-out accuracy.
- soup: `SoupSearcher`, whose objective is the trial's effect on the anytime soup.
- asha: Tune's AsyncHyperBandScheduler on the held-out accuracy trials report each epoch.

Searchers other than random run under `IndexedSearchGenerator` (trial_ids.py), which numbers
trials like the random generator does (`<prefix>_00007`), so their ingredients are trial-007
too and the anytime soup can take them in order.

A grown sweep (sweep.num_samples raised in an existing workdir) runs its new trials as a Tune
experiment of their own (`segment_alg`), numbered on from the earlier ones, each proposed
exactly as a fresh sweep of the larger size would propose it: random and grid replay Tune's
seeded variant sequence (`seeded_variants`), the soup-aware search is a function of the
trial's index and the anytime offers. Optuna's proposals depend on the order earlier trials
finished in; its sweeps do not grow (`resume.check_growth`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
from ray.tune.search.variant_generator import generate_variants

from raysoup.config import ConfigError, ExperimentCfg
from raysoup.orchestration.session import SessionLink, SweepSession
from raysoup.orchestration.space import tune_space
from raysoup.orchestration.trial_ids import IndexedSearchGenerator
from raysoup.search.proposer import propose

HELDOUT_METRIC = "heldout_acc"  # reported each epoch by trials under asha and optuna


class SoupSearcher(Searcher):
    """Proposes trial i from the anytime soup's offers of trials 0..i-L (`raysoup.search.proposer`).

    Stateless beyond its settings: the offers live in the anytime journal, so a restored
    sweep's searcher proposes exactly what the interrupted one would have. While an offer it
    needs is not decided yet, `suggest` returns None (Tune asks again next step). The offers
    are the live anytime soup's, which it reaches through the sweep's session."""

    def __init__(self, cfg: ExperimentCfg, session: SweepSession | None = None):
        super().__init__()  # no Tune metric: its objective is the anytime soup's
        self.link = SessionLink(session)
        self.space = dict(cfg.sweep.space)
        self.seed, self.settings = cfg.sweep.seed, cfg.sweep.soup_search
        self.lag = cfg.sweep.max_concurrent

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the config's (`self.space`), drawn by `propose`

    def suggest(self, trial_id: str) -> dict | None:
        index = int(trial_id.rsplit("_", 1)[-1])
        need = index - self.lag + 1 if index >= self.settings.initial else 0
        live = self.link.session.anytime if self.link.session is not None else None
        if live is not None:
            # With no trial running, Tune's loop waits in here (asking each second) without
            # calling the callbacks that pump the anytime soup otherwise.
            live.pump()
        offers = live.offers if live is not None else []
        if need > 0 and len(offers) < need:
            return None
        return propose(self.space, self.seed, index, offers[: max(need, 0)], self.settings)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass  # outcomes reach the search through the anytime soup, in trial order

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"seed": self.seed}))

    def restore(self, checkpoint_path: str) -> None:
        pass  # nothing beyond the settings the trainable's config restores


def seeded_variants(cfg: ExperimentCfg, end: int) -> list[dict]:
    """The configs of trials 0..end-1 of a random or grid sweep, as Tune's
    BasicVariantGenerator(random_state=seed) draws them: one variant per grid point, a
    round per sample, every draw from one generator in that order, so the first trials of a
    larger sweep are those of a smaller one (tests/test_sweep_outcomes.py holds Tune to it)."""
    rng = _BackwardsCompatibleNumpyRng(cfg.sweep.seed)
    out: list[dict] = []
    while len(out) < end:
        round_ = [spec["config"] for _, spec in generate_variants(
            {"config": tune_space(cfg)}, constant_grid_search=False, random_state=rng)]
        out.extend(round_)
    return out[:end]


class ReplaySearcher(Searcher):
    """Proposes trial i as `variants[i]`: the new trials of a grown random or grid sweep."""

    def __init__(self, variants: list[dict]):
        super().__init__()
        self.variants = variants

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the variants are drawn already

    def suggest(self, trial_id: str) -> dict | None:
        return dict(self.variants[int(trial_id.rsplit("_", 1)[-1])])

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(len(self.variants)))

    def restore(self, checkpoint_path: str) -> None:
        pass  # the variants are pickled with the searcher


def segment_alg(cfg: ExperimentCfg, first: int, end: int,
                session: SweepSession | None = None):
    """The search algorithm of trials first..end-1 (`search_alg` for the first segment)."""
    if first == 0:
        return search_alg(cfg, session)
    if cfg.sweep.search == "soup":
        searcher = SoupSearcher(cfg, session)
    elif cfg.sweep.search in ("random", "grid"):
        searcher = ReplaySearcher(seeded_variants(cfg, end))
    else:
        raise ConfigError(f"sweep.search: {cfg.sweep.search} sweeps cannot grow")
    limited = ConcurrencyLimiter(searcher, max_concurrent=cfg.sweep.max_concurrent)
    return IndexedSearchGenerator(limited, start=first)


def search_alg(cfg: ExperimentCfg, session: SweepSession | None = None):
    """Tune's search algorithm for sweep.search; `session`: the sweep's (the soup-aware
    searcher follows its anytime soup)."""
    s = cfg.sweep
    if s.search in ("random", "grid"):  # grid: the param space's grid_search dimensions
        # TuneConfig.max_concurrent_trials is ignored (with a warning) for a SearchGenerator
        # such as BasicVariantGenerator; the generator limits it itself.
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)
    if s.search == "soup":
        searcher = SoupSearcher(cfg, session)
    else:
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise ConfigError("sweep.search: optuna needs the optuna package: "
                              "pip install 'raysoup[optuna]'") from err
        searcher = OptunaSearch(metric=HELDOUT_METRIC, mode="max",
                                sampler=optuna.samplers.TPESampler(seed=s.seed))
    return IndexedSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent))


def scheduler(cfg: ExperimentCfg):
    s = cfg.sweep
    if s.scheduler == "fifo":
        return FIFOScheduler()
    return AsyncHyperBandScheduler(time_attr="epoch", metric=HELDOUT_METRIC, mode="max",
                                   max_t=s.base.epochs, grace_period=s.asha.grace_period,
                                   reduction_factor=s.asha.reduction_factor)


def reports_heldout(cfg: ExperimentCfg) -> bool:
    """Trials measure held-out accuracy each epoch (for the scheduler or Optuna)."""
    return cfg.sweep.scheduler == "asha" or cfg.sweep.search == "optuna"
