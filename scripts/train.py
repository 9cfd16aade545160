"""Train a named config: ``uv run scripts/train.py <config> --exp-name=NAME [--resume | --overwrite] [--field=value]``.

User errors (bad flags, an existing or locked run directory, bad data, a full disk, a NaN stop) print one paragraph
and exit with code 2; ``--debug`` shows the traceback instead. In a multi-process job, a step whose collective fails
because another process died ends this one at once the same way, naming the dead process when the coordinator knows
it (instead of waiting for the heartbeat timeout and aborting).

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

from absl import logging as absl_logging


def _setup() -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    import jax

    cache = Path(os.environ.get("PI0_JAX_CACHE", Path("~/.cache/pi0_eqm/jax").expanduser()))
    jax.config.update("jax_compilation_cache_dir", str(cache))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own variable wins when set
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _NoOrbaxErrors(logging.Filter):
    """Drops orbax's ERROR records (each failed background save thread logs its traceback) and asyncio's
    'Task exception was never retrieved' records for orbax's write tasks; the CheckpointSaveError raised in the main
    thread carries the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return "orbax" not in record.pathname and not (record.name == "asyncio" and "orbax" in record.getMessage())


def _quiet_failed_saves() -> None:
    """Without --debug, a failed save (e.g. a full disk) reads as one error: orbax's per-thread error logs are
    dropped, and so are the 'Event loop is closed' errors that TensorStore write callbacks of the failed save
    raise after orbax closed its event loop (reported through ``sys.unraisablehook``)."""
    absl_logging.get_absl_logger().addFilter(_NoOrbaxErrors())
    logging.getLogger("asyncio").addFilter(_NoOrbaxErrors())
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            default(unraisable)

    sys.unraisablehook = hook


def main() -> None:
    from pi0_eqm import cli

    debug = cli.pop_debug_flag()
    _setup()
    if not debug:
        _quiet_failed_saves()
    from pi0_eqm.training import config as _config
    from pi0_eqm.training import distributed
    from pi0_eqm.training import loop
    from pi0_eqm.training.checkpoints import CheckpointRestoreError
    from pi0_eqm.training.checkpoints import CheckpointSaveError
    from pi0_eqm.training.run_lock import RunLockedError

    # ValueError covers the config, distributed (DistributedConfigError), freeze (FreezeError), data validation and
    # checkpoint-mismatch errors; OSError covers missing files, existing run directories and a full disk.
    user_errors = (ValueError, OSError, loop.NonFiniteLossError, CheckpointRestoreError, CheckpointSaveError,
                   RunLockedError)
    try:
        cfg = _config.cli()
        out = loop.train(cfg)
    except user_errors as e:
        if debug:
            raise
        cli.fail(e)
    except Exception as e:  # a multi-process job whose collective failed: another process is gone
        message = None if debug else distributed.peer_failure(e)
        if message is None:
            raise
        cli.fail_now(message)
    h = out["history"]
    if h:
        print(f"finished at step {out['last_step']}: loss {h[-1]['loss']:.4f}; checkpoints in {cfg.checkpoint_dir}")


if __name__ == "__main__":
    main()
