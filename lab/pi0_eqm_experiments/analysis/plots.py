"""Matplotlib figures of EqM solver trajectories (for ``notebooks/solver_iterates.ipynb`` and
``lab/scripts/solver_figures.py``). Each function draws into the given axes (or a new figure) and returns the figure;
none of them touches global state other than creating a figure when no axes are passed."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from pi0_eqm_experiments.analysis.iterates import SolveRecord
from pi0_eqm_experiments.analysis.iterates import distance_to
from pi0_eqm_experiments.analysis.iterates import per_dim_convergence
from pi0_eqm_experiments.analysis.iterates import stop_points

METAWORLD_DIMS = ("Δx", "Δy", "Δz", "gripper")
_EPS_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _axes(ax, nrows: int = 1, ncols: int = 1, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        return fig, ax
    fig, ax = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return fig, (ax[0, 0] if nrows == ncols == 1 else ax)


def _eps_label(eps: float) -> str:
    return f"ε={eps:g}"


def plot_residuals(records: Mapping[str, SolveRecord], thresholds: Sequence[float] = (1e-1, 1e-2, 1e-3), *, ax=None,
                   title: str | None = None):
    """Residual r_k vs k (log y) for each named record (e.g. cold / warm), horizontal lines at the thresholds and a
    marker where each threshold would stop each trajectory (legend: iterations = k + 1, or "—" if never)."""
    fig, ax = _axes(ax)
    styles = ("-", "--", ":", "-.")
    lines = []
    for i, (name, rec) in enumerate(records.items()):
        k = np.arange(rec.num_iters)
        (line,) = ax.plot(k, rec.residuals, styles[i % len(styles)], color=f"C{i}", lw=1.6)
        stops = stop_points(rec.residuals, thresholds)
        for j, eps in enumerate(thresholds):
            ks = stops[float(eps)]
            if ks is not None:
                ax.plot(ks, rec.residuals[ks], "o", color=_EPS_COLORS[j % len(_EPS_COLORS)], ms=6, mec="k", zorder=5)
        iters = ", ".join("—" if stops[float(e)] is None else str(stops[float(e)] + 1) for e in thresholds)
        line.set_label(f"{name}: iterations to ε = {iters}")
        lines.append(line)
    for j, eps in enumerate(thresholds):
        ax.axhline(eps, color=_EPS_COLORS[j % len(_EPS_COLORS)], ls=":", lw=1.2, label=_eps_label(eps))
    ax.set_yscale("log")
    ax.set_xlabel("solver iteration k")
    ax.set_ylabel("residual r_k = RMS f(Ã_k)")
    ax.set_title(title or "residual vs iteration")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_chunk_iterates(record: SolveRecord, ks: Sequence[int], *, expert: np.ndarray | None = None,
                        executed: int | None = None, dim_names: Sequence[str] = METAWORLD_DIMS, axes=None,
                        title: str | None = None):
    """The robot-space action chunk at iterations ``ks`` (one panel per action dimension, horizon on x), colored
    from light (early) to dark (late), with the expert's next actions (black, dashed) overlaid. ``executed`` shades
    the actions that would be executed before replanning."""
    import matplotlib.pyplot as plt

    d = record.robot_iterates.shape[-1]
    fig, axes = _axes(axes, 1, d, figsize=(3.2 * d, 3.2))
    axes = np.asarray(axes).reshape(-1)
    ks = [min(int(k), record.num_iters) for k in ks]
    cmap = plt.get_cmap("viridis")
    h = record.robot_iterates.shape[1]
    for j in range(d):
        ax = axes[j]
        for i, k in enumerate(ks):
            c = cmap(i / max(len(ks) - 1, 1))
            ax.plot(np.arange(h), record.robot_iterates[k, :, j], color=c, lw=1.2 + (k == ks[-1]),
                    label=f"k={k}" if j == 0 else None)
        if expert is not None:
            ax.plot(np.arange(len(expert)), expert[:, j], "k--", lw=2, label="expert" if j == 0 else None)
        if executed:
            ax.axvspan(-0.5, executed - 0.5, color="0.9", zorder=0)
        for y in (-1.0, 1.0):  # Meta-World clips actions to [-1, 1]
            ax.axhline(y, color="0.6", lw=0.8, ls=(0, (1, 2)), zorder=0)
        ax.set_title(dim_names[j] if j < len(dim_names) else f"dim {j}", fontsize=9)
        ax.set_xlabel("chunk step")
        # Fit the converging iterates and the expert (the k = 0 noise may leave the panel).
        shown = [record.robot_iterates[k, :, j] for k in ks[1:] or ks]
        if expert is not None:
            shown.append(expert[:, j])
        lo, hi = float(np.min(np.concatenate(shown))), float(np.max(np.concatenate(shown)))
        ax.set_ylim(min(-1.2, lo - 0.15), max(1.2, hi + 0.15))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("action (robot units)")
    fig.legend(loc="center right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    return fig


def plot_per_dim_convergence(record: SolveRecord, *, dim_names: Sequence[str] = METAWORLD_DIMS,
                             thresholds: Sequence[float] = (), ax=None, title: str | None = None):
    """RMS over the horizon of ``A_k − A_K`` per robot action dimension vs k (log y), with vertical lines where
    each threshold would stop."""
    fig, ax = _axes(ax)
    conv = per_dim_convergence(record.robot_iterates)
    k = np.arange(conv.shape[0])
    for j in range(conv.shape[1]):
        ax.plot(k[:-1], conv[:-1, j], label=dim_names[j] if j < len(dim_names) else f"dim {j}")
    stops = stop_points(record.residuals, thresholds)
    for j, eps in enumerate(thresholds):
        if stops[float(eps)] is not None:
            ax.axvline(stops[float(eps)], color=_EPS_COLORS[j % len(_EPS_COLORS)], ls=":", label=_eps_label(eps))
    ax.set_yscale("log")
    ax.set_xlabel("solver iteration k")
    ax.set_ylabel("RMS distance to final iterate")
    ax.set_title(title or "per-dimension convergence")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_gap(records: Mapping[str, SolveRecord], expert: np.ndarray, thresholds: Sequence[float] = (1e-1, 1e-2),
             *, clip: tuple[float, float] | None = (-1.0, 1.0), ax=None, title: str | None = None):
    """The stationarity–executability gap on one chunk: residual r_k (left, log) and RMS distance of A_k to the
    expert's next actions (right) vs k, both clipped to ``clip`` first (Meta-World executes actions clipped to
    [-1, 1]). The residual keeps falling while the distance to what works stops moving."""
    fig, ax = _axes(ax)
    ax2 = ax.twinx()
    for i, (name, rec) in enumerate(records.items()):
        ax.plot(np.arange(rec.num_iters), rec.residuals, color=f"C{i}", lw=1.2, alpha=0.6, label=f"{name}: r_k")
        dist = distance_to(rec.robot_iterates, expert, clip=clip)
        ax2.plot(np.arange(len(dist)), dist, color=f"C{i}", lw=2, ls="--", label=f"{name}: RMS(A_k − expert)")
        stops = stop_points(rec.residuals, thresholds)
        for j, eps in enumerate(thresholds):
            ks = stops[float(eps)]
            if ks is not None:
                ax2.plot(ks, dist[ks], "o", color=_EPS_COLORS[j % len(_EPS_COLORS)], mec="k", zorder=5)
    for j, eps in enumerate(thresholds):
        ax.axhline(eps, color=_EPS_COLORS[j % len(_EPS_COLORS)], ls=":", lw=1, label=_eps_label(eps))
    ax.set_yscale("log")
    ax.set_xlabel("solver iteration k")
    ax.set_ylabel("residual r_k (thin)")
    ax2.set_ylabel("RMS distance to expert chunk (dashed)" + (" (clipped)" if clip else ""))
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    ax.set_title(title or "stationarity vs executability")
    ax.grid(True, alpha=0.3)
    return fig


def plot_iterations_cold_warm(stats: Mapping[str, Mapping[float, Mapping[str, float]]], *, ax=None,
                              title: str | None = None):
    """Grouped bars of mean field evaluations to reach each ε (from :func:`~pi0_eqm_experiments.analysis.iterates.solve_statistics`),
    one bar per start (cold / warm), annotated with the fraction of solves that reached ε within the budget."""
    fig, ax = _axes(ax)
    names = list(stats)
    eps = sorted({e for s in stats.values() for e in s}, reverse=True)
    x = np.arange(len(eps))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [stats[name][e]["mean_iters"] for e in eps]
        reached = [stats[name][e]["reached"] for e in eps]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name, color=f"C{i}")
        for b, r in zip(bars, reached, strict=True):
            ax.annotate(f"{100 * r:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(x, [_eps_label(e) for e in eps])
    ax.set_ylabel("mean iterations to ε (budget if never)")
    ax.set_title(title or "iterations to ε: cold vs warm start (label: % reached)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_threshold_sweep(rows: Mapping[float, Mapping[str, Any]], *, ax=None, title: str | None = None):
    """Closed-loop success (with 95% CI) and mean solver iterations per chunk vs ε, from
    ``{ε: benchmarks.metaworld.summary_row(result)}``."""
    fig, ax = _axes(ax)
    eps = sorted(rows, reverse=True)
    x = np.arange(len(eps))
    succ = np.array([rows[e]["overall_success"] for e in eps])
    lo = np.array([rows[e]["ci95"][0] for e in eps])
    hi = np.array([rows[e]["ci95"][1] for e in eps])
    ax.bar(x, succ, 0.5, color="tab:blue", alpha=0.7, label="success rate (95% CI)")
    ax.errorbar(x, succ, yerr=[succ - lo, hi - succ], fmt="none", ecolor="k", capsize=4)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("closed-loop success")
    ax.set_xticks(x, [_eps_label(e) if e > 0 else "never stop" for e in eps])
    ax2 = ax.twinx()
    ax2.plot(x, [rows[e]["iters_mean"] for e in eps], "o-", color="tab:red", label="mean iterations / chunk")
    ax2.set_ylabel("mean iterations per chunk", color="tab:red")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", ncol=2)
    n = rows[eps[0]]["episodes"]
    ax.set_title(title or f"stopping threshold vs closed-loop success ({n} episodes each)")
    return fig
