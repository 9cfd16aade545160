"""The plot functions draw what they are given (synthetic records; Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pi0_eqm_experiments.analysis import iterates as it  # noqa: E402
from pi0_eqm_experiments.analysis import plots  # noqa: E402


def _record(rate, k=60, h=8, d=4, seed=0):
    rng = np.random.default_rng(seed)
    final = rng.uniform(-0.5, 0.5, (h, d))
    start = rng.normal(size=(h, d))
    steps = np.arange(k + 1)[:, None, None]
    traj = (final + rate ** steps * (start - final)).astype(np.float32)
    res = (5.0 * rate ** np.arange(k)).astype(np.float32)
    return it.SolveRecord(iterates=traj, lookaheads=traj[1:], residuals=res, robot_iterates=traj,
                          robot_lookaheads=traj[1:], actions=traj[-1], iterations=k, residual=float(res[-1]),
                          converged=False, init=traj[0])


def test_plots_draw_and_save(tmp_path):
    cold, warm = _record(0.9), _record(0.85, seed=1)
    expert = cold.robot_iterates[-1][:6] + 0.1
    thresholds = (1.0, 1e-1, 1e-6)  # the last is never reached
    fig = plots.plot_residuals({"cold": cold, "warm": warm}, thresholds)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    stops = it.stop_points(cold.residuals, thresholds)
    assert "cold: iterations to ε = " + f"{stops[1.0] + 1}, {stops[0.1] + 1}, —" in ax.get_legend_handles_labels()[1]
    figs = [
        fig,
        plots.plot_chunk_iterates(warm, [0, 10, 60], expert=expert, executed=4),
        plots.plot_per_dim_convergence(cold, thresholds=thresholds),
        plots.plot_gap({"cold": cold, "warm": warm}, expert, thresholds),
        plots.plot_iterations_cold_warm(it.solve_statistics({"cold": [cold], "warm": [warm]}, thresholds)),
        plots.plot_threshold_sweep({
            1.0: {"overall_success": 0.5, "ci95": [0.2, 0.8], "iters_mean": 80.0, "episodes": 6},
            1e-2: {"overall_success": 0.4, "ci95": [0.1, 0.7], "iters_mean": 250.0, "episodes": 6},
        }),
    ]
    assert len(figs[1].axes) == 4
    for i, f in enumerate(figs):
        path = tmp_path / f"{i}.png"
        f.savefig(path)
        assert path.stat().st_size > 5000
        plt.close(f)


def test_plots_draw_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    rec = _record(0.9)
    assert plots.plot_residuals({"cold": rec}, (1.0,), ax=axes[0]) is fig
    assert plots.plot_per_dim_convergence(rec, ax=axes[1]) is fig
    plt.close(fig)
