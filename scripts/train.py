"""Train a named config: ``uv run scripts/train.py <config> --exp-name=NAME [--resume | --overwrite] [--field=value]``.

Examples:
    uv run scripts/train.py debug_eqm --exp-name=try --overwrite        # tiny model, generated data, seconds on CPU
    uv run scripts/train.py pi0_eqm_libero --exp-name=run1 --batch-size=32 --fsdp-devices=4
    uv run scripts/train.py pi0_libero_cpu --exp-name=run1 --data.path=/data/libero_object --model.decoder.kind=eqm
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import sys


def _setup() -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    import jax

    cache = Path(os.environ.get("PI0_JAX_CACHE", Path("~/.cache/pi0_eqm/jax").expanduser()))
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    _setup()
    from pi0_eqm.training import config as _config
    from pi0_eqm.training import loop
    from pi0_eqm.training.checkpoints import CheckpointRestoreError
    from pi0_eqm.training.freeze import FreezeError

    try:
        cfg = _config.cli()
    except ValueError as e:  # e.g. an unknown --model.decoder.kind
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        out = loop.train(cfg)
    except (FileExistsError, FileNotFoundError, loop.NonFiniteLossError, CheckpointRestoreError, FreezeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    h = out["history"]
    if h:
        print(f"finished at step {out['last_step']}: loss {h[-1]['loss']:.4f}; checkpoints in {cfg.checkpoint_dir}")


if __name__ == "__main__":
    main()
