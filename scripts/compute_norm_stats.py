"""Compute norm stats for a config: ``uv run scripts/compute_norm_stats.py <config> [--max-frames N] [--field=value]``.

The config and its overrides are parsed exactly as by ``scripts/train.py`` (``--data.path``, ``--assets-base-dir``,
``--ki``, ...), so the same flags point both at a dataset. Writes ``<assets_base_dir>/<config>/<asset_id>/
norm_stats.json`` in openpi's format (mean, std, q01, q99 per key), atomically, reading only the low-dimensional
arrays (no image decoding). For a config trained with knowledge insulation (``*_ki_*`` configs, or ``--ki``) it then
fits the FAST action tokenizer on the normalised chunks and writes ``<asset_id>/fast_tokenizer/``.
"""

from __future__ import annotations

import logging
import sys


def _max_frames(args: list[str]) -> tuple[int | None, list[str]]:
    """The value of ``--max-frames`` (``N`` or ``=N`` form) and the remaining args."""
    for i, a in enumerate(args):
        value, rest = None, None
        if a.startswith("--max-frames="):
            value, rest = a.split("=", 1)[1], args[:i] + args[i + 1:]
        elif a in ("--max-frames", "--max_frames") and i + 1 < len(args):
            value, rest = args[i + 1], args[:i] + args[i + 2:]
        if value is not None:
            try:
                return int(value), rest
            except ValueError:
                raise ValueError(f"--max-frames must be an integer, got {value!r}") from None
    return None, args


def main(argv: list[str]) -> None:
    from pi0_eqm.training.config import cli
    from pi0_eqm.training.norm_stats import compute_for_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    max_frames, rest = _max_frames(argv)
    cfg = cli(rest)
    out = compute_for_config(cfg, max_frames=max_frames)
    print(f"norm stats written to {out / 'norm_stats.json'}")
    if cfg.model.ki is not None:
        from pi0_eqm.models.fast import FastTokenizer
        from pi0_eqm.models.ki import FAST_TOKENIZER_DIR

        print(f"FAST tokenizer written to {out / FAST_TOKENIZER_DIR}: {FastTokenizer.load(out / FAST_TOKENIZER_DIR)}")


if __name__ == "__main__":
    from pi0_eqm.cli import guarded

    guarded(lambda: main(sys.argv[1:]))
