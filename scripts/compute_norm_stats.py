"""Compute norm stats for a config: ``uv run scripts/compute_norm_stats.py <config> [--max-frames N]``.

Writes ``<assets_base_dir>/<config>/<asset_id>/norm_stats.json`` in openpi's format (mean, std, q01, q99 per key),
atomically, reading only the low-dimensional arrays (no image decoding). For a config trained with knowledge
insulation (``*_ki_*`` configs, or ``--ki`` as for ``scripts/train.py``) it then fits the FAST action tokenizer on the
normalised chunks and writes ``<asset_id>/fast_tokenizer/``.
"""

from __future__ import annotations

import dataclasses
import logging

import tyro


@dataclasses.dataclass
class Args:
    config_name: tyro.conf.Positional[str]
    max_frames: int | None = None
    assets_base_dir: str | None = None
    ki: bool = False  # as `scripts/train.py <config> --ki`: knowledge insulation on any config


def main(args: Args) -> None:
    from pi0_eqm.training.config import get_config
    from pi0_eqm.training.norm_stats import compute_for_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = get_config(args.config_name)
    if args.ki:
        from pi0_eqm.training.config import with_ki

        cfg = with_ki(cfg)
    if args.assets_base_dir:
        cfg = dataclasses.replace(cfg, assets_base_dir=args.assets_base_dir)
    out = compute_for_config(cfg, max_frames=args.max_frames)
    print(f"norm stats written to {out / 'norm_stats.json'}")
    if cfg.model.ki is not None:
        from pi0_eqm.models.fast import FastTokenizer
        from pi0_eqm.models.ki import FAST_TOKENIZER_DIR

        print(f"FAST tokenizer written to {out / FAST_TOKENIZER_DIR}: {FastTokenizer.load(out / FAST_TOKENIZER_DIR)}")


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
