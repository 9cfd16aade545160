"""EqM solver studies on the embedded Meta-World benchmark, from the checkpoint the main job trained (``--exp-name
main``), with the default (``action``) solver at a ``--max-iters`` cap of 20 forwards:

    uv run lab/scripts/studies.py threshold   # EqM success and forwards per chunk vs ε ∈ {1 … 1e-3, never}
    uv run lab/scripts/studies.py warmstart   # EqM forwards and success: cold / paper half-chunk / aligned

Each writes ``<out>/<study>.json`` and ``<out>/<study>.png`` and prints a table. All runs of a study evaluate the same
held-out configurations (same seed), so differences come from the decoder settings only. Flow vs EqM at matched
budgets over several training seeds is ``lab/scripts/decoder_study.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import tyro  # noqa: E402


@dataclasses.dataclass
class Args:
    study: tyro.conf.Positional[Literal["threshold", "warmstart"]]
    exp_name: str = "main"
    checkpoint_base_dir: str = "./checkpoints"
    episodes_per_task: int = 20
    replan_every: int = 8
    seed: int = 1000
    max_steps: int = 200
    max_iters: int = 20  # forwards per chunk (the default cap is 10; 20 lets ε ≤ 1e-2 fire)
    thresholds: tuple[float, ...] = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 0.0)  # 0 = never stop early
    out: str = "results/studies"


def _run(name: str, args: Args, settings) -> dict:
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.training.config import get_config

    cfg = get_config(name)
    ckpt = os.path.join(args.checkpoint_base_dir, name, args.exp_name)
    policy = bench.load_policy(cfg, ckpt, settings)
    res = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task, replan_every=args.replan_every,
                                seed=args.seed, max_steps=args.max_steps, resolution=cfg.model.image_resolution[0])
    return bench.summary_row(res)


def _plot_lines(path, xs, series: dict, xlabel: str, ylabel: str, title: str, logx=False, xticklabels=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (ys, lo, hi) in series.items():
        ax.plot(range(len(xs)) if xticklabels else xs, ys, marker="o", label=label)
        if lo is not None:
            ax.fill_between(range(len(xs)) if xticklabels else xs, lo, hi, alpha=0.15)
    if xticklabels:
        ax.set_xticks(range(len(xs)), xticklabels)
    elif logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.envs.tasks import DEFAULT_TASKS

    os.makedirs(args.out, exist_ok=True)
    rows: dict[str, dict] = {}
    if args.study == "threshold":
        for eps in args.thresholds:
            label = "never" if eps <= 0 else f"{eps:.0e}"
            rows[f"eqm, eps={label}"] = _run("pi0_eqm_metaworld", args,
                                             DecoderSettings(threshold=eps, max_iters=args.max_iters,
                                                            executed=args.replan_every))
        labels = ["never" if e <= 0 else f"{e:.0e}" for e in args.thresholds]
        rs = list(rows.values())
        _plot_lines(os.path.join(args.out, "threshold.png"), labels,
                    {"success": ([r["mean_success"] for r in rs], [r["ci95"][0] for r in rs],
                                 [r["ci95"][1] for r in rs]),
                     f"forwards / {args.max_iters}": ([r["iters_mean"] / args.max_iters for r in rs], None, None)},
                    "threshold ε", f"success  |  forwards/{args.max_iters}", "Stationarity–executability: ε scan",
                    xticklabels=labels)
    else:
        for mode in ("off", "paper_half", "aligned"):
            rows[f"eqm, warm start {mode}"] = _run("pi0_eqm_metaworld", args,
                                                   DecoderSettings(warm_start=mode, max_iters=args.max_iters,
                                                                  executed=args.replan_every))
        rs = list(rows.values())
        _plot_lines(os.path.join(args.out, "warmstart.png"), ["cold", "paper half", "aligned"],
                    {"forwards (mean)": ([r["iters_mean"] for r in rs], None, None)},
                    "initialisation", "expert forwards per chunk", "Warm start", xticklabels=["cold", "paper", "aligned"])
    print(bench.format_table(rows, DEFAULT_TASKS))
    bench.save_json(os.path.join(args.out, f"{args.study}.json"), {"args": dataclasses.asdict(args), "rows": rows})
    print(f"results: {args.out}/{args.study}.json, {args.out}/{args.study}.png")
    return rows


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
