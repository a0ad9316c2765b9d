"""Soups against logit ensembles (`raysoup analyze soup-vs-ensemble`): the observed gaps next
to the paper's approximation from flatness and confidence (Sec. 4; `analysis.ensembles`)."""

from __future__ import annotations

import numpy as np

from raysoup.analysis import ensembles, figures, stats
from raysoup.orchestration.analysis import (
    AnalysisContext,
    Model,
    Outcome,
    blend,
    logits,
    pair_list,
    scores,
)

ALPHAS = (0.25, 0.5, 0.75)  # the soup of a pair is evaluated here (0 and 1: the models)


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
        (f"uniform soup − ensemble on held-out: loss {u['loss_gap']:+.4f} (approximation "
         f"{u['predicted_loss_gap']:+.4f}: flatness {u['flatness_term']:+.4f}, confidence "
         f"{u['confidence_term']:+.4f}), accuracy {100 * u['accuracy_gap']:+.2f} points")],
        {"analysis_gap_loss_r": loss_corr.r, "analysis_gap_accuracy_r": acc_corr.r,
         "analysis_uniform_minus_ensemble_loss": u["loss_gap"],
         "analysis_uniform_predicted_loss_gap": u["predicted_loss_gap"]})


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
    term is the curvature along the line from the soup to each ingredient (t = −½, ½ on the
    line, t = 1 the ingredient: never the soup itself), weighted as the soup weights them."""
    n = len(tuned)
    weights = [1.0 / n] * n
    lines = [ensembles.line_weights(weights, i, t)
             for i in range(n) for t in ensembles.LINE_POINTS]
    soup, *on_lines = ctx.run([blend(ctx, tuned, w, ["heldout"]) for w in [weights, *lines]],
                              "analysis: uniform soup")
    soup_acc, soup_loss = scores(soup, "heldout")
    points = len(ensembles.LINE_POINTS)
    curves = [ensembles.curvature(
        [*ensembles.LINE_POINTS, 1.0],
        [*(scores(r, "heldout")[1] for r in on_lines[i * points:(i + 1) * points]),
         ensembles.loss_and_accuracy(load(i), labels)[0]]) for i in range(n)]
    lazy = LazyLogits(load, n)
    ens_loss, ens_acc = ensembles.loss_and_accuracy(ensembles.ensemble_logits(lazy, weights),
                                                    labels)
    confidence = ensembles.confidence_term(lazy, weights)
    flatness = ensembles.flatness_term(weights, curves)
    return {"kind": "uniform", "models": "+".join(m.name for m in tuned),
            "soup_loss": soup_loss, "ensemble_loss": ens_loss, "loss_gap": soup_loss - ens_loss,
            "soup_accuracy": soup_acc, "ensemble_accuracy": ens_acc,
            "accuracy_gap": soup_acc - ens_acc,
            "curvature": float(np.dot(weights, curves)),  # Σ w_i (θ_i − θ̄)ᵀ∇²L(θ̄)(θ_i − θ̄)
            "flatness_term": flatness, "confidence_term": 0.5 * confidence,
            "predicted_loss_gap": flatness + 0.5 * confidence}


class LazyLogits:
    """Each model's logits loaded as iterated: one [N, C] array at a time."""

    def __init__(self, load, count: int):
        self.load, self.count = load, count

    def __iter__(self):
        return (self.load(i) for i in range(self.count))
