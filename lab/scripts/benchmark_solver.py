"""Benchmark the EqM solver on a tiny π₀-EqM (CPU). Prints:

1. prefix time (prefill: SigLIP + backbone + KV cache),
2. per-iteration time inside the while_loop divided by one standalone cached-prefix expert forward (goal ≤ 1.05),
3. iterations to ε for cold vs warm start (paper half-chunk rule, aligned shift) on a model trained on the toy task.

    uv run lab/scripts/benchmark_solver.py [--train-steps 400] [--out results/benchmark_solver.json]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from pi0_eqm_experiments.benchmarks import solver as bench  # noqa: E402
import tyro  # noqa: E402

from pi0_eqm.benchmarks import toy  # noqa: E402
from pi0_eqm.models.configs import model_config  # noqa: E402


@dataclasses.dataclass
class Args:
    preset: str = "pi0_tiny"
    train_steps: int = 400
    batch_sizes: tuple[int, ...] = (1, 16)
    repeats: int = 7
    out: str | None = None


def main(args: Args) -> dict:
    cfg = model_config(args.preset, real_action_dim=4)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; preset {args.preset}; "
          f"prefix {cfg.prefix_len} tokens, suffix {1 + cfg.action_horizon} tokens")
    t = time.time()
    params, losses = toy.train(cfg, steps=args.train_steps, batch_size=32, lr=3e-3)
    print(f"trained the toy task for {args.train_steps} steps in {time.time() - t:.0f} s "
          f"(loss {losses[:10].mean():.2f} -> {losses[-10:].mean():.3f})\n")
    timings = []
    print(f"{'batch':>5} {'prefix ms':>9} {'expert fwd ms':>13} {'loop iter ms':>12} {'iter/fwd':>8}")
    for b in args.batch_sizes:
        r = bench.timing(cfg, params, b, repeats=args.repeats)
        timings.append(r)
        print(f"{b:>5} {r['prefix_ms']:>9.2f} {r['expert_forward_ms']:>13.3f} {r['while_loop_iteration_ms']:>12.3f} "
              f"{r['iteration_over_forward']:>8.2f}")
    rows = bench.warm_vs_cold(cfg, params)
    s = rows[0]["executed"]
    print(f"\nIterations to ε (mean over 32 chunks), replanning after s={s} of H={cfg.action_horizon} actions:")
    print(f"{'epsilon':>8} {'cold':>7} {'paper':>7} {'aligned':>8} {'saved':>6}   RMSE cold/paper/aligned")
    for r in rows:
        saved = 1 - r["aligned_iters"] / r["off_iters"]
        print(f"{r['threshold']:>8.0e} {r['off_iters']:>7.1f} {r['paper_half_iters']:>7.1f} {r['aligned_iters']:>8.1f} "
              f"{saved:>6.0%}   {r['off_rmse']:.3f}/{r['paper_half_rmse']:.3f}/{r['aligned_rmse']:.3f}")
    result = {"preset": args.preset, "train_steps": args.train_steps, "timing": timings, "warm_start": rows}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
