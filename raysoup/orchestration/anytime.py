"""The anytime soup during a sweep (`soup/anytime.py` has the rule and the arithmetic).

One eval actor beside the trials holds the running soup and the preprocessed held-out split
(the eval cache, built before the sweep and reused by the evaluate stage). The driver feeds it
the finished trials in trial order, one offer at a time, without blocking Tune's loop: Tune's
callbacks `pump` it each step. Every decision is appended to `WORKDIR/anytime.jsonl` (rewritten
atomically) and logged to the sweep's MLflow run at step = trials offered (`_sweep_metrics`:
one "soup" chart group, the curve beside the best single model); a resumed sweep replays the
journal's soup (adds only) and continues with the next trial.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import ray

from raysoup import storage
from raysoup.config import ExperimentCfg
from raysoup.faults import failpoint
from raysoup.models.families import DEFAULT_FAMILY, family_of, get_family
from raysoup.soup.anytime import (
    JOINED,
    NO_INGREDIENT,
    REJECTED,
    RESTARTED,
    Offer,
    RunningSoup,
    decide,
    read_offers,
    trial_index,
)
from raysoup.workdir import Workdir, read_record

if TYPE_CHECKING:
    from raysoup.tracking import Tracker

log = logging.getLogger(__name__)

MAX_RESTARTS = 3


class SoupActor:
    """The eval actor's class (plain: `ray.remote` is applied where it is started)."""

    def __init__(self, model_name: str, num_classes: int, heldout, batch_size: int,
                 threads: int, family: str = DEFAULT_FAMILY):
        import torch

        from raysoup.evaluate.evaluator import Evaluator

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model_family = get_family(family)
        evaluator = Evaluator(model_family.skeleton(model_name, num_classes),
                              {"heldout": heldout}, batch_size=batch_size, device=device,
                              family=model_family)
        self.soup = RunningSoup(evaluator)

    def replay(self, paths: list[str]) -> int:
        self.soup.replay([Path(p) for p in paths])
        return self.soup.k

    def accuracy_of(self, path: str) -> tuple[int, int]:
        return self.soup.accuracy_of(Path(path))

    def offer(self, path: str) -> dict:
        return self.soup.offer(Path(path))

    def apply(self, outcome: str) -> int:
        {RESTARTED: self.soup.restart, JOINED: self.soup.commit}.get(
            outcome, self.soup.reject)()
        return self.soup.k


def _acc(scores: tuple[int, int]) -> float:
    correct, n = scores
    return correct / n if n else float("nan")


class AnytimeSoup:
    """Driver side: which trials have ended, the journal, the actor's one offer in flight.

    Tune's callbacks and the soup-aware searcher reach the live one through the sweep's
    session (session.py), never through pickles."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path, tracker: Tracker | None,
                 parent_run: str | None, heldout_split, model_name: str, num_classes: int):
        self.cfg, self.workdir = cfg, Workdir(workdir)
        self.tracker, self.parent_run = tracker, parent_run
        self.keys = sorted(cfg.sweep.space)
        self.offers = read_offers(self.workdir.root)
        failed = next((i for i, o in enumerate(self.offers) if o.reason == "failed"), None)
        if failed is not None:  # a failed trial is retried by the resumed sweep: offer it again
            self.offers = self.offers[:failed]
        self.ended: dict[int, tuple[str, str]] = {}  # index -> (trial, reason or "")
        a = cfg.sweep.anytime
        actor = ray.remote(num_cpus=a.cpus, num_gpus=a.gpus)(SoupActor)
        family = family_of(cfg.model).name
        self._start = lambda: actor.remote(model_name, num_classes, heldout_split,
                                           cfg.eval.batch_size, max(1, int(a.cpus)), family)
        self._inflight: tuple[int, ray.ObjectRef] | None = None
        self.restarts = 0
        self._start_actor()
        # The first trial's gain is over the zero-shot model; measured while trials start.
        self._zeroshot = self.actor.accuracy_of.remote(str(self.workdir.zeroshot))
        if self.offers:
            log.info("anytime soup: resumed after %d trials (soup of %d, held-out %.4f)",
                     len(self.offers), len(self.offers[-1].soup), self.offers[-1].soup_heldout or 0.0)

    def _start_actor(self) -> None:
        """A fresh actor holding the journal's soup (rebuilt by adds: no evaluation)."""
        self.actor = self._start()
        members = self.offers[-1].soup if self.offers else ()
        if members:
            self.actor.replay.remote([str(self.ingredient(m)) for m in members])

    def _actor_lost(self, err: Exception) -> None:
        # The actor's soup lives in its memory: a replacement rebuilds it from the journal.
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise RuntimeError(f"the anytime soup's actor keeps dying ({self.restarts} "
                               f"times); last error: {err}") from err
        log.warning("anytime soup: its actor died (%s); starting another from the journal",
                    type(err).__name__)
        ray.kill(self.actor)
        self._start_actor()
        self._zeroshot = self.actor.accuracy_of.remote(str(self.workdir.zeroshot))

    def ingredient(self, name: str) -> Path:
        return self.workdir.ingredient(name)

    # ------------------------------------------------------------ what Tune tells us

    def trial_ended(self, name: str, reason: str = "") -> None:
        """A trial finished (reason "": with an ingredient) or ended without one."""
        index = trial_index(name)
        if index is not None and index >= len(self.offers):
            self.ended.setdefault(index, (name, reason))

    def scan(self, finished: list[str], without: dict[str, str]) -> None:
        """Trials that ended while no driver was listening (a resumed sweep)."""
        for name in finished:
            self.trial_ended(name)
        for name, reason in without.items():
            self.trial_ended(name, reason)

    # ------------------------------------------------------------ the offers

    @property
    def soup_heldout(self) -> float | None:
        return self.offers[-1].soup_heldout if self.offers else None

    def pump(self, wait: bool = False) -> None:
        """Decide every offer that can be decided now, in trial order; with `wait`, block
        until the trials that have ended are all offered."""
        while True:
            if self._inflight is not None:
                index, ref = self._inflight
                ready, _ = ray.wait([ref], timeout=None if wait else 0)
                if not ready:
                    return
                self._inflight = None
                try:
                    self._decide(index, ray.get(ref))
                except ray.exceptions.RayActorError as err:
                    self._actor_lost(err)  # the offer is made again, to the new actor
                continue
            index = len(self.offers)
            if index not in self.ended:
                return
            name, reason = self.ended[index]
            if reason:
                self._record(Offer(index, name, NO_INGREDIENT, self._hparams(name),
                                   soup_heldout=self.soup_heldout,
                                   soup=self.offers[-1].soup if self.offers else (),
                                   best_single=self._best(None), reason=reason))
                continue
            self._inflight = (index, self.actor.offer.remote(str(self.ingredient(name))))

    def _best(self, own: float | None) -> float | None:
        seen = [o.heldout for o in self.offers if o.heldout is not None]
        seen += [own] if own is not None else []
        return max(seen) if seen else None

    def _hparams(self, name: str) -> dict:
        try:
            record = read_record(self.ingredient(name))
        except FileNotFoundError:
            return {}
        hp = record.get("hparams", {})
        return {k: hp[k] for k in self.keys if k in hp}

    def _decide(self, index: int, scores: dict) -> None:
        name = self.ended[index][0]
        own, with_soup = _acc(scores["own"]), _acc(scores["with_soup"])
        before = self.soup_heldout
        outcome = decide(before, own, with_soup)
        size = ray.get(self.actor.apply.remote(outcome))
        members = self.offers[-1].soup if self.offers else ()
        if outcome == RESTARTED:
            members, after = (name,), own
        elif outcome == REJECTED:
            after = before
        else:
            members, after = (*members, name), with_soup
        assert len(members) == size, (members, size)
        baseline = _acc(ray.get(self._zeroshot)) if before is None else before
        self._record(Offer(index, name, outcome, self._hparams(name), heldout=own,
                           with_soup=with_soup, gain=with_soup - baseline, soup_heldout=after,
                           soup=members, best_single=self._best(own)))

    def _record(self, offer: Offer) -> None:
        self.offers.append(offer)
        self.ended.pop(offer.index, None)
        storage.write_file(self.workdir.anytime_journal,
                           "".join(json.dumps(o.to_json()) + "\n" for o in self.offers))
        step = len(self.offers)
        gain = f", gain {100 * offer.gain:+.2f}" if offer.gain is not None else ""
        log.info("anytime soup: %s %s%s → soup of %d, held-out %s", offer.trial, offer.outcome,
                 gain, len(offer.soup),
                 f"{offer.soup_heldout:.4f}" if offer.soup_heldout is not None else "-")
        if self.tracker is not None and self.parent_run is not None:
            self.tracker.during_sweep("the anytime soup's metrics", self._log, offer, step)
        failpoint("anytime.offer")

    def _log(self, offer: Offer, step: int) -> None:
        self.tracker.log_metrics(self.parent_run, _sweep_metrics(offer), step=step)
        run = self.tracker.trial_run_id(offer.trial)
        if run is not None and offer.gain is not None:
            self.tracker.log_metrics(run, {"anytime/gain": offer.gain,
                                           "anytime/heldout": offer.heldout})

    def stop(self) -> None:
        ray.kill(self.actor)


def _sweep_metrics(offer: Offer) -> dict[str, float]:
    """The anytime soup after an offer, as the sweep run's metrics: `soup/heldout` and
    `soup/best_single_heldout` (the best finished trial so far) in one chart group;
    `soup/gain` the soup's gain over that best single model (an offer's own gain, rejected
    or not, is its trial run's `anytime/gain`); `soup/size` its members."""
    metrics: dict[str, float] = {"soup/size": len(offer.soup)}
    if offer.soup_heldout is not None:
        metrics["soup/heldout"] = offer.soup_heldout
    if offer.best_single is not None:
        metrics["soup/best_single_heldout"] = offer.best_single
        if offer.soup_heldout is not None:
            metrics["soup/gain"] = offer.soup_heldout - offer.best_single
    return metrics

