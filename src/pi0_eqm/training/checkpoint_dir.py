"""Opening a training run directory: ``--resume``/``--overwrite`` rules, the run lock, stale tmp dirs, the manager.

:func:`initialize_checkpoint_dir` validates the directory for the requested mode (fresh start, resume,
overwrite), takes the run lock (:mod:`pi0_eqm.training.run_lock`), removes the ``*.orbax-checkpoint-tmp*`` leftovers
of interrupted saves with a warning, and returns the orbax ``CheckpointManager`` with the item handlers and
retention policy of a training run. A directory it creates gets the marker file ``.pi0_eqm_run.json``;
``--overwrite`` deletes only a directory holding that marker, inside the checkpoint base dir. Directory mutations run
on process 0 only, between barriers (:func:`on_primary`). :func:`latest_step_dir` resolves what a user passes as a
checkpoint (a run directory, a step directory or an export) to the directory to load.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from pathlib import Path
import shutil
import time
import weakref

from etils import epath
import jax
import orbax.checkpoint as ocp

from pi0_eqm.atomic import atomic_write_bytes
from pi0_eqm.atomic import discard
from pi0_eqm.training.checkpoint_assets import NormStatsCheckpointHandler
from pi0_eqm.training.checkpoint_integrity import check_checkpoint_step
from pi0_eqm.training.checkpoint_layout import ASSETS_ITEM
from pi0_eqm.training.checkpoint_layout import COMMIT_MARKER
from pi0_eqm.training.checkpoint_layout import DATA_STATE_FILE
from pi0_eqm.training.checkpoint_layout import DATA_STATE_ITEM
from pi0_eqm.training.checkpoint_layout import INTEGRITY_FILE
from pi0_eqm.training.checkpoint_layout import INTEGRITY_ITEM
from pi0_eqm.training.checkpoint_layout import PARAMS_ITEM
from pi0_eqm.training.checkpoint_layout import TMP_DIR_MARKER
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_FILE
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_ITEM
from pi0_eqm.training.checkpoint_layout import TRAIN_STATE_ITEM
from pi0_eqm.training.checkpoint_layout import step_dirs
from pi0_eqm.training.run_lock import LOCK_FILE
from pi0_eqm.training.run_lock import RunLock

logger = logging.getLogger(__name__)

_BARRIER_COUNTER = itertools.count()

RUN_MARKER = ".pi0_eqm_run.json"
_MAX_LISTED = 10

# The run lock of each manager opened by initialize_checkpoint_dir (released by release_run_dir).
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def on_primary(name: str, fn, *args) -> None:
    """Run a directory mutation on process 0 only, between barriers (no-op barriers on a single process).

    All processes must call this in the same order (barrier names come from a shared counter).
    """
    if jax.process_count() == 1:
        fn(*args)
        return
    n = next(_BARRIER_COUNTER)
    ocp.multihost.sync_global_processes(f"pi0_eqm_ckpt_{name}_{n}_before")
    if jax.process_index() == 0:
        fn(*args)
    ocp.multihost.sync_global_processes(f"pi0_eqm_ckpt_{name}_{n}_after")


def _remove_stale_tmp_dirs(directory: Path) -> list[Path]:
    stale = sorted(p for p in directory.iterdir() if TMP_DIR_MARKER in p.name)
    for path in stale:
        logger.warning(
            "removing stale temporary checkpoint directory %s left by an interrupted save (openpi #566); it never "
            "became a complete checkpoint", path,
        )
        for attempt in range(5):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
                break
            except OSError as e:
                if attempt == 4:
                    raise OSError(f"cannot remove stale temporary checkpoint directory {path}: {e}") from e
                time.sleep(0.2 * (attempt + 1))  # a writer of the failed save may still be finishing
    return stale


def _refuse_to_wipe(directory: Path) -> None:
    protected = {Path("/"), Path.home().absolute()}
    cwd = Path.cwd().absolute()
    if directory in protected or directory == cwd or directory in cwd.parents:
        raise ValueError(f"refusing to --overwrite {directory}: it is /, the home directory or contains the cwd")


def _contents(directory: Path) -> str:
    """A short description of what deleting ``directory`` would remove."""
    files = n_bytes = 0
    for root, _, names in os.walk(directory):
        for name in names:
            files += 1
            with contextlib.suppress(OSError):
                n_bytes += os.lstat(os.path.join(root, name)).st_size
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    shown = ", ".join(top[:_MAX_LISTED]) + (f", ... ({len(top) - _MAX_LISTED} more)" if len(top) > _MAX_LISTED else "")
    return f"{files} files, {n_bytes / 2**20:.1f} MiB: {shown}"


def check_overwritable(directory: Path, base_dir: Path | None, *, marker: str = RUN_MARKER,
                       made_by: str = "the trainer as a run directory",
                       way_out: str = "choose another --exp-name / --checkpoint-base-dir") -> None:
    """Raise :class:`ValueError` unless ``--overwrite`` may delete ``directory``: a real directory (not a symlink or
    a file) holding ``marker``, strictly inside ``base_dir`` (when given), and not /, the home directory or a parent
    of the cwd. The message says what would have been deleted."""
    _refuse_to_wipe(directory)
    why = None
    if directory.is_symlink():
        why = "it is a symbolic link"
    elif not directory.is_dir():
        why = "it is not a directory"
    elif base_dir is not None:
        base = Path(base_dir).expanduser().resolve()
        if base not in directory.resolve().parents:
            why = f"it is not inside the checkpoint base dir {base}"
    if why is None and not (directory / marker).is_file():
        why = f"it was not created by {made_by} (no {marker} marker in it)"
    if why is not None:
        what = _contents(directory) if directory.is_dir() and not directory.is_symlink() else "it"
        raise ValueError(f"refusing to --overwrite {directory}: {why}. It would have deleted {what}. Delete it "
                         f"yourself if that is what you want, or {way_out}.")


def _wipe(directory: Path) -> None:
    discard(directory)  # the name is free at once, even if deletion is slow or interrupted


def _write_marker(directory: Path) -> None:
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "pi0_eqm.training"}
    atomic_write_bytes(directory / RUN_MARKER, json.dumps(record).encode())


def _acquire(lock: RunLock) -> None:
    lock.acquire()


def release_run_dir(manager: ocp.CheckpointManager) -> None:
    """Release the run lock taken by :func:`initialize_checkpoint_dir` for ``manager`` (no-op if none)."""
    lock = _LOCKS.pop(manager, None)
    if lock is not None:
        lock.release()


def latest_step_dir(checkpoint: str | os.PathLike) -> Path:
    """``checkpoint`` itself if it holds ``params/`` (a step or exported directory), else the newest committed
    ``<checkpoint>/<step>`` (commit marker and ``params/`` present; steps still being written are skipped)."""
    checkpoint = Path(checkpoint).expanduser()
    if (checkpoint / PARAMS_ITEM).exists():
        return checkpoint
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (no params/ there); pass a run directory "
                                "(checkpoints/<config>/<exp>), one of its step directories or an exported checkpoint")
    committed = [s for s, p in step_dirs(checkpoint).items()
                 if (p / COMMIT_MARKER).is_file() and (p / PARAMS_ITEM).exists()]
    if not committed:
        raise FileNotFoundError(f"no committed checkpoint step under {checkpoint} (and no params/ in it); train first "
                                "(scripts/train.py) or pass a step or exported directory")
    return checkpoint / str(max(committed))


def _make_manager(
    directory: Path, *, keep_period: int | None, max_to_keep: int | None, async_save: bool, async_timeout_secs: int
) -> ocp.CheckpointManager:
    policies: list = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if keep_period is not None:
        policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_period))
    options = ocp.CheckpointManagerOptions(
        create=False,
        enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(timeout_secs=async_timeout_secs),
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
    )
    return ocp.CheckpointManager(
        epath.Path(directory),
        item_handlers={
            PARAMS_ITEM: ocp.PyTreeCheckpointHandler(),
            TRAIN_STATE_ITEM: ocp.PyTreeCheckpointHandler(),
            ASSETS_ITEM: NormStatsCheckpointHandler(),
            DATA_STATE_ITEM: ocp.JsonCheckpointHandler(filename=DATA_STATE_FILE),
            TRAIN_CONFIG_ITEM: ocp.JsonCheckpointHandler(filename=TRAIN_CONFIG_FILE),
            INTEGRITY_ITEM: ocp.JsonCheckpointHandler(filename=INTEGRITY_FILE),
        },
        options=options,
    )


def initialize_checkpoint_dir(
    directory: str | os.PathLike,
    *,
    keep_period: int | None = None,
    max_to_keep: int | None = 1,
    overwrite: bool = False,
    resume: bool = False,
    async_save: bool = True,
    async_timeout_secs: int = 7200,
    base_dir: str | os.PathLike | None = None,
) -> tuple[ocp.CheckpointManager, bool]:
    """Prepare ``directory`` for a run and return ``(manager, resuming)``.

    * ``overwrite``: delete the directory (only if :func:`check_overwritable` allows it) and start fresh.
    * ``resume``: the directory must hold at least one complete step (else :class:`FileNotFoundError`).
    * neither: the directory must not exist or be empty (else :class:`FileExistsError`).
    * a run directory (run marker) with no step directory at all is reused as a fresh run in either case: the
      identical retry of a start that failed or was stopped is never blocked.

    The run lock is taken before anything is changed (:class:`pi0_eqm.training.run_lock.RunLockedError` if another
    live trainer holds it) and kept until :func:`release_run_dir`. A fresh directory gets the run marker; a resumed
    one without it (made by an older version) gets it once its steps are checked. Retention: the ``max_to_keep``
    latest steps (``None`` = all) plus every step that is a multiple of ``keep_period``. Stale
    ``*.orbax-checkpoint-tmp*`` directories are removed with a warning only under the lock, so they are the
    leftovers of a previous holder that is no longer running.
    """
    if overwrite and resume:
        raise ValueError("--overwrite and --resume are mutually exclusive")
    if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
    if keep_period is not None and keep_period < 1:
        raise ValueError(f"keep_period must be >= 1 or None, got {keep_period}")
    if str(directory).startswith(("gs://", "s3://")):
        raise ValueError(f"only local checkpoint directories are supported, got {directory}")
    directory = Path(os.path.abspath(Path(directory).expanduser()))  # '..' collapsed before anything is checked
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint directory {directory} exists and is not a directory")

    non_empty = directory.is_dir() and any(p.name != LOCK_FILE for p in directory.iterdir())
    # A run directory whose start failed or was stopped before its first step was committed: the same command again
    # (with or without --resume) starts the run in it from step 0.
    unstarted = non_empty and (directory / RUN_MARKER).is_file() and not step_dirs(directory)
    resuming = False
    lock = RunLock(directory)
    if non_empty:
        if unstarted and not overwrite:
            logger.warning("%s holds no checkpoint step (an earlier start failed or was stopped); starting the run "
                           "in it from step 0", directory)
        elif overwrite:
            check_overwritable(directory, Path(base_dir) if base_dir is not None else None)
            on_primary("lock", _acquire, lock)  # never delete the directory of a running trainer
            logger.info("--overwrite: deleting %s", directory)
            on_primary("wipe", _wipe, directory)
        elif resume:
            resuming = True
        else:
            steps = sorted(step_dirs(directory))
            raise FileExistsError(
                f"checkpoint directory {directory} already exists"
                + (f" with steps {steps}" if steps else " and is not empty")
                + ". Pass --resume to continue training from its latest checkpoint, or --overwrite to delete it and "
                "start a new run."
            )
    elif resume:
        state = "is empty" if directory.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"--resume was given but the checkpoint directory {directory} {state}: there is nothing to resume. "
            "Drop --resume to start a new run (or check the experiment name / checkpoint base dir)."
        )

    on_primary("mkdir", lambda: directory.mkdir(parents=True, exist_ok=True))
    on_primary("lock", _acquire, lock)
    try:
        if not resuming:
            on_primary("marker", _write_marker, directory)
        on_primary("remove_tmp", _remove_stale_tmp_dirs, directory)

        if resuming:
            steps = step_dirs(directory)
            problems = {s: check_checkpoint_step(p, notes=False) for s, p in sorted(steps.items())}
            if not any(not p for p in problems.values()):
                detail = "; ".join(f"step {s}: {', '.join(p)}" for s, p in problems.items()) or "no step directories"
                raise FileNotFoundError(
                    f"--resume was given but {directory} has no complete checkpoint ({detail}). "
                    "Pass --overwrite instead to start a new run (this deletes the directory)."
                )
            if not (directory / RUN_MARKER).is_file():
                on_primary("marker", _write_marker, directory)

        manager = _make_manager(
            directory,
            keep_period=keep_period,
            max_to_keep=max_to_keep,
            async_save=async_save,
            async_timeout_secs=async_timeout_secs,
        )
    except BaseException:
        lock.release()
        raise
    _LOCKS[manager] = lock
    return manager, resuming
