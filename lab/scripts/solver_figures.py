"""EqM solver iterates on the trained Meta-World model, as PNG files (the figures of
``notebooks/solver_iterates.ipynb`` for users without Jupyter).

    uv run lab/scripts/solver_figures.py                          # → results/figures/*.png + solver_figures.json
    uv run lab/scripts/solver_figures.py --closed-loop-episodes 0 # skip the closed-loop threshold comparison

Uses ``checkpoints/pi0_eqm_metaworld/main`` (the main job's model); if it is absent, trains a small model on the fly
(a couple of minutes, under ``--workdir``). For each task, runs the policy closed loop for ``--num-chunks`` chunks,
recording at each replanning point a cold solve and a warm-started one from the same noise (full 60-iteration
trajectories), and draws: residual vs k (cold vs warm) with the ε stop points, the chunk at several k against the
expert's next actions, per-dimension convergence, residual vs distance to the expert (the stationarity–executability
gap), iterations to ε cold vs warm over all replanning points, and closed-loop success at several ε.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import tyro  # noqa: E402


@dataclasses.dataclass
class Args:
    checkpoint: str = "checkpoints/pi0_eqm_metaworld/main"  # run or step dir of pi0_eqm_metaworld
    out: str = "results/figures"
    workdir: str = "checkpoints/solver_iterates_quick"  # where a missing checkpoint is replaced by a quick model
    tasks: tuple[str, ...] = ("drawer-open-v3", "window-open-v3")
    episode: int = 0  # evaluation configuration (of seed --eval-seed) to inspect
    eval_seed: int = 1000
    replan_every: int = 8  # actions executed per chunk (H = 16)
    num_chunks: int = 5  # replanning points recorded per task
    show_chunk: int = 1  # which replanning point the per-chunk figures show (>= 1 has a warm start)
    thresholds: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3)  # drawn on the residual figures
    exec_threshold: float = 1e-2  # ε of the chunks executed during the recorded rollouts (the config default)
    closed_loop_thresholds: tuple[float, ...] = (1.0, 1e-1, 1e-3)
    closed_loop_episodes: int = 3  # per task and threshold; 0 skips the closed-loop comparison
    max_steps: int = 200
    seed: int = 0


def make_figures(args: Args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pi0_eqm_experiments.analysis import iterates as it
    from pi0_eqm_experiments.analysis import plots
    from pi0_eqm_experiments.analysis.model import load_or_train_policy

    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.envs.metaworld import MetaWorldEnv

    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    policy, info = load_or_train_policy(args.checkpoint, workdir=args.workdir,
                                        settings=DecoderSettings(executed=args.replan_every))
    print(f"model: {info['source']} ({info['step_dir']}), {time.time() - t0:.0f} s")
    written, summary = [], {"model": {k: v for k, v in info.items() if k != "config"}, "tasks": {}}

    def save(fig, name):
        path = os.path.join(args.out, name)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    all_cold, all_warm = [], []
    for task in args.tasks:
        with MetaWorldEnv(task, seed=args.eval_seed, max_steps=args.max_steps) as env, \
                MetaWorldEnv(task, seed=args.eval_seed, max_steps=args.max_steps) as scratch:
            reps = it.closed_loop_records(policy, env, args.episode, replan_every=args.replan_every,
                                          num_chunks=args.num_chunks, eps=args.exec_threshold, seed=args.seed,
                                          scratch_env=scratch)
        all_cold += [r.cold for r in reps if r.warm is not None]
        all_warm += [r.warm for r in reps if r.warm is not None]
        rep = reps[min(args.show_chunk, len(reps) - 1)]
        short = task.replace("-v3", "")
        where = f"{short}, episode {args.episode}, env step {rep.step}"
        recs = {"cold": rep.cold} | ({"warm (aligned)": rep.warm} if rep.warm is not None else {})
        shown = rep.warm if rep.warm is not None else rep.cold
        save(plots.plot_residuals(recs, args.thresholds, title=f"residual vs k — {where}"), f"residuals_{short}.png")
        ks = [0, 2, 5, 10, 20, shown.num_iters]
        save(plots.plot_chunk_iterates(shown, ks, expert=rep.expert, executed=args.replan_every,
                                       title=f"chunk iterates ({'warm' if rep.warm is not None else 'cold'} start) "
                                             f"vs expert — {where}"), f"chunk_iterates_{short}.png")
        save(plots.plot_per_dim_convergence(shown, thresholds=args.thresholds,
                                            title=f"per-dimension convergence — {where}"),
             f"per_dim_convergence_{short}.png")
        if rep.expert is not None:
            save(plots.plot_gap(recs, rep.expert, args.thresholds, title=f"residual vs distance to expert — {where}"),
                 f"gap_{short}.png")
        summary["tasks"][task] = [{
            "step": r.step,
            "cold_stop": it.stop_points(r.cold.residuals, args.thresholds),
            "warm_stop": None if r.warm is None else it.stop_points(r.warm.residuals, args.thresholds),
            "expert_rmse_at_stop": None if r.expert is None else {
                e: float(it.distance_to(it.returned_chunk(r.warm or r.cold, e)[None], r.expert)[0])
                for e in args.thresholds},
        } for r in reps]

    stats = it.solve_statistics({"cold": all_cold, "warm (aligned)": all_warm}, args.thresholds)
    summary["iterations_to_eps"] = stats
    save(plots.plot_iterations_cold_warm(stats, title=f"iterations to ε over {len(all_cold)} replanning points "
                                                      f"({', '.join(t.replace('-v3', '') for t in args.tasks)})"),
         "iterations_cold_warm.png")
    for name, s in stats.items():
        print(f"{name:>15}: " + "  ".join(f"ε={e:g}: {v['mean_iters']:.0f} ({100 * v['reached']:.0f}%)"
                                         for e, v in s.items()))

    if args.closed_loop_episodes > 0:
        rows = {}
        for eps in args.closed_loop_thresholds:
            pol = it.policy_with_settings(policy, DecoderSettings(executed=args.replan_every, threshold=eps))
            res = bench.evaluate_policy(pol, tasks=args.tasks, episodes_per_task=args.closed_loop_episodes,
                                        replan_every=args.replan_every, seed=args.eval_seed,
                                        max_steps=args.max_steps, progress=False)
            rows[eps] = bench.summary_row(res)
            print(f"closed loop ε={eps:g}: success {rows[eps]['overall_success']:.2f} "
                  f"({rows[eps]['episodes']} episodes), iterations/chunk {rows[eps]['iters_mean']:.0f}")
        summary["closed_loop"] = {str(k): v for k, v in rows.items()}
        save(plots.plot_threshold_sweep(rows), "threshold_sweep.png")

    summary["wall_s"] = time.time() - t0
    bench.save_json(os.path.join(args.out, "solver_figures.json"), summary)
    print("wrote " + ", ".join(written) + f" and {args.out}/solver_figures.json ({summary['wall_s']:.0f} s)")
    return summary


if __name__ == "__main__":
    try:
        make_figures(tyro.cli(Args))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
