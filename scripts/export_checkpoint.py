"""Export a training checkpoint step in openpi's layout: ``<out>/params`` (orbax, ``{"params": pure_dict}``, openpi
names; EMA params if the run used EMA) and ``<out>/assets/<asset_id>/norm_stats.json``.

    uv run scripts/export_checkpoint.py --checkpoint checkpoints/pi0_libero/run1/30000 --out exported/pi0_libero [--bf16]

Flow-decoder checkpoints load into openpi's π₀ with the same config (``policy:checkpoint --policy.dir=<out>``); EqM
checkpoints use the same layout (EqM feeds t ≡ 0 through π₀'s time path, so the tree is π₀'s).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Args:
    checkpoint: str  # a run directory (its latest committed step), a step directory or an exported directory
    out: str
    bf16: bool = False
    overwrite: bool = False


def main(args: Args) -> None:
    from pi0_eqm.training.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, bf16=args.bf16, overwrite=args.overwrite)
    print(f"exported to {out}")


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
