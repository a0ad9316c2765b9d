"""The four analyses of `raysoup analyze` (docs/analysis.md): each builds its jobs, runs them
through `AnalysisContext.run` (journaled, on the eval actors), and writes a Parquet table and
a PNG figure in WORKDIR/report/analysis/. Each returns its files and one-line findings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysoup.analysis import ensembles, figures, geometry, landscape, stats
from raysoup.analysis.pairs import difference_label
from raysoup.analysis.transfer import colour_task, transfer_head
from raysoup.evaluate.paired import paired, unpack
from raysoup.orchestration import analysis_jobs as jobs
from raysoup.orchestration.analysis import AnalysisContext, Job, Model
from raysoup.reduce import plan_shards, tensor_nbytes
from raysoup.workdir import IngredientManifest

ALPHAS = (0.25, 0.5, 0.75)  # the soup of a pair is evaluated here (0 and 1: the models)


@dataclass(frozen=True)
class Outcome:
    files: list[Path]
    findings: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # logged on the sweep run


# ---------------------------------------------------------------- shared jobs


def blend(ctx: AnalysisContext, models: list[Model], weights: list[float],
          splits: list[str]) -> Job:
    """{split: [correct, n, summed loss]} of Σ w_i·θ_i."""
    key = ctx.key(kind="blend", v=2, models=[m.digest for m in models],
                  weights=[float(w) for w in weights], splits=splits)
    return Job(key, jobs.blend_scores, ([str(m.path) for m in models], list(weights), splits),
               lambda v: {s: list(t) for s, t in v.items()})


def scores(result: dict, split: str) -> tuple[float, float]:
    """(accuracy, mean loss) from a blend job's journaled result."""
    correct, n, loss = result[split]
    return correct / n, loss / n


def gram(ctx: AnalysisContext, models: list[Model]) -> np.ndarray:
    """The Gram matrix of the models' updates from the zero-shot model, one job per shard
    of tensor names (soup.num_shards: the sum's order is fixed, whatever the pool)."""
    zs = ctx.zeroshot
    tensors = IngredientManifest.read(zs.path).tensors
    names = geometry.update_names(tensors)
    plan = plan_shards(tensor_nbytes({n: tensors[n] for n in names}), ctx.cfg.soup.num_shards)
    shard_jobs = [Job(ctx.key(kind="gram", base=zs.digest, models=[m.digest for m in models],
                              names=names_of),
                      jobs.gram_of, (str(zs.path), [str(m.path) for m in models], names_of),
                      lambda v: np.asarray(v).tolist())
                  for names_of in plan]
    return np.sum([np.asarray(g) for g in ctx.run(shard_jobs, "analysis: angles")], axis=0)


def logits(ctx: AnalysisContext, models: list[Model], split: str) -> list[str]:
    """Each model's logits on `split`, saved once as arrays; their file names."""
    def job(m: Model) -> Job:
        key = ctx.key(kind="logits", model=m.digest, split=split)
        return Job(key, jobs.logits_of, (str(m.path), split),
                   lambda v, key=key: ctx.save_array(key, v))

    return ctx.run([job(m) for m in models], f"analysis: {split} logits")


# ---------------------------------------------------------------- landscape


def run_landscape(ctx: AnalysisContext, points: int = 5, names: list[str] | None = None,
                  shift: str | None = None) -> Outcome:
    """Held-out loss, test error and one shift's error on the plane through the zero-shot
    model and two fine-tuned ones (default: the best two by held-out accuracy)."""
    first, second = pick_two(ctx, names)
    shift = shift or default_shift(ctx)
    splits = ["heldout", "test", shift]
    trio = [ctx.zeroshot, first, second]
    cells = landscape.grid(points)
    results = ctx.run([blend(ctx, trio, landscape.weights(a, b), splits) for a, b in cells],
                      "analysis: landscape")
    xy = geometry.plane_positions(gram(ctx, [first, second]), np.asarray(cells))
    rows = [{"a": a, "b": b, "x": float(p[0]), "y": float(p[1]), "split": s,
             "accuracy": scores(r, s)[0], "error": 1 - scores(r, s)[0], "loss": scores(r, s)[1],
             "n": r[s][1], "zeroshot": trio[0].name, "first": first.name, "second": second.name}
            for (a, b), p, r in zip(cells, xy, results, strict=True) for s in splits]
    table = ctx.write_table("landscape", rows)
    at = {cell: i for i, cell in enumerate(cells)}
    labels = {"zero-shot": "zero-shot", "first": first.name, "second": second.name,
              "2-soup": "2-soup"}
    marks = {labels[k]: tuple(xy[at[c]]) for k, c in landscape.MARKED.items()}

    def values(split: str, what: int) -> np.ndarray:
        return np.asarray([scores(r, split)[what] for r in results])

    with np.errstate(divide="ignore"):  # a zero loss is drawn as undefined, not warned about
        log_loss = np.log10(values("heldout", 1))

    figure = figures.plot_landscape(
        [("held-out loss (log10)", log_loss),
         ("test error (%)", 100 * (1 - values("test", 0))),
         (f"{shift} error (%)", 100 * (1 - values(shift, 0)))],
        xy, marks, ctx.figure_path("landscape"), defined=np.isfinite(values("heldout", 1)))
    soup, best = results[at[(0.5, 0.5)]], results[at[(1.0, 0.0)]]
    finding = (f"landscape ({first.name}, {second.name}): 2-soup test error "
               f"{100 * (1 - scores(soup, 'test')[0]):.2f} % vs {first.name} "
               f"{100 * (1 - scores(best, 'test')[0]):.2f} %; lowest test error on the grid at "
               f"(a, b) = {cells[int(np.argmax(values('test', 0)))]}")
    return Outcome([table, figure], [finding], {
        "analysis_landscape_soup_test_error": 1 - scores(soup, "test")[0],
        "analysis_landscape_first_test_error": 1 - scores(best, "test")[0]})


def pick_two(ctx: AnalysisContext, names: list[str] | None) -> tuple[Model, Model]:
    tuned = ctx.fine_tuned()
    if names:
        by_name = {m.name: m for m in tuned}
        unknown = [n for n in names if n not in by_name]
        if len(names) != 2 or unknown:
            raise ValueError(f"landscape: name two fine-tuned ingredients (got {names}); "
                             f"choose from {sorted(by_name)}")
        return by_name[names[0]], by_name[names[1]]
    if len(tuned) < 2:
        raise RuntimeError("landscape: needs two fine-tuned ingredients; the sweep has "
                           f"{len(tuned)}")
    return tuned[0], tuned[1]


def default_shift(ctx: AnalysisContext) -> str:
    """The first shift set over every class (a loss needs every class)."""
    for name, split in ctx.data.shifts.items():
        if split.class_subset is None and getattr(split, "class_groups", None) is None:
            return name
    raise RuntimeError("landscape: no shift set covers every class; pass --shift")


# ---------------------------------------------------------------- angles


def pair_list(ctx: AnalysisContext) -> tuple[list[Model], list[tuple[int, int]]]:
    """The fine-tuned ingredients (the best `ctx.pair_limit` on held-out, if set) by name,
    and every pair of them: N(N − 1)/2 pairs."""
    tuned = sorted(ctx.fine_tuned()[:ctx.pair_limit], key=lambda m: m.name)
    if len(tuned) < 2:
        raise RuntimeError(f"angles: needs two fine-tuned ingredients; the sweep has {len(tuned)}")
    return tuned, list(itertools.combinations(range(len(tuned)), 2))


def run_angles(ctx: AnalysisContext) -> Outcome:
    """The angle between every two updates and their 2-soup's held-out gain over their mean."""
    tuned, pairs = pair_list(ctx)
    angle = geometry.angles_degrees(gram(ctx, tuned))
    soups = ctx.run([blend(ctx, [tuned[i], tuned[j]], [0.5, 0.5], ["heldout"])
                     for i, j in pairs], "analysis: pair soups")
    space = ctx.cfg.sweep.space
    rows = []
    for (i, j), soup in zip(pairs, soups, strict=True):
        mean = (tuned[i].heldout + tuned[j].heldout) / 2
        acc = scores(soup, "heldout")[0]
        rows.append({"first": tuned[i].name, "second": tuned[j].name,
                     "angle_deg": float(angle[i, j]), "soup_heldout": acc,
                     "mean_heldout": mean, "gain": acc - mean,
                     "differs": difference_label(tuned[i].hparams, tuned[j].hparams, space)})
    corr = stats.correlation([r["angle_deg"] for r in rows], [r["gain"] for r in rows])
    table = ctx.write_table("angles", rows)
    title = f"angle vs 2-soup gain on held-out: {corr.text()}"
    figure = figures.plot_angles(np.asarray([r["angle_deg"] for r in rows]),
                                 np.asarray([r["gain"] for r in rows]),
                                 [r["differs"] for r in rows], title, ctx.figure_path("angles"))
    return Outcome([table, figure], [(f"angles: {title}; angles "
                                     f"{min(r['angle_deg'] for r in rows):.1f}°–"
                                     f"{max(r['angle_deg'] for r in rows):.1f}°")],
                   {"analysis_angles_gain_r": corr.r})


# ---------------------------------------------------------------- soup vs ensemble


def run_soup_vs_ensemble(ctx: AnalysisContext) -> Outcome:
    """Observed soup − ensemble gaps on held-out (pairs at α = ½, and the uniform soup) next
    to the paper's approximation from flatness and confidence (`analysis.ensembles`)."""
    tuned, pairs = pair_list(ctx)
    files = logits(ctx, tuned, "heldout")
    labels = np.asarray(ctx.data.heldout.labels)

    def load(i: int) -> np.ndarray:
        z = ctx.load_array(files[i])
        if len(z) != len(labels):
            raise RuntimeError(f"held-out logits of {tuned[i].name}: {len(z)} rows for "
                               f"{len(labels)} labels (images skipped as corrupt?)")
        return z

    soups = ctx.run([blend(ctx, [tuned[i], tuned[j]], [1 - a, a], ["heldout"])
                     for i, j in pairs for a in ALPHAS], "analysis: interpolations")
    rows = [pair_row(tuned, labels, load, i, j, soups[k * len(ALPHAS):(k + 1) * len(ALPHAS)])
            for k, (i, j) in enumerate(pairs)]
    rows.append(uniform_row(ctx, tuned, labels, load))
    pair_rows = [r for r in rows if r["kind"] == "pair"]
    loss_corr = stats.correlation([r["predicted_loss_gap"] for r in pair_rows],
                                  [r["loss_gap"] for r in pair_rows])
    acc_corr = stats.correlation([r["predicted_loss_gap"] for r in pair_rows],
                                 [r["accuracy_gap"] for r in pair_rows])
    table = ctx.write_table("soup_vs_ensemble", rows)
    arr = {k: np.asarray([r[k] for r in rows], float)
           for k in ("predicted_loss_gap", "loss_gap", "accuracy_gap")}
    figure = figures.plot_gaps(arr["predicted_loss_gap"], arr["loss_gap"], arr["accuracy_gap"],
                               [r["kind"] for r in rows],
                               (f"loss gap: {loss_corr.text()}", f"accuracy gap: {acc_corr.text()}"),
                               ctx.figure_path("soup_vs_ensemble"))
    u = rows[-1]
    return Outcome([table, figure], [
        (f"soup vs ensemble: approximation vs observed loss gap {loss_corr.text()}; vs "
        f"accuracy gap {acc_corr.text()}"),
        (f"uniform soup − ensemble on held-out: loss {u['loss_gap']:+.4f}, accuracy "
        f"{100 * u['accuracy_gap']:+.2f} points (confidence term {u['confidence_term']:+.4f})")],
        {"analysis_gap_loss_r": loss_corr.r, "analysis_gap_accuracy_r": acc_corr.r,
         "analysis_uniform_minus_ensemble_loss": u["loss_gap"]})


def pair_row(tuned: list[Model], labels: np.ndarray, load, i: int, j: int,
             soups: list[dict]) -> dict:
    zi, zj = load(i), load(j)
    end_losses = [ensembles.loss_and_accuracy(z, labels)[0] for z in (zi, zj)]
    losses = dict(zip(ALPHAS, (scores(s, "heldout")[1] for s in soups), strict=True))
    # The curvature is fitted without the point it predicts (α = ½).
    curve = ensembles.curvature([0.0, 0.25, 0.75, 1.0],
                                [end_losses[0], losses[0.25], losses[0.75], end_losses[1]])
    confidence = ensembles.confidence_term([zi, zj], [0.5, 0.5])
    ens_loss, ens_acc = ensembles.loss_and_accuracy(
        ensembles.ensemble_logits([zi, zj], [0.5, 0.5]), labels)
    soup_acc, soup_loss = scores(soups[ALPHAS.index(0.5)], "heldout")
    return {"kind": "pair", "models": f"{tuned[i].name}+{tuned[j].name}",
            "soup_loss": soup_loss, "ensemble_loss": ens_loss, "loss_gap": soup_loss - ens_loss,
            "soup_accuracy": soup_acc, "ensemble_accuracy": ens_acc,
            "accuracy_gap": soup_acc - ens_acc, "curvature": curve,
            "flatness_term": -0.5 * 0.25 * curve, "confidence_term": 0.5 * confidence,
            "predicted_loss_gap": ensembles.predicted_gap(0.5, curve, confidence)}


def uniform_row(ctx: AnalysisContext, tuned: list[Model], labels: np.ndarray, load) -> dict:
    """The uniform soup of every fine-tuned ingredient against their ensemble. Its flatness
    term would need the curvature along N directions: only the confidence term is given."""
    n = len(tuned)
    weights = [1.0 / n] * n
    [soup] = ctx.run([blend(ctx, tuned, weights, ["heldout"])], "analysis: uniform soup")
    soup_acc, soup_loss = scores(soup, "heldout")
    lazy = LazyLogits(load, n)
    ens_loss, ens_acc = ensembles.loss_and_accuracy(ensembles.ensemble_logits(lazy, weights),
                                                    labels)
    confidence = ensembles.confidence_term(lazy, weights)
    return {"kind": "uniform", "models": "+".join(m.name for m in tuned),
            "soup_loss": soup_loss, "ensemble_loss": ens_loss, "loss_gap": soup_loss - ens_loss,
            "soup_accuracy": soup_acc, "ensemble_accuracy": ens_acc,
            "accuracy_gap": soup_acc - ens_acc, "curvature": float("nan"),
            "flatness_term": float("nan"), "confidence_term": 0.5 * confidence,
            "predicted_loss_gap": float("nan")}


class LazyLogits:
    """Each model's logits loaded as iterated: one [N, C] array at a time."""

    def __init__(self, load, count: int):
        self.load, self.count = load, count

    def __iter__(self):
        return (self.load(i) for i in range(self.count))


# ---------------------------------------------------------------- transfer


def run_transfer(ctx: AnalysisContext) -> Outcome:
    """The zero-shot model, the best single model and every weight soup, read zero-shot
    through the base's text tower on a task the sweep never trained on (the world's colours)."""
    world = ctx.cfg.data.world
    if world is None:
        raise RuntimeError("transfer: defined for the generated world (data.world) only: its "
                           "images carry a second labelling (colour)")
    task = colour_task(world, "test", list(ctx.data.test.keys))
    zs_manifest = IngredientManifest.read(ctx.zeroshot.path).meta
    base = Path(zs_manifest["base_model"]) if Path(str(zs_manifest.get("base_model"))).is_file() \
        else None
    head = transfer_head(ctx.cfg.model, base, task)
    models = [ctx.zeroshot, ctx.fine_tuned()[0], *ctx.weight_soups()]
    key_task = {"task": task.name, "templates": task.templates,
                "labels": ctx.key(labels=task.labels.tolist()),
                "head": ctx.key(head=np.round(head, 6).tolist())}
    results = ctx.run([Job(ctx.key(kind="transfer", model=m.digest, **key_task),
                           jobs.transfer_scores, (str(m.path), head, task.labels, "test"),
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
        f"zero-shot transfer to the world's {len(task.classnames)} colours (test images); "
        f"zero-shot {100 * rows[0]['accuracy']:.1f} %", ctx.figure_path("transfer"))
    return Outcome([table, figure], [
        f"transfer ({task.name}): zero-shot {100 * rows[0]['accuracy']:.2f} %, best single "
        f"{rows[1]['model']} {100 * rows[1]['accuracy']:.2f} %; vs the best single: " + ", ".join(
            f"{r['model']} {100 * r['diff_vs_best']:+.2f} [{100 * r['best_lo']:+.2f}, "
            f"{100 * r['best_hi']:+.2f}]" for r in shown)],
        {f"analysis_transfer_{r['model']}": r["accuracy"] for r in rows})


# ---------------------------------------------------------------- the command

ANALYSES = ("landscape", "angles", "soup-vs-ensemble", "transfer")


def run_analysis(cfg, workdir: Path, analyses: tuple[str, ...] = ANALYSES, *,
                 address: str | None = None, points: int = 5, models: list[str] | None = None,
                 shift: str | None = None, pair_limit: int | None = None) -> list[Outcome]:
    """The analyses of a workdir the pipeline has evaluated (ingredients on held-out at
    least; the transfer analysis reads the soups it finds), in `analyses`' order.
    `points`, `models`, `shift`: the landscape's grid size, its two ingredients, its shift;
    `pair_limit`: the angles and soup-vs-ensemble analyses use only the best that many
    ingredients (their cost grows with the number of pairs)."""
    from raysoup import storage
    from raysoup.orchestration.actors import EvalActors
    from raysoup.orchestration.cluster import connect
    from raysoup.orchestration.pipeline import check_config
    from raysoup.prepare import prepare
    from raysoup.workdir import Workdir

    if pair_limit is not None and pair_limit < 2:
        raise ValueError(f"pair_limit must be at least 2 (a pair), got {pair_limit}")
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown or not analyses:
        raise ValueError(f"analyses {list(analyses)}: choose from {list(ANALYSES)}")
    layout = Workdir(workdir)
    if not storage.is_file(layout.results):
        raise RuntimeError(f"{storage.display(workdir)} has no {layout.results.name}: run "
                           "`raysoup run` (or sweep + evaluate) before `raysoup analyze`")
    check_config(cfg, workdir)  # the workdir's models were made by this config
    connect(address)
    data, zeroshot = prepare(cfg, workdir)
    actors = EvalActors(cfg, workdir, data, zeroshot)
    steps = {"landscape": lambda c: run_landscape(c, points, models, shift),
             "angles": run_angles, "soup-vs-ensemble": run_soup_vs_ensemble,
             "transfer": run_transfer}
    try:
        ctx = AnalysisContext(cfg, workdir, data, actors)
        ctx.pair_limit = pair_limit
        outcomes = [steps[name](ctx) for name in dict.fromkeys(analyses)]
    finally:
        actors.release()
    storage.publish(layout.analysis_report)
    log_to_sweep_run(cfg, workdir, outcomes)
    return outcomes


def log_to_sweep_run(cfg, workdir: Path, outcomes: list[Outcome]) -> None:
    """The tables, figures and headline numbers as artifacts and metrics of the workdir's
    sweep run in MLflow (found, never created: a workdir without one logs nothing)."""
    from raysoup import storage
    from raysoup.tracking import Tracker, default_uri, quiet
    from raysoup.workdir import Workdir

    quiet()
    if not cfg.tracking.uri:
        storage.pull(Workdir(workdir).mlflow_db, exact=True)
    tracker = Tracker(cfg.tracking.uri or default_uri(workdir),
                      cfg.tracking.experiment or cfg.name,
                      artifact_root=Workdir(workdir).mlartifacts, workdir=workdir)
    run_id = tracker.sweep_run_id()
    if run_id is None:
        return
    tracker.log_artifacts(run_id, [f for o in outcomes for f in o.files], subdir="analysis")
    tracker.log_metrics(run_id, {k: v for o in outcomes for k, v in o.metrics.items()
                                 if not np.isnan(v)})  # an undefined r is left out
    tracker.persist()
