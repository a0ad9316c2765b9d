"""The sweep's trial, as it runs on a worker: Tune's trainable.

It only wires the pure fine-tuning loop to Tune (report + checkpoint per epoch) and writes the
finished model as an ingredient; with sweep.workers_per_trial > 1 the trial runs a Ray Train
TorchTrainer whose rank 0 does the same. MLflow runs are written from the driver
(`callbacks.TrackingCallback`), so a SQLite store has a single writer and a resumed trial finds
its run.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray import tune
from safetensors.torch import load_file, save_file

from raysoup import storage
from raysoup.checkpoints import load_state_dict, read_manifest, write_ingredient
from raysoup.config import ExperimentCfg
from raysoup.orchestration.space import hparams_for
from raysoup.orchestration.trial_records import DIVERGED, trial_name, write_diverged
from raysoup.workdir import WEIGHTS_FILE, Workdir


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


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _save_state(state: dict, directory: Path) -> None:
    save_file(_cpu(state["model"]), directory / WEIGHTS_FILE)
    torch.save(state["optimizer"], directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"epoch": state["epoch"]}))


def _load_state(directory: Path) -> dict:
    return {
        "model": load_file(directory / WEIGHTS_FILE),
        # Optimizer state is plain tensors and numbers: weights_only never unpickles code.
        "optimizer": torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True),
        "epoch": json.loads((directory / "state.json").read_text())["epoch"],
    }


def _resume_state(ckpt) -> dict | None:
    """The training state in the checkpoint Tune restores the trial from, or None (the trial
    starts over) when its files are gone: with `num_to_keep=1` the sweep's driver deletes a
    checkpoint once it registers a newer one, and a driver killed before it next saved its
    experiment state restores the trial from the deleted one. Training is deterministic, so
    starting over writes the same ingredient; failing would fail every retry."""
    with ckpt.as_directory() as d:
        if not (Path(d) / WEIGHTS_FILE).exists():
            _starts_over(ckpt)
            return None
        return _load_state(Path(d))


class RestartsWhenCheckpointGone:
    """A mixin of the trial's Tune trainable (`with_restart`): a restore from a checkpoint whose
    directory is gone starts the trial over, for the reason `_resume_state` gives. Tune's own
    `Trainable.restore` raises there, before the trial function could decide, and the trial
    then fails every retry on the same missing path."""

    def restore(self, checkpoint_path):
        ckpt = getattr(checkpoint_path, "checkpoint", checkpoint_path)  # a _TrainingResult
        if isinstance(ckpt, str):
            ckpt = tune.Checkpoint.from_directory(ckpt)
        if isinstance(ckpt, tune.Checkpoint) and _gone(ckpt):
            _starts_over(ckpt)
            return None
        return super().restore(checkpoint_path)


def _starts_over(ckpt) -> None:
    logging.getLogger("raysoup").warning(
        "sweep: the checkpoint to resume from is gone (%s: deleted after a newer one, the "
        "driver killed before it recorded that); the trial starts over", ckpt.path)


def _gone(ckpt) -> bool:
    return ckpt.filesystem.get_file_info(ckpt.path).type == pafs.FileType.NotFound


def with_restart(trainable):
    """The trial function Tune wraps, with `RestartsWhenCheckpointGone` mixed into the class
    Tune makes of it (Tune's `__mixins__` hook, which `tune.with_parameters` carries)."""
    trainable.__mixins__ = (RestartsWhenCheckpointGone,)
    return trainable


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
    where = storage.tune_storage(Workdir(ctx.workdir).train_runs)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "ctx": ctx, "name": name},
        torch_config=TorchConfig(backend="nccl" if res.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=ctx.workers, use_gpu=res.gpu > 0,
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=where[0], storage_filesystem=where[1],
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=cfg.sweep.max_failures)),
    )
    trainer.fit()


def _record_diverged(config: dict[str, Any], ctx: TrialContext, name: str,
                     err: Exception) -> None:
    cfg = ExperimentCfg.model_validate_json(ctx.cfg_json)
    write_diverged(Path(ctx.workdir), name, str(err), hparams_for(cfg, config).model_dump())


def _train(config: dict[str, Any], ctx: TrialContext, session: TrialSession) -> None:
    from raysoup.data.sources import load_splits
    from raysoup.models.families import family_of
    from raysoup.train.batches import loader_for
    from raysoup.train.finetune import finetune

    started = time.perf_counter()  # the trial's own wall time, in its ingredient's manifest
    torch.set_num_threads(ctx.threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = ExperimentCfg.model_validate_json(ctx.cfg_json)
    workdir = Workdir(ctx.workdir)
    hp = hparams_for(cfg, config)
    name = session.name
    family = family_of(cfg.model)

    zeroshot = workdir.zeroshot
    meta = read_manifest(zeroshot)
    storage.pull(workdir.data)  # remote workdir: generated data, to this node's mirror
    model = family.skeleton(meta["model_name"], meta["num_classes"])
    model.load_state_dict(load_state_dict(zeroshot))
    splits = load_splits(cfg.data, workdir.root, progress=False)

    resume = _resume_state(ckpt) if (ckpt := session.checkpoint()) is not None else None

    def on_epoch(epoch: int, metrics: dict, state_fn) -> None:
        if ctx.heldout is not None and session.rank == 0:
            metrics["heldout_acc"] = _heldout_accuracy(model, ctx.heldout, cfg.eval.batch_size,
                                                       family)
        if session.rank != 0:  # rank 0 writes; every rank reports (Train waits for all)
            session.report({**metrics, "epoch": epoch})
            return
        if epoch == hp.epochs:  # the ingredient lands before Tune marks the trial finished
            write_ingredient(workdir.ingredient(name), _cpu(model.state_dict()), {
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

    res = cfg.sweep.resources_per_worker if session.world > 1 else cfg.sweep.resources_per_trial
    finetune(model, splits.train, hp, **family.input_args(meta["preprocess"]),
             threads=ctx.threads, resume=resume, on_epoch=on_epoch,
             loader=loader_for(cfg.data, res.cpu), shard=(session.rank, session.world),
             family=family, cache_root=str(workdir.eval_cache))


def _heldout_accuracy(model, split, batch_size: int, family) -> float:
    """The trial's model on the held-out eval cache (decoded once, before the sweep)."""
    from raysoup.evaluate.evaluator import Evaluator

    was_training = model.training
    try:
        correct, n = Evaluator(model, {"heldout": split}, batch_size, family=family).score(
            None, ["heldout"])["heldout"]
    finally:
        model.train(was_training)
    return correct / n
