"""What the insulated backbone of a KI checkpoint learned: FAST-decoded vs expert-decoded actions on dataset chunks.

    uv run lab/scripts/ki_diagnostics.py --config pi0_eqm_ki_metaworld --checkpoint checkpoints/pi0_eqm_ki_metaworld/main

Prints (and with ``--out`` writes) FAST next-token accuracy, the fraction of valid greedy FAST sequences, and the RMSE
(normalised units, real action dims) of backbone-decoded and expert-decoded chunks against the dataset's chunks.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass
class Args:
    config: str
    checkpoint: str  # a run directory (latest step) or a step directory
    samples: int = 64
    seed: int = 0
    assets_base_dir: str | None = None
    out: str | None = None


def main(args: Args) -> dict:
    from pi0_eqm_experiments.analysis.ki import backbone_vs_expert

    from pi0_eqm.training.checkpoint_dir import latest_step_dir
    from pi0_eqm.training.config import get_config

    cfg = get_config(args.config)
    if args.assets_base_dir:
        cfg = dataclasses.replace(cfg, assets_base_dir=args.assets_base_dir)
    step_dir = latest_step_dir(args.checkpoint)
    result = {"checkpoint": str(step_dir)} | backbone_vs_expert(cfg, step_dir, n=args.samples, seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.out:
        from pi0_eqm.benchmarks.metaworld import save_json

        save_json(args.out, result)
    return result


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
