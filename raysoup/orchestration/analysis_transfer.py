"""Zero-shot transfer of the soups (`raysoup analyze transfer`): the models read through the
base model's text tower on a task no trial trained on (`analysis.transfer`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysoup.analysis import figures
from raysoup.analysis.transfer import (
    TRANSFER_SPLIT,
    OwnTransfer,
    TransferTask,
    colour_task,
    transfer_head,
    transfer_unavailable,
)
from raysoup.evaluate.cache import split_digest
from raysoup.evaluate.paired import paired, unpack
from raysoup.orchestration import analysis_jobs as jobs
from raysoup.orchestration.analysis import AnalysisContext, Job, Outcome
from raysoup.workdir import IngredientManifest


def run_transfer(ctx: AnalysisContext, own: OwnTransfer | None = None) -> Outcome:
    """The zero-shot model, the best single model and every weight soup, read zero-shot
    through the base's text tower on a task the sweep never trained on: `own`, the user's
    dataset (`analysis.transfer`, held by the eval actors as split TRANSFER_SPLIT), or the
    world's colours on its test images."""
    why_not = transfer_unavailable(ctx.cfg)
    if why_not:
        raise ValueError(why_not)
    if own is None and ctx.cfg.analysis.transfer is not None:
        raise ValueError("transfer: analysis.transfer is set but its dataset was not read "
                         "(`read_own_transfer`, which `run_analysis` calls)")
    task, split, labels, what = _task_of(ctx, own)
    zs_manifest = IngredientManifest.read(ctx.zeroshot.path).meta
    base = Path(zs_manifest["base_model"]) if Path(str(zs_manifest.get("base_model"))).is_file() \
        else None
    tuned = ctx.fine_tuned()
    if not tuned:
        raise RuntimeError("transfer: no fine-tuned ingredient is evaluated yet")
    head = transfer_head(ctx.cfg.model, base, task)
    models = [ctx.zeroshot, tuned[0], *ctx.weight_soups()]
    key_task = {"task": task.name, "templates": task.templates, **what,
                "head": ctx.key(head=np.round(head, 6).tolist())}
    results = ctx.run([Job(ctx.key(kind="transfer", model=m.digest, **key_task),
                           jobs.transfer_scores, (str(m.path), head, labels, split),
                           lambda v: [v[0], v[1], v[2].hex()]) for m in models],
                      "analysis: transfer")
    bits = [unpack(bytes.fromhex(r[2]), r[1]) for r in results]
    rows = []
    for i, (m, r, b) in enumerate(zip(models, results, bits, strict=True)):
        vs_zero, vs_best = paired(b, bits[0]), paired(b, bits[1])
        rows.append({"model": m.name, "role": "best single" if i == 1 else m.kind,
                     "task": task.name, "accuracy": r[0] / r[1], "n": r[1],
                     "diff_vs_zeroshot": vs_zero.diff, "zeroshot_lo": vs_zero.lo,
                     "zeroshot_hi": vs_zero.hi, "diff_vs_best": vs_best.diff,
                     "best_lo": vs_best.lo, "best_hi": vs_best.hi})
    table = ctx.write_table("transfer", rows)
    shown = [r for i, r in enumerate(rows) if i != 1]
    figure = figures.plot_transfer(
        [f"{r['model']} ({r['role']})" for r in shown],
        *(np.asarray([r[k] for r in shown]) for k in ("diff_vs_best", "best_lo", "best_hi")),
        f"best single ({rows[1]['model']}, {100 * rows[1]['accuracy']:.1f} %)",
        f"zero-shot transfer to {_about(task, own, rows[0]['n'])}; zero-shot "
        f"{100 * rows[0]['accuracy']:.1f} %", ctx.figure_path("transfer"))
    return Outcome([table, figure], [
        f"transfer ({task.name}): zero-shot {100 * rows[0]['accuracy']:.2f} %, best single "
        f"{rows[1]['model']} {100 * rows[1]['accuracy']:.2f} %; vs the best single: " + ", ".join(
            f"{r['model']} {100 * r['diff_vs_best']:+.2f} [{100 * r['best_lo']:+.2f}, "
            f"{100 * r['best_hi']:+.2f}]" for r in shown)],
        {f"analysis_transfer_{r['model']}": r["accuracy"] for r in rows})


def _task_of(ctx: AnalysisContext, own: OwnTransfer | None
             ) -> tuple[TransferTask, str, np.ndarray | None, dict]:
    """(task, eval split, labels for the jobs (None: the split's own), what of the images
    the jobs' keys name)."""
    if own is None:
        task = colour_task(ctx.cfg.data.world, "test", list(ctx.data.test.keys))
        return task, "test", task.labels, {"labels": ctx.key(labels=task.labels.tolist())}
    # the images by their eval cache's key: content, labels and how they are decoded
    digest = split_digest(own.data, ctx.actors.zeroshot["preprocess"],
                          ctx.cfg.data.eval_cache_shard, ctx.cfg.data.skip_corrupt)
    return own.task, TRANSFER_SPLIT, None, {"split": digest}


def _about(task: TransferTask, own: OwnTransfer | None, n: int) -> str:
    if own is None:
        return f"the world's {len(task.classnames)} colours (test images)"
    return f"{task.name} ({len(task.classnames)} classes, {n:,} images)"
