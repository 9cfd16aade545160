"""Tiny end-to-end π₀-EqM demo on generated data: build, train, decode with the solver, print loss and solver stats.

    uv run scripts/demo.py                 # ~2-4 min on 2 CPU cores
    uv run scripts/demo.py --steps 100     # quicker
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from pi0_eqm.benchmarks import toy  # noqa: E402
from pi0_eqm.decoders.eqm import EqmDecodeSettings  # noqa: E402
from pi0_eqm.models.configs import model_config  # noqa: E402
from pi0_eqm.models.decoder_config import EqmConfig  # noqa: E402
from pi0_eqm.models.decoder_config import FlowConfig  # noqa: E402


@dataclasses.dataclass
class Args:
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    preset: str = "pi0_tiny"
    decoder: str = "eqm"  # eqm | flow
    seed: int = 0
    thresholds: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
    max_iters: int = 200  # EqM forwards cap for the ε table (the default budget, 10, binds before any ε is reached)
    progress: bool = True  # a progress bar while training
    out: str | None = None  # optional JSON file for the figures


def main(args: Args) -> dict:
    decoder = FlowConfig() if args.decoder == "flow" else EqmConfig()
    cfg = model_config(args.preset, decoder, real_action_dim=4)
    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: cfg.init(jax.random.key(0)))))
    print(f"model {args.preset} ({n_params / 1e6:.2f}M params), decoder {args.decoder}, "
          f"H={cfg.action_horizon}, D={cfg.action_dim} (4 real), prefix {cfg.prefix_len} tokens")
    t0 = time.time()
    params, losses = toy.train(cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               log_every=max(1, args.steps // 6), progress=args.progress)
    train_s = time.time() - t0
    print(f"trained {args.steps} steps in {train_s:.1f} s ({train_s / args.steps * 1e3:.0f} ms/step); "
          f"loss {losses[:10].mean():.3f} -> {losses[-10:].mean():.3f}")
    rows = []
    if args.decoder == "eqm":
        default = cfg.decoder.solver.max_iters
        print(f"\n{'epsilon':>8} {'cap':>5} {'iters mean':>10} {'iters p90':>9} {'residual':>9} {'converged':>9} "
              f"{'action RMSE':>11}")
        runs = [(cfg.decoder.solver.threshold, default)] + [(eps, args.max_iters) for eps in args.thresholds]
        for eps, cap in runs:
            r = toy.evaluate(cfg, params, settings=EqmDecodeSettings(threshold=eps, max_iters=cap))
            rows.append({"threshold": eps, "max_iters": cap, **r})
            print(f"{eps:>8.0e} {cap:>5d} {r['iterations_mean']:>10.1f} {r['iterations_p90']:>9.0f} "
                  f"{r['residual_mean']:>9.2e} {r['converged_frac']:>9.2f} {r['action_rmse']:>11.3f}")
        print(f"(first row: the default budget of {default} forwards; the others: ε with a cap of {args.max_iters})")
    else:
        r = toy.evaluate(cfg, params)
        rows.append(r)
        print(f"flow, {cfg.decoder.num_steps} Euler steps: action RMSE {r['action_rmse']:.3f}")
    print(f"(predicting zeros gives action RMSE {rows[0]['zero_predictor_rmse']:.3f})")
    result = {"args": dataclasses.asdict(args), "params": int(n_params), "train_seconds": train_s,
              "loss_first10": float(losses[:10].mean()), "loss_last10": float(losses[-10:].mean()), "eval": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
