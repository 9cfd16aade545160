"""Offline EqM solver sweep on held-out expert states of the embedded benchmark (no closed loop).

    uv run lab/scripts/solver_sweep.py --checkpoint checkpoints/pi0_eqm_metaworld/main

For every solver setting: mean expert forwards per chunk, fraction that reached ε, final residual, and the chunk's
RMS distance (normalized actions, real dims) to the expert's chunk and to the ``paper`` preset's 300-forward chunk
from the same noise. Writes ``<out>/solver_sweep.json`` and prints a table.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from pi0_eqm_experiments.analysis import offline  # noqa: E402
from pi0_eqm_experiments.variants import EQM_TRAIN_VARIANTS  # noqa: E402

from pi0_eqm.benchmarks import metaworld as bench  # noqa: E402
from pi0_eqm.decoders.settings import DecoderSettings  # noqa: E402
from pi0_eqm.envs.tasks import DEFAULT_TASKS  # noqa: E402
from pi0_eqm.training.config import get_config  # noqa: E402

# name → DecoderSettings (explicit, so a row keeps its meaning if the defaults change); "paper, never stop" is the
# reference chunk.
A = dict(preset="action")
F = dict(step_size=0.05, momentum=0.5)  # the study's first candidate: converges to the root in ≈ 16 forwards
SETTINGS = {
    "paper (η .003, μ .3, ≤300)": DecoderSettings(preset="paper"),
    "paper, never stop (300)": DecoderSettings(preset="paper", threshold=0.0),
    "default (η .03, μ .3, ≤10)": DecoderSettings(**A),
    "η .03 μ .3 ≤5": DecoderSettings(**A, max_iters=5),
    "η .03 μ .3 ≤20": DecoderSettings(**A, max_iters=20),
    "η .05 μ .5 ≤5": DecoderSettings(**A, **F, max_iters=5),
    "η .05 μ .5 ≤10": DecoderSettings(**A, **F),
    "η .05 μ .5 ≤20": DecoderSettings(**A, **F, max_iters=20),
    "η .05 μ .5 ≤10, no guard": DecoderSettings(**A, **F, guard=False),
    "η .08 μ .5 ≤10": DecoderSettings(**A, step_size=0.08, momentum=0.5),
    "η .2 μ .5 ≤10 (guard)": DecoderSettings(**A, step_size=0.2, momentum=0.5),
    "η .2 μ .5 ≤10, no guard": DecoderSettings(**A, step_size=0.2, momentum=0.5, guard=False),
    "gd η .05 ≤10": DecoderSettings(**A, variant="gd", step_size=0.05),
    "bb ≤5": DecoderSettings(preset="bb", max_iters=5),
    "bb ≤10": DecoderSettings(preset="bb"),
    "bb ≤20": DecoderSettings(preset="bb", max_iters=20),
    "η .05 μ .5 ≤10, ε 1e-1": DecoderSettings(**A, **F, threshold=1e-1),
    "η .05 μ .5 ≤10, never stop": DecoderSettings(**A, **F, threshold=0.0),
}


@dataclasses.dataclass
class Args:
    checkpoint: str = "checkpoints/pi0_eqm_metaworld/main"
    config: str = "pi0_eqm_metaworld"
    variant: str = "default"  # the EqM training variant the checkpoint was trained with (EQM_TRAIN_VARIANTS)
    seed: int = 2000  # held out from demos (0) and closed-loop evaluation (1000)
    episodes_per_task: int = 2
    every: int = 8
    out: str = "results/solver_sweep"


def main(args: Args) -> dict:
    if args.variant not in EQM_TRAIN_VARIANTS:
        raise ValueError(f"unknown --variant {args.variant!r}; expected one of {sorted(EQM_TRAIN_VARIANTS)}")
    cfg = get_config(args.config)
    decoder = dataclasses.replace(cfg.model.decoder, **EQM_TRAIN_VARIANTS[args.variant])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=decoder))
    policy = bench.load_policy(cfg, args.checkpoint, DecoderSettings())
    states = offline.expert_states(DEFAULT_TASKS, seed=args.seed, episodes_per_task=args.episodes_per_task,
                                   horizon=cfg.model.action_horizon, every=args.every,
                                   resolution=cfg.model.image_resolution[0])
    real = cfg.model.real_action_dim or cfg.model.action_dim
    expert = offline.expert_model_chunks(policy, states)
    runs = {name: offline.batched_decode(policy, states, s) for name, s in SETTINGS.items()}
    ref = runs["paper, never stop (300)"]["actions"]
    rows = {}
    for name, r in runs.items():
        rows[name] = {
            "forwards_mean": float(np.mean(r["iterations"])),
            "reached_eps": float(np.mean(r["converged"])),
            "residual_median": float(np.median(r["residual"])),
            "err_vs_expert": float(np.mean(offline.chunk_errors(r["actions"], expert, real))),
            "err_vs_300": float(np.mean(offline.chunk_errors(r["actions"], ref, real))),
        }
    head = f"{'setting':<36}{'forwards':>9}{'reached':>9}{'resid p50':>11}{'vs expert':>11}{'vs 300-it':>11}"
    print(f"{len(states)} held-out expert states (seed {args.seed}, {args.episodes_per_task} episodes/task)")
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(f"{name:<36}{r['forwards_mean']:>9.1f}{r['reached_eps']:>9.2f}{r['residual_median']:>11.4f}"
              f"{r['err_vs_expert']:>11.3f}{r['err_vs_300']:>11.3f}")
    bench.save_json(os.path.join(args.out, "solver_sweep.json"),
                    {"args": dataclasses.asdict(args), "num_states": len(states), "rows": rows})
    return rows


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
