"""Saving and restoring training runs through an orbax ``CheckpointManager`` (openpi's on-disk layout).

* :func:`initialize_checkpoint_dir` (from :mod:`pi0_eqm.training.checkpoint_dir`) opens a run directory for a fresh
  start, ``--resume`` or ``--overwrite`` and returns the manager.
* :func:`save_state` saves a :class:`TrainState` (plus norm stats, the data-iterator state and the train config
  record) as one step,
  asynchronously by default. Failures of an asynchronous save are raised as :class:`CheckpointSaveError` by the next
  :func:`save_state`, :func:`wait_until_saved` or :func:`restore_state`. Old steps are deleted only after the new
  step is committed, so a failed save never costs the last good step.
* :func:`restore_state` checks the latest step and, if it is incomplete or unreadable, falls back to the previous
  complete step with a warning; the unreadable newer steps are renamed ``<step>.corrupt-<time>`` (never deleted)
  so training can save those step numbers again.

``restore_params``/``save_params`` (params-only checkpoints, :mod:`pi0_eqm.training.params_io`) and
``restore_norm_stats`` are re-exported for convenience. Warnings are logged once each, on the ``pi0_eqm.training.*``
module loggers.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
from pathlib import Path
import weakref

import jax
import orbax.checkpoint as ocp

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.errors import one_line
from pi0_eqm.training.checkpoint_assets import NormStatsSave
from pi0_eqm.training.checkpoint_assets import asset_digests
from pi0_eqm.training.checkpoint_assets import restore_norm_stats
from pi0_eqm.training.checkpoint_assets import validate_data_state
from pi0_eqm.training.checkpoint_assets import validate_norm_stats
from pi0_eqm.training.checkpoint_checksums import array_record
from pi0_eqm.training.checkpoint_checksums import verify
from pi0_eqm.training.checkpoint_dir import initialize_checkpoint_dir
from pi0_eqm.training.checkpoint_dir import on_primary
from pi0_eqm.training.checkpoint_dir import release_run_dir
from pi0_eqm.training.checkpoint_integrity import check_checkpoint_step
from pi0_eqm.training.checkpoint_integrity import quarantine
from pi0_eqm.training.checkpoint_integrity import step_notes
from pi0_eqm.training.checkpoint_integrity import tree_mismatches
from pi0_eqm.training.checkpoint_layout import ASSETS_ITEM
from pi0_eqm.training.checkpoint_layout import DATA_STATE_ITEM
from pi0_eqm.training.checkpoint_layout import INTEGRITY_ITEM
from pi0_eqm.training.checkpoint_layout import PARAMS_ITEM
from pi0_eqm.training.checkpoint_layout import TMP_DIR_MARKER
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_ITEM
from pi0_eqm.training.checkpoint_layout import TRAIN_STATE_ITEM
from pi0_eqm.training.checkpoint_layout import step_dirs
from pi0_eqm.training.params_io import _default_sharding
from pi0_eqm.training.params_io import restore_params
from pi0_eqm.training.params_io import save_params
from pi0_eqm.training.train_step import TrainState

__all__ = [
    "CheckpointIntegrityError",
    "CheckpointMismatchError",
    "CheckpointRestoreError",
    "CheckpointSaveError",
    "check_checkpoint_step",
    "initialize_checkpoint_dir",
    "release_run_dir",
    "restore_norm_stats",
    "restore_params",
    "restore_state",
    "save_params",
    "save_state",
    "wait_until_saved",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 20

# Step currently being written asynchronously, per manager (for error messages).
_PENDING_STEP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed; the step was not committed and earlier steps are intact."""


class CheckpointRestoreError(RuntimeError):
    """No requested/usable checkpoint step could be restored."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree (paths/shapes) does not match the state it is restored into."""


class CheckpointIntegrityError(RuntimeError):
    """A step's arrays read back differ from its saved checksums, hold non-finite values, or its data state is
    unusable; ``problems`` lists each finding."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------


def wait_until_saved(manager: ocp.CheckpointManager) -> None:
    """Block until pending asynchronous saves are committed; raise :class:`CheckpointSaveError` if one failed.

    Call it before exiting (or use ``save_state(..., wait=True)`` for the last save). After a failure, stop
    training and restart with ``--resume``: orbax may still have writer threads of the failed step running.
    """
    step = _PENDING_STEP.pop(manager, None)
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - re-raised with context
        which = f"step {step}" if step is not None else "a step"
        manager.reload()  # orbax already dropped the old steps it meant to delete from its list; re-sync with disk
        raise CheckpointSaveError(
            f"saving checkpoint {which} to {manager.directory} failed: {type(e).__name__}: {e}. That step was not "
            f"committed (its partial files stay in a '*{TMP_DIR_MARKER}*' directory, removed at the next start); "
            f"earlier steps are intact: {sorted(step_dirs(Path(str(manager.directory))))}"
        ) from e


def _split_state(state: TrainState, ema: bool) -> tuple[dict, dict]:
    """TrainState → (params item, train_state item) following openpi's ``_split_params``."""
    train_state = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    if ema:
        train_state["params"] = state.params
        return {"params": state.ema_params}, train_state
    return {"params": state.params}, train_state


def _check_ema(state: TrainState, ema: bool) -> None:
    if ema and state.ema_params is None:
        raise ValueError("save_state(ema=True) but state.ema_params is None")
    if not ema and state.ema_params is not None:
        raise ValueError("save_state(ema=False) but the state has ema_params; pass ema=True to save them")


def save_state(
    manager: ocp.CheckpointManager,
    state: TrainState,
    *,
    ema: bool,
    norm_stats: Mapping[str, Mapping[str, NormStats]] | None = None,
    data_state: Mapping | None = None,
    wait: bool = False,
    asset_dirs: Mapping[str, Path] | None = None,
    train_config: Mapping | None = None,
) -> int:
    """Save ``state`` as step ``state.step`` (asynchronously unless ``wait``); returns the step.

    ``train_config`` (``pi0_eqm.training.config_record.config_to_record``) is written as the step's
    ``train_config`` item, committed together with the arrays.

    Raises :class:`CheckpointSaveError` if a previous asynchronous save failed (or this one, with ``wait``), and
    :class:`ValueError` if the step is not newer than the latest saved step. The device→host copy happens before
    this returns, so the caller may donate/overwrite ``state`` afterwards.
    """
    _check_ema(state, ema)
    step = int(jax.device_get(state.step))
    if step < 0:
        raise ValueError(f"cannot save negative step {step}")
    norm_stats = validate_norm_stats(norm_stats) if norm_stats else None
    data_state = validate_data_state(data_state) if data_state is not None else None
    train_config = validate_data_state(train_config) if train_config is not None else None
    wait_until_saved(manager)
    latest = manager.latest_step()
    if latest is not None and step <= latest:
        raise ValueError(
            f"cannot save step {step} to {manager.directory}: step {latest} is already saved there and steps must "
            "increase (restore the latest step before continuing, or use a new directory)"
        )
    params_item, train_state_item = _split_state(state, ema)
    args = {
        PARAMS_ITEM: ocp.args.PyTreeSave(params_item),
        TRAIN_STATE_ITEM: ocp.args.PyTreeSave(train_state_item),
        INTEGRITY_ITEM: ocp.args.JsonSave(array_record(
            {PARAMS_ITEM: params_item, TRAIN_STATE_ITEM: train_state_item}, step=step,
            assets=asset_digests(norm_stats, asset_dirs) if norm_stats else {})),  # assets are written only with stats
    }
    if norm_stats:
        args[ASSETS_ITEM] = NormStatsSave(norm_stats, asset_dirs)
    if data_state is not None:
        args[DATA_STATE_ITEM] = ocp.args.JsonSave(data_state)
    if train_config is not None:
        args[TRAIN_CONFIG_ITEM] = ocp.args.JsonSave(train_config)
    try:
        saved = manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:
        raise CheckpointSaveError(
            f"saving checkpoint step {step} to {manager.directory} failed: {type(e).__name__}: {e}; earlier steps are "
            "intact"
        ) from e
    if not saved:
        raise CheckpointSaveError(f"orbax declined to save step {step} to {manager.directory}")
    _PENDING_STEP[manager] = step
    if wait:
        wait_until_saved(manager)
    return step


# --------------------------------------------------------------------------------------------------------------
# Restoring
# --------------------------------------------------------------------------------------------------------------


def _restore_args(abstract_tree):
    default = None

    def one(leaf):
        nonlocal default
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            default = default or _default_sharding()
            sharding = default
        return ocp.ArrayRestoreArgs(
            restore_type=jax.Array, sharding=sharding, global_shape=tuple(leaf.shape), dtype=leaf.dtype
        )

    return jax.tree.map(one, abstract_tree)


def _abstract_items(abstract_state: TrainState) -> tuple[dict, dict, bool]:
    ema = abstract_state.ema_params is not None
    to_abstract = lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(x)  # noqa: E731
    abstract_state = jax.tree.map(to_abstract, abstract_state)
    params_item, train_state_item = _split_state(abstract_state, ema)
    return params_item, train_state_item, ema


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState, data_state_check=None):
    step_dir = Path(str(manager.directory)) / str(step)
    params_item, train_state_item, ema = _abstract_items(abstract_state)

    # Tree compatibility first: a mismatch is the caller's error, not corruption, so it must not trigger fallback.
    diffs = tree_mismatches(step_dir, {PARAMS_ITEM: params_item, TRAIN_STATE_ITEM: train_state_item})
    if diffs:
        hint = ""
        if any(d.startswith(f"{TRAIN_STATE_ITEM}/params/") for d in diffs):
            hint = " (was the checkpoint saved with a different EMA setting?)"
        shown = "\n  ".join(diffs[:_MAX_LISTED]) + (
            f"\n  ... {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
        )
        raise CheckpointMismatchError(
            f"checkpoint {step_dir} does not match the train state{hint} — different model/optimizer config?\n  {shown}"
        )

    args = {
        PARAMS_ITEM: ocp.args.PyTreeRestore(item=params_item, restore_args=_restore_args(params_item)),
        TRAIN_STATE_ITEM: ocp.args.PyTreeRestore(item=train_state_item, restore_args=_restore_args(train_state_item)),
    }
    for item in (DATA_STATE_ITEM, INTEGRITY_ITEM):
        if (step_dir / item).is_dir():
            args[item] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    jax.block_until_ready(restored[PARAMS_ITEM])
    jax.block_until_ready(restored[TRAIN_STATE_ITEM])
    arrays = {PARAMS_ITEM: restored[PARAMS_ITEM], TRAIN_STATE_ITEM: restored[TRAIN_STATE_ITEM]}
    problems = verify(arrays, restored[INTEGRITY_ITEM] if INTEGRITY_ITEM in args else None)
    data_state = restored[DATA_STATE_ITEM] if DATA_STATE_ITEM in args else None
    if data_state is not None and data_state_check is not None:
        problems += [f"{DATA_STATE_ITEM}: {p}" for p in data_state_check(data_state)]
    if problems:
        shown = problems[:_MAX_LISTED] + ([f"... {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED
                                          else [])
        raise CheckpointIntegrityError(shown)
    ts = restored[TRAIN_STATE_ITEM]
    loaded = restored[PARAMS_ITEM]["params"]
    state = TrainState(
        step=ts["step"],
        params=ts["params"] if ema else loaded,
        opt_state=ts["opt_state"],
        ema_params=loaded if ema else None,
        rng=ts["rng"],
    )
    saved_step = int(jax.device_get(ts["step"]))
    if saved_step != step:  # another step's files under this number: resuming it would re-save steps already there
        raise CheckpointIntegrityError([f"{TRAIN_STATE_ITEM}: holds the train state of step {saved_step}, not of step "
                                        f"{step} (another step's files copied under this step's number?)"])
    return state, data_state


def _short(e: BaseException, limit: int = 400) -> str:
    text = one_line(e)
    cause = e.__cause__ or e.__context__
    if cause is not None and (detail := one_line(cause)) and detail not in text:
        text = f"{text} ({type(cause).__name__}: {detail})"
    return text if len(text) <= limit else text[:limit] + " ..."


def restore_state(
    manager: ocp.CheckpointManager, abstract_state: TrainState, *, step: int | None = None, data_state_check=None
) -> tuple[TrainState, dict | None, int]:
    """Restore ``(state, data_state, step)`` from the latest complete step (or exactly ``step``).

    ``abstract_state`` gives structure, shapes, dtypes and shardings: leaves may be arrays or
    ``jax.ShapeDtypeStruct`` (with ``sharding`` for sharded restore; none → replicated). EMA is restored iff
    ``abstract_state.ema_params`` is not None. ``data_state`` is None if the step has none.

    The arrays read back are verified against the step's checksums and must be finite, and its data state must pass
    ``data_state_check(data_state) -> list of problems`` (when given), else the step is unusable
    (:class:`CheckpointIntegrityError`). With ``step=None`` a truncated/partial/unreadable/unusable latest step is
    skipped with a warning and the previous complete step is used; the skipped newer steps are renamed ``<step>.corrupt-<time>``. A tree mismatch
    (different model/optimizer) raises :class:`CheckpointMismatchError` without fallback.
    """
    wait_until_saved(manager)
    manager.reload()
    directory = Path(str(manager.directory))
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(
                f"checkpoint step {step} not found in {directory}; available steps: {sorted(steps)}"
            )
        candidates = [step]
    else:
        if not steps:
            raise FileNotFoundError(f"no checkpoint steps in {directory}")
        candidates = steps

    failures: list[tuple[int, str]] = []
    for candidate in candidates:
        problems = check_checkpoint_step(directory / str(candidate), notes=False)
        if not problems:
            try:
                state, data_state = _restore_step(manager, candidate, abstract_state, data_state_check)
            except (CheckpointMismatchError, PermissionError):
                raise
            except CheckpointIntegrityError as e:
                problems = e.problems
            except Exception as e:  # noqa: BLE001 - any read error means the step is unusable
                problems = [f"restore failed: {type(e).__name__}: {_short(e)}"]
        if problems:
            reason = "; ".join(problems)
            failures.append((candidate, reason))
            if step is None:
                logger.warning(
                    "checkpoint step %d in %s is incomplete or unreadable (%s); trying an older step",
                    candidate, directory, reason,
                )
            continue
        if failures:
            on_primary("quarantine", quarantine, directory, [s for s, _ in failures if s > candidate])
            manager.reload()
        if notes := step_notes(directory / str(candidate)):
            logger.warning("checkpoint step %d in %s: %s; resuming does not read these and its arrays verified, so "
                           "the step is used", candidate, directory, "; ".join(notes))
        logger.info("restored checkpoint step %d from %s", candidate, directory)
        return state, data_state, candidate

    detail = "\n  ".join(f"step {s}: {r}" for s, r in failures)
    if step is not None:
        raise CheckpointRestoreError(f"checkpoint step {step} in {directory} cannot be restored:\n  {detail}")
    raise CheckpointRestoreError(f"no checkpoint step in {directory} can be restored:\n  {detail}")
