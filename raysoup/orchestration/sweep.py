"""Sweep stage: Ray Tune fine-tunes the zero-shot initialisation over the search space.

The trainable only wires the pure fine-tuning loop to Tune (report + checkpoint per epoch) and
writes the finished model as an ingredient. MLflow runs are written from the driver by
`TrackingCallback`, so a SQLite store has a single writer and a resumed trial finds its run.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from ray import tune
from safetensors.torch import load_file, save_file

from raysoup import storage
from raysoup.checkpoints import list_ingredients, load_state_dict, read_manifest, write_ingredient
from raysoup.checkpoints.ingredient import remove_stale_tmp
from raysoup.config import DATA_PARALLEL_DRIVER_CPU, ConfigError, ExperimentCfg, TrainHParams
from raysoup.faults import failpoint
from raysoup.orchestration import metrics, search
from raysoup.orchestration.anytime import AnytimeCallback, AnytimeSoup
from raysoup.search.distributions import as_dist
from raysoup.soup.anytime import read_offers, trial_index

if TYPE_CHECKING:  # mlflow costs a trial process ~1 s to import; only the driver tracks
    from raysoup.tracking import Tracker

log = logging.getLogger(__name__)

SWEEP_DIR = "tune"
SWEEP_NAME = "sweep"
TRAIN_DIR = "train"  # WORKDIR/tune/train/<trial>: the Ray Train run of a data-parallel trial
# A diverged trial leaves ingredients/<name>/manifest.json with this kind and no tensor file:
# it is a finished trial, but not an ingredient (list_ingredients needs the tensor file), so
# evaluation and soups never see it.
DIVERGED = "diverged"
# A trial the scheduler (sweep.scheduler: asha) stopped early likewise leaves a record of this
# kind: its last checkpoint is an under-trained model, not an ingredient of any soup.
STOPPED = "stopped"


class SweepError(RuntimeError):
    pass


class SweepSettingsChanged(ConfigError):
    """A resumed sweep would silently keep settings the config now changes."""


def trial_name(trial_id: str) -> str:
    """Tune's ids end in a 5-digit counter (`<uuid>_00003`); ingredients get stable names."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return f"trial-{int(suffix):03d}" if suffix.isdigit() else f"trial-{trial_id}"


def param_space(space: dict[str, Any], grid: bool = False) -> dict[str, Any]:
    """Tune's search space; `grid`: every `choice` becomes a grid dimension."""
    return {name: as_dist(dist).to_tune(tune, grid) for name, dist in space.items()}


def tune_space(cfg: ExperimentCfg) -> dict[str, Any]:
    """The sweep's Tune param space (under search: grid, the choices are grid dimensions)."""
    return param_space(cfg.sweep.space, grid=cfg.sweep.search == "grid")


def hparams_for(cfg: ExperimentCfg, sampled: dict[str, Any]) -> TrainHParams:
    return TrainHParams.model_validate({**cfg.sweep.base.model_dump(), **sampled})


@dataclass(frozen=True)
class TrialContext:
    """Large constants for every trial, passed by `tune.with_parameters` (not the param space)."""

    cfg_json: str
    workdir: str
    threads: int
    workers: int = 1  # sweep.workers_per_trial: > 1 runs a TorchTrainer in the trial
    # The held-out split's eval cache (EvalSplit) when trials report held-out accuracy each
    # epoch (sweep.scheduler: asha, sweep.search: optuna); None otherwise.
    heldout: Any = None


# ---------------------------------------------------------------- trainable (runs on workers)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _save_state(state: dict, directory: Path) -> None:
    save_file(_cpu(state["model"]), directory / "model.safetensors")
    torch.save(state["optimizer"], directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"epoch": state["epoch"]}))


def _load_state(directory: Path) -> dict:
    return {
        "model": load_file(directory / "model.safetensors"),
        # Optimizer state is plain tensors and numbers: weights_only never unpickles code.
        "optimizer": torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True),
        "epoch": json.loads((directory / "state.json").read_text())["epoch"],
    }


@dataclass
class TrialSession:
    """Where a training process reports to: Tune (a single-process trial) or Ray Train (one
    data-parallel worker of a trial, which Tune hears of through rank 0)."""

    name: str  # the trial's ingredient name
    rank: int = 0
    world: int = 1
    in_train: bool = False

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if self.in_train:
            import ray.train

            ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            ray.train.report(metrics, checkpoint=ckpt)
        else:
            ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report(metrics, checkpoint=ckpt)

    def checkpoint(self):
        if self.in_train:
            import ray.train

            return ray.train.get_checkpoint()
        return tune.get_checkpoint()


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune's trainable (its name is saved with the sweep; a restore checks it)."""
    name = trial_name(tune.get_context().get_trial_id())
    if ctx.workers > 1:
        _train_data_parallel(config, ctx, name)
    else:
        _train_guarded(config, ctx, TrialSession(name))


def _train_guarded(config: dict[str, Any], ctx: TrialContext, session: TrialSession) -> None:
    from raysoup.train.finetune import Diverged

    try:
        _train(config, ctx, session)
    except Diverged as err:
        # Training is deterministic: a retry diverges again. The trial ends (not errors) with
        # a record, so the sweep can finish with its other trials.
        if session.rank == 0:
            _record_diverged(config, ctx, session.name, err)
        session.report({DIVERGED: 1})  # tells the driver's callbacks how the trial ended


def _train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial (sweep.workers_per_trial > 1)."""
    import ray.train

    # Ray Train sends every worker's INFO lines (each report; open_clip's model building) to
    # the driver's console; they stay in the session's logs/train files.
    for logger in (logging.getLogger(), logging.getLogger("ray.train")):
        for handler in logger.handlers:
            if type(handler).__name__ != "SessionFileHandler":  # the console, not the files
                handler.setLevel(logging.WARNING)
    context = ray.train.get_context()
    _train_guarded(loop["config"], loop["ctx"],
                   TrialSession(loop["name"], context.get_world_rank(),
                                context.get_world_size(), in_train=True))


def _train_data_parallel(config: dict[str, Any], ctx: TrialContext, name: str) -> None:
    """Ray Train's TorchTrainer inside the Tune trial: sweep.workers_per_trial DDP workers.
    Its run lives in WORKDIR/tune/train/<trial>: a restarted trial (driver or node lost)
    continues from the run's last epoch checkpoint, and Train restarts a lost worker group
    from it too (sweep.max_failures)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = ExperimentCfg.model_validate_json(ctx.cfg_json)
    res = cfg.sweep.resources_per_worker
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "ctx": ctx, "name": name},
        torch_config=TorchConfig(backend="nccl" if res.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=ctx.workers, use_gpu=res.gpu > 0,
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=storage.display(Path(ctx.workdir) / SWEEP_DIR / TRAIN_DIR),
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=cfg.sweep.max_failures)),
    )
    trainer.fit()


def _record_diverged(config: dict[str, Any], ctx: TrialContext, name: str,
                     err: Exception) -> None:
    cfg = ExperimentCfg.model_validate_json(ctx.cfg_json)
    record = {"kind": DIVERGED, "status": DIVERGED, "trial": name, "error": str(err),
              "hparams": hparams_for(cfg, config).model_dump()}
    storage.write_file(Path(ctx.workdir) / "ingredients" / name / "manifest.json",
                       json.dumps(record, indent=1, sort_keys=True))


def _train(config: dict[str, Any], ctx: TrialContext, session: TrialSession) -> None:
    from raysoup.data.sources import load_splits
    from raysoup.models.classifier import classifier_skeleton
    from raysoup.train.batches import loader_for
    from raysoup.train.finetune import finetune

    started = time.perf_counter()  # the trial's own wall time, apart from Tune's overhead
    torch.set_num_threads(ctx.threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = ExperimentCfg.model_validate_json(ctx.cfg_json)
    workdir = Path(ctx.workdir)
    hp = hparams_for(cfg, config)
    name = session.name

    zeroshot = workdir / "ingredients" / "zeroshot"
    meta = read_manifest(zeroshot)
    storage.pull(workdir / "data")  # remote workdir: generated data, to this node's mirror
    model = classifier_skeleton(meta["model_name"], meta["num_classes"])
    model.load_state_dict(load_state_dict(zeroshot))
    splits = load_splits(cfg.data, workdir, progress=False)

    resume = None
    if (ckpt := session.checkpoint()) is not None:
        with ckpt.as_directory() as d:
            resume = _load_state(Path(d))

    def on_epoch(epoch: int, metrics: dict, state_fn) -> None:
        if ctx.heldout is not None and session.rank == 0:
            metrics["heldout_acc"] = _heldout_accuracy(model, ctx.heldout, cfg.eval.batch_size)
        if session.rank != 0:  # rank 0 writes; every rank reports (Train waits for all)
            session.report({**metrics, "epoch": epoch})
            return
        if epoch == hp.epochs:  # the ingredient lands before Tune marks the trial finished
            write_ingredient(workdir / "ingredients" / name, _cpu(model.state_dict()), {
                "kind": "ingredient", "model_name": meta["model_name"],
                "num_classes": meta["num_classes"], "preprocess": meta["preprocess"],
                "base_model": meta.get("base_model"), "hparams": hp.model_dump(),
                "metrics": metrics,
                # this process's time, start to ingredient; a resumed trial counts its last part
                "train_seconds": time.perf_counter() - started,
                **({"workers": session.world} if session.world > 1 else {}),
            })
        with tempfile.TemporaryDirectory() as d:
            _save_state(state_fn(), Path(d))
            session.report({**metrics, "epoch": epoch}, Path(d))

    pre = meta["preprocess"]
    res = cfg.sweep.resources_per_worker if session.world > 1 else cfg.sweep.resources_per_trial
    finetune(model, splits.train, hp, image_size=pre["image_size"], mean=pre["mean"],
             std=pre["std"], threads=ctx.threads, resume=resume, on_epoch=on_epoch,
             loader=loader_for(cfg.data, res.cpu), shard=(session.rank, session.world))


def _heldout_accuracy(model, split, batch_size: int) -> float:
    """The trial's model on the held-out eval cache (decoded once, before the sweep)."""
    from raysoup.evaluate.evaluator import Evaluator

    was_training = model.training
    try:
        correct, n = Evaluator(model, {"heldout": split}, batch_size).score(
            None, ["heldout"])["heldout"]
    finally:
        model.train(was_training)
    return correct / n


# ---------------------------------------------------------------- tracking (runs on the driver)


class TrackingCallback(tune.Callback):
    # `Tuner.restore` unpickles its callbacks from the sweep's saved state. They must report to
    # this driver's tracker — after a move to another machine its store may be elsewhere (a
    # remote workdir's mirror, another tracking URI) — so the tracker is not pickled: the
    # restored callback takes the live one (`run_sweep` sets it).
    live: ClassVar[tuple[Tracker, str] | None] = None

    def __init__(self, tracker: Tracker, parent_run: str, base: dict[str, Any]):
        self.tracker = tracker
        self.parent_run = parent_run
        self.base = base
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tracker": None, "parent_run": None, "_runs": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if TrackingCallback.live is not None:
            self.tracker, self.parent_run = TrackingCallback.live

    def _run(self, trial) -> str:
        name = trial_name(trial.trial_id)
        if name not in self._runs:
            params = {**self.base, **trial.config, "trial_id": trial.trial_id}
            self._runs[name] = self.tracker.trial_run(self.parent_run, name, params)
        return self._runs[name]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keys = ("train_loss", "train_acc", "lr", "images_per_s", "skipped_images")
        self.tracker.log_metrics(self._run(trial), {k: result[k] for k in keys if k in result},
                                 step=int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.end_trial(self._run(trial), trial_name(trial.trial_id), _diverged(trial))
        self.tracker.persist()
        failpoint("sweep.trial_complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.end(self._run(trial), ok=False)


def _diverged(trial) -> bool:
    return bool((trial.last_result or {}).get(DIVERGED))


def trial_end_reason(trial, epochs: int) -> str:
    """How a completed trial ended without an ingredient ("" if it has one); `epochs`: the
    sweep's base, for trials that do not sample theirs."""
    if _diverged(trial):
        return DIVERGED
    epochs = int(trial.config.get("epochs", epochs))
    last = int((trial.last_result or {}).get("epoch", 0) or 0)
    if epochs and last < epochs:
        return f"{STOPPED} at epoch {last}"
    return ""


class EndingsCallback(tune.Callback):
    """Writes the record of a trial the scheduler stopped early (it cannot: Tune ended it)."""

    def __init__(self, workdir: str, base: dict[str, Any]):
        self.workdir, self.base = workdir, base

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = trial_end_reason(trial, self.base["epochs"])
        if reason.startswith(STOPPED):
            name = trial_name(trial.trial_id)
            record = {"kind": STOPPED, "status": STOPPED, "trial": name, "reason": reason,
                      "epoch": int(trial.last_result.get("epoch", 0)),
                      "heldout_acc": trial.last_result.get("heldout_acc"),
                      "hparams": {**self.base, **trial.config}}
            storage.write_file(Path(self.workdir) / "ingredients" / name / "manifest.json",
                               json.dumps(record, indent=1, sort_keys=True, default=str))


class ProgressCallback(tune.Callback):
    """One line per trial epoch on the console (Tune's own tables are off: verbose=0).

    Also applies this run's `sweep.max_failures` (`run_sweep` sets `max_failures`): a restored
    sweep's trials, and those its restored search algorithm creates, carry the value the sweep
    started with."""

    max_failures: ClassVar[int | None] = None

    def __init__(self, num_samples: int, epochs: int):
        self.num_samples, self.epochs = num_samples, epochs
        self.finished = 0

    def setup(self, **info):
        metrics.sweep_started()

    def on_step_begin(self, iteration, trials, **info):
        if ProgressCallback.max_failures is not None:
            for trial in trials:
                trial.max_failures = ProgressCallback.max_failures

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if DIVERGED in result:
            return
        skipped = result.get("skipped_images") or 0
        log.info("sweep: %s epoch %s/%s  loss %.3f  %.0f img/s%s", trial_name(trial.trial_id),
                 result.get("epoch"), trial.config.get("epochs", self.epochs),
                 result.get("train_loss", float("nan")), result.get("images_per_s", 0.0),
                 f"  ({skipped} corrupt images skipped)" if skipped else "")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        metrics.trial_finished()
        reason = trial_end_reason(trial, self.epochs)
        how = ("diverged (non-finite loss; no ingredient)" if reason == DIVERGED
               else f"{reason} by the scheduler (no ingredient)" if reason else "finished")
        log.info("sweep: %s %s (%d/%d)", trial_name(trial.trial_id), how, self.finished,
                 self.num_samples)

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.warning("sweep: %s failed (worker or node lost?); retrying from its last checkpoint",
                    trial_name(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        metrics.trial_failed()
        log.warning("sweep: %s failed: see %s", trial_name(trial.trial_id), trial.path)


# ---------------------------------------------------------------- driver


def finished_trials(workdir: Path) -> list[str]:
    """Trials that produced an ingredient."""
    return [p.name for p in list_ingredients(workdir / "ingredients")
            if read_manifest(p).get("kind") == "ingredient"]


def ended_without_ingredient(workdir: Path) -> dict[str, str]:
    """Finished trials without an ingredient -> how they ended (DIVERGED, "stopped at ...")."""
    root = workdir / "ingredients"
    files = set(storage.list_files(root))
    names = sorted({rel.split("/", 1)[0] for rel in files if rel.endswith("/manifest.json")}
                   - {rel.split("/", 1)[0] for rel in files if rel.endswith("/model.safetensors")})
    out = {}
    for name in names:
        if name.startswith("."):
            continue
        record = json.loads(storage.read_text(root / name / "manifest.json"))
        if record.get("kind") in (DIVERGED, STOPPED):
            out[name] = record.get("reason", record["kind"])
    return out


def diverged_trials(workdir: Path) -> list[str]:
    """Trials that ended with a non-finite loss: finished, but without an ingredient."""
    return _diverged_of(ended_without_ingredient(workdir))


def _diverged_of(ended: dict[str, str]) -> list[str]:
    return [n for n, how in ended.items() if how == DIVERGED]


# Tune restores these from its saved state (the pickled TuneConfig: the search algorithm's
# max_concurrent, the controller's reuse_actors), so an unfinished sweep cannot change them.
# sweep.max_failures is applied on resume (ProgressCallback).
KEPT_ON_RESUME = ("max_concurrent", "reuse_actors")


def sweep_path(workdir: Path) -> str:
    """Tune's experiment directory: a local path or the workdir's URI."""
    return storage.display(workdir / SWEEP_DIR / SWEEP_NAME)


def ended_trials(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """(trials with an ingredient, trials that ended without one -> how)."""
    return finished_trials(workdir), ended_without_ingredient(workdir)


def sweep_to_run(cfg: ExperimentCfg, workdir: Path) -> bool:
    """Trials are still to run (a new or an unfinished sweep), or the anytime soup has not
    been offered every finished one."""
    done, ended = ended_trials(workdir)
    return (len(done) + len(ended) < cfg.sweep.trials
            or anytime_behind(cfg, workdir, [*done, *ended]))


def anytime_behind(cfg: ExperimentCfg, workdir: Path, ended: list[str]) -> bool:
    """The anytime soup has not been offered every one of the `ended` trials."""
    if not cfg.sweep.anytime.enabled:
        return False
    return len(read_offers(workdir)) < sum(trial_index(n) is not None for n in ended)


def unfinished_sweep(cfg: ExperimentCfg, workdir: Path) -> bool:
    """A sweep that a run would resume from Tune's saved state (needs no Ray session)."""
    done, ended = ended_trials(workdir)
    return len(done) + len(ended) < cfg.sweep.trials and tune.Tuner.can_restore(
        sweep_path(workdir))


def refuse_kept_changes(started: dict[str, Any], cfg: ExperimentCfg,
                        workdir: str = "WORKDIR") -> None:
    """Raise SweepSettingsChanged if `cfg` changes a setting the unfinished sweep keeps."""
    changed = {k: v for k, v in started.items()
               if k in KEPT_ON_RESUME and v is not None and v != getattr(cfg.sweep, k)}
    if changed:
        lines = "\n".join(f"  sweep.{k}: {v!r} when the sweep started, now "
                           f"{getattr(cfg.sweep, k)!r}" for k, v in changed.items())
        sets = " ".join(f"--set sweep.{k}={str(v).lower()}" for k, v in changed.items())
        raise SweepSettingsChanged(
            f"the unfinished sweep cannot change these settings (Ray Tune restores them from "
            f"its saved state):\n{lines}\nRe-run with {sets} (or `raysoup resume {workdir}`) to "
            "finish it; sweep.max_failures may change.")


def _check_restorable(tuner, cfg: ExperimentCfg) -> None:
    """The restored Tuner's own settings, in case the workdir's experiment.yaml was not
    checked first (run_pipeline checks it in snapshot_config, before writing it)."""
    saved = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if saved is None:
        return  # Ray client mode: the restored config lives in the client server
    refuse_kept_changes({"max_concurrent": getattr(saved.search_alg, "max_concurrent", None),
                         "reuse_actors": getattr(saved, "reuse_actors", None)}, cfg)


def _close_runs(tracker: Tracker, done: list[str], diverged: list[str]) -> None:
    closed = tracker.close_trial_runs(done, diverged)
    if closed:
        log.info("sweep: closed the MLflow runs of %s (their outcome landed after an "
                 "interrupted driver last saw them)", ", ".join(closed))


def run_sweep(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
              heldout=None) -> list[str]:
    """Fine-tune `sweep.num_samples` trials; resumes an interrupted sweep from its state.
    Returns the ingredients (a diverged or stopped trial counts towards num_samples but is
    none). `heldout`: the held-out split's eval cache, for the anytime soup and for trials
    that report held-out accuracy."""
    done, ended = ended_trials(workdir)
    if len(done) + len(ended) >= cfg.sweep.trials:
        log.info("sweep: %d ingredients already present, skipping", len(done))
        _close_runs(tracker, done, _diverged_of(ended))
        if heldout is not None and anytime_behind(cfg, workdir, [*done, *ended]):
            # The driver died after the last trial, before its offer: catch up.
            anytime = _start_anytime(cfg, workdir, tracker, parent_run, heldout, done, ended)
            try:
                anytime.pump(wait=True)
            finally:
                _stop_anytime(anytime)
        return done
    # Trials killed while writing their ingredient leave a hidden temp dir; no trial runs yet.
    remove_stale_tmp(workdir / "ingredients")

    if search.reports_heldout(cfg) and heldout is None:
        raise ValueError(f"sweep.scheduler: {cfg.sweep.scheduler} / sweep.search: "
                         f"{cfg.sweep.search} score trials on held-out: run_sweep needs the "
                         "held-out split's eval cache")
    workers = cfg.sweep.workers_per_trial
    res = cfg.sweep.resources_per_worker if workers > 1 else cfg.sweep.resources_per_trial
    ctx = TrialContext(cfg.model_dump_json(), str(workdir), threads=max(1, int(res.cpu)),
                       workers=workers, heldout=heldout if search.reports_heldout(cfg) else None)
    trial_res = ({"cpu": DATA_PARALLEL_DRIVER_CPU, "gpu": 0} if workers > 1
                 else {"cpu": res.cpu, "gpu": res.gpu})
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), trial_res)
    # Tune keeps its state next to the ingredients: a local path or the workdir's URI.
    path = sweep_path(workdir)
    TrackingCallback.live = (tracker, parent_run)
    ProgressCallback.max_failures = cfg.sweep.max_failures
    anytime = _start_anytime(cfg, workdir, tracker, parent_run, heldout, done, ended)
    try:
        if tune.Tuner.can_restore(path):
            log.info("sweep: resuming from %s", path)
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
            _check_restorable(tuner, cfg)
        else:
            base = cfg.sweep.base.model_dump()
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(cfg),
                tune_config=tune.TuneConfig(
                    num_samples=cfg.sweep.num_samples,
                    search_alg=search.search_alg(cfg),
                    scheduler=search.scheduler(cfg),
                    reuse_actors=cfg.sweep.reuse_actors,  # see SweepCfg
                ),
                run_config=tune.RunConfig(
                    name=SWEEP_NAME,
                    storage_path=storage.display(workdir / SWEEP_DIR),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
                    callbacks=[TrackingCallback(tracker, parent_run, base),
                               EndingsCallback(str(workdir), base),
                               ProgressCallback(cfg.sweep.trials, cfg.sweep.base.epochs),
                               AnytimeCallback()],
                    verbose=0,
                ),
            )
        grid = tuner.fit()
        failed = [r.path for r in grid if r.error is not None]
        done, ended = ended_trials(workdir)
        if anytime is not None:
            anytime.scan(done, ended)
            anytime.pump(wait=True)  # the trials that ended last are offered too
    finally:
        _stop_anytime(anytime)
    diverged = _diverged_of(ended)
    _close_runs(tracker, done, diverged)
    if diverged:
        tracker.set_tags(parent_run, {"raysoup.diverged": ",".join(diverged)})
        log.warning("sweep: %d trial(s) diverged, left out of evaluation and soups: %s",
                    len(diverged), ", ".join(diverged))
    if stopped := sorted(set(ended) - set(diverged)):
        log.info("sweep: %d trial(s) stopped early by the scheduler (no ingredients): %s",
                 len(stopped), ", ".join(stopped))
    if failed or len(done) + len(ended) < cfg.sweep.trials:
        # fit() also returns (without raising) after SIGINT: an interrupted sweep is not finished.
        raise SweepError(f"sweep incomplete: {len(done)}/{cfg.sweep.trials} ingredients "
                         f"({len(ended)} diverged or stopped), failed trials: "
                         f"{failed or 'none'}; re-run the same command to resume")
    return done


def _start_anytime(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
                   heldout, done: list[str], ended: dict[str, str]) -> AnytimeSoup | None:
    """The live anytime soup (None when off or without a held-out split), with the trials
    that ended before this driver started (`done`, `ended`: a resumed sweep) queued."""
    if not cfg.sweep.anytime.enabled or heldout is None:
        return None
    meta = read_manifest(workdir / "ingredients" / "zeroshot")
    soup = AnytimeSoup(cfg, workdir, tracker, parent_run, heldout, meta["model_name"],
                       meta["num_classes"])
    soup.scan(done, ended)
    AnytimeSoup.live = soup
    return soup


def _stop_anytime(soup: AnytimeSoup | None) -> None:
    if soup is not None:
        soup.stop()
        AnytimeSoup.live = None
