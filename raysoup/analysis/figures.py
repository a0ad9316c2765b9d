"""The analysis figures (PNG): the paper's Fig. 2 (error landscape), Fig. 3 (angle vs soup
gain), the soup − ensemble gap against its approximation, and zero-shot transfer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raysoup.atomic import write_atomic

PALETTE = ["#c53030", "#2b6cb0", "#2f855a", "#b7791f", "#6b46c1", "#00838f", "#d53f8c"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    _pyplot().close(fig)
    return path


def plot_landscape(panels: Sequence[tuple[str, np.ndarray]], xy: np.ndarray,
                   marks: dict[str, tuple[float, float]], path: Path,
                   defined: np.ndarray | None = None) -> Path:
    """One contour panel per (title, values at the points `xy`), the marked models on top.
    Triangles touching a point that is not `defined` (or not finite in a panel) are left
    blank: e.g. a point far outside the models whose BatchNorm variance came out negative."""
    plt = _pyplot()
    from matplotlib.tri import Triangulation

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), dpi=110)
    axes = np.atleast_1d(axes)
    styles = {"zero-shot": ("*", "#2b6cb0", 170), "2-soup": ("D", "#c53030", 70)}
    for ax, (title, values) in zip(axes, panels, strict=True):
        ok = np.isfinite(values) & (True if defined is None else defined)
        tri = Triangulation(xy[:, 0], xy[:, 1])
        tri.set_mask(~ok[tri.triangles].all(axis=1))
        filled = ax.tricontourf(tri, np.where(ok, values, 0.0), levels=12, cmap="viridis_r")
        fig.colorbar(filled, ax=ax, shrink=0.85)
        ax.scatter(xy[ok, 0], xy[ok, 1], s=4, c="white", alpha=0.6)
        ax.scatter(xy[~ok, 0], xy[~ok, 1], s=10, c="black", marker="x")
        for label, (x, y) in marks.items():
            marker, color, size = styles.get(label, ("o", "#f6ad55", 70))
            ax.scatter([x], [y], marker=marker, c=color, s=size, edgecolors="black",
                       linewidths=0.7, zorder=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8,
                        color="black", weight="bold")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("along θ₁ − θ₀ (weight-space distance)")
    axes[0].set_ylabel("orthogonal direction")
    fig.tight_layout()
    return _save(fig, path)


def plot_angles(angles: np.ndarray, gains: np.ndarray, labels: list[str], title: str,
                path: Path) -> Path:
    """Soup gain (points) against the angle between updates, coloured by what differs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.4), dpi=110)
    colours = dict(zip(sorted(set(labels)), itertools.cycle(PALETTE)))
    for label, colour in colours.items():
        pick = np.asarray([lab == label for lab in labels])
        ax.scatter(angles[pick], 100 * gains[pick], c=colour, s=34, label=label,
                   edgecolors="black", linewidths=0.5)
    ax.axhline(0, c="grey", lw=0.8)
    ax.set_xlabel("angle between the updates θᵢ − θ₀, θⱼ − θ₀ (degrees)")
    ax.set_ylabel("2-soup accuracy − mean of the two (points)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="hyper-parameters that differ", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_gaps(predicted: np.ndarray, loss_gap: np.ndarray, acc_gap: np.ndarray,
              kinds: list[str], titles: tuple[str, str], path: Path) -> Path:
    """Observed soup − ensemble gaps (loss, accuracy) against the approximation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    pair = np.asarray([k == "pair" for k in kinds])
    for ax, observed, ylabel, title in zip(
            axes, (loss_gap, 100 * acc_gap),
            ("observed loss gap (soup − ensemble, nats)",
             "observed accuracy gap (soup − ensemble, points)"), titles, strict=True):
        ax.scatter(predicted[pair], observed[pair], c="#2b6cb0", s=30, label="pairs (α = ½)",
                   edgecolors="black", linewidths=0.5)
        uniform = ~pair & np.isfinite(predicted)
        if uniform.any():
            ax.scatter(predicted[uniform], observed[uniform], c="#c53030", marker="D", s=50,
                       label="uniform soup", edgecolors="black", linewidths=0.5)
        if ax is axes[0]:
            both = np.concatenate([predicted[pair], observed[pair]])
            lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
            ax.plot([lo, hi], [lo, hi], "--", c="grey", lw=0.8, label="y = x")
        ax.axhline(0, c="grey", lw=0.5)
        ax.axvline(0, c="grey", lw=0.5)
        ax.set_xlabel("approximation: flatness + confidence terms (nats)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_transfer(models: list[str], diffs: np.ndarray, los: np.ndarray, his: np.ndarray,
                  reference: str, title: str, path: Path) -> Path:
    """Each model's transfer accuracy − the reference model's, with its paired interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 0.5 * len(models) + 1.6), dpi=110)
    y = np.arange(len(models))
    ax.errorbar(100 * diffs, y, xerr=[100 * (diffs - los), 100 * (his - diffs)], fmt="o",
                c="#2b6cb0", ecolor="#2b6cb0", capsize=3)
    ax.axvline(0, c="grey", lw=0.8)
    ax.set_yticks(y, [m.replace("_", " ") for m in models])
    ax.set_xlabel(f"accuracy − {reference}, points, 95 % paired interval")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, path)
