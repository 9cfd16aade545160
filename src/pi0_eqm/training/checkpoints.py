"""Training checkpoints in openpi's on-disk layout, with the failure handling openpi lacks.

Layout of a run directory (one sub-directory per saved step)::

    <ckpt_dir>/<step>/_CHECKPOINT_METADATA, commit_success.txt     written by orbax at commit
    <ckpt_dir>/<step>/params/          orbax PyTree (OCDBT): {"params": <pure dict>}  (EMA params when EMA is on)
    <ckpt_dir>/<step>/train_state/     orbax PyTree: {"step", "opt_state", "rng"} (+ "params": raw params if EMA)
    <ckpt_dir>/<step>/assets/<asset_id>/norm_stats.json     openpi format (pi0_eqm.data.normalize)
    <ckpt_dir>/<step>/data_state/data_state.json            data-iterator state (JSON)

``<step>/params`` is readable by openpi's ``restore_params`` and by a bare ``ocp.PyTreeCheckpointer().restore``.

Differences from openpi (``openpi-compat.md`` §9):

* ``--resume`` on a directory without a complete step is an error (openpi silently starts fresh), and an existing
  directory without ``--resume``/``--overwrite`` is a :class:`FileExistsError`.
* Stale ``*.orbax-checkpoint-tmp*`` directories of interrupted saves are removed with a warning (openpi #566).
* Asynchronous save failures are raised (as :class:`CheckpointSaveError`) by the next :func:`save_state`,
  :func:`wait_until_saved` or :func:`restore_state` instead of only being logged (openpi #505). Old steps are deleted
  only after the new step is committed, so a failed save never costs the last good step.
* :func:`restore_state` checks the latest step (commit marker, items, metadata, readable data) and falls back to the
  previous complete step with a warning; unreadable steps newer than the restored one are renamed to
  ``<step>.corrupt-<time>`` (never deleted) so training can save those step numbers again.
* The data-iterator state is checkpointed (``data_state``), so a resumed run continues the data order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path
import re
import shutil
import time
from typing import Any
import uuid
import warnings
import weakref

from etils import epath
import jax
import orbax.checkpoint as ocp

from pi0_eqm.data.normalize import NORM_STATS_FILE
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.training.params_io import PARAMS_ITEM
from pi0_eqm.training.params_io import _default_sharding
from pi0_eqm.training.params_io import _item_metadata_tree
from pi0_eqm.training.params_io import restore_params  # noqa: F401  (re-exported)
from pi0_eqm.training.params_io import save_params  # noqa: F401  (re-exported)
from pi0_eqm.training.train_step import TrainState

logger = logging.getLogger(__name__)

TRAIN_STATE_ITEM = "train_state"
ASSETS_ITEM = "assets"
DATA_STATE_ITEM = "data_state"
DATA_STATE_FILE = "data_state.json"
COMMIT_MARKER = "commit_success.txt"
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
TMP_DIR_MARKER = ".orbax-checkpoint-tmp"
CORRUPT_MARKER = ".corrupt-"
_STEP_RE = re.compile(r"^(0|[1-9]\d*)$")
_MAX_LISTED = 20

# Step currently being written asynchronously, per manager (for error messages).
_PENDING_STEP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BARRIER_COUNTER = itertools.count()


def _on_primary(name: str, fn, *args) -> None:
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


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed; the step was not committed and earlier steps are intact."""


class CheckpointRestoreError(RuntimeError):
    """No requested/usable checkpoint step could be restored."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree (paths/shapes) does not match the state it is restored into."""


# --------------------------------------------------------------------------------------------------------------
# Norm stats as an orbax item: <step>/assets/<asset_id>/norm_stats.json
# --------------------------------------------------------------------------------------------------------------


def _write_assets(directory: Path, norm_stats: Mapping[str, Mapping[str, NormStats]],
                  asset_dirs: Mapping[str, Path] | None = None) -> None:
    for asset_id, stats in norm_stats.items():
        save_norm_stats(directory / asset_id, stats)
    for rel, src in (asset_dirs or {}).items():  # e.g. <asset_id>/fast_tokenizer
        shutil.copytree(src, directory / rel, dirs_exist_ok=True)


def _read_assets(directory: Path) -> dict[str, dict[str, NormStats]]:
    out = {}
    for path in sorted(directory.rglob(NORM_STATS_FILE)):
        asset_id = path.parent.relative_to(directory).as_posix()
        out[asset_id] = load_norm_stats(path.parent)
    return out


class NormStatsCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Writes ``{asset_id: {key: NormStats}}`` as ``<item>/<asset_id>/norm_stats.json`` (openpi's assets layout)."""

    async def async_save(self, directory: epath.Path, args: NormStatsSave):  # type: ignore[override]
        norm_stats, asset_dirs = args.norm_stats, args.asset_dirs

        async def write():
            if jax.process_index() == 0:
                await asyncio.to_thread(_write_assets, Path(str(directory)), norm_stats, asset_dirs)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="norm_stats_save")]

    def save(self, directory: epath.Path, args: NormStatsSave):  # type: ignore[override]
        if jax.process_index() == 0:
            _write_assets(Path(str(directory)), args.norm_stats, args.asset_dirs)

    def restore(self, directory: epath.Path, args: NormStatsRestore | None = None):  # type: ignore[override]
        return _read_assets(Path(str(directory)))

    def metadata(self, directory: epath.Path):
        return None


@ocp.args.register_with_handler(NormStatsCheckpointHandler, for_save=True)
@dataclasses.dataclass
class NormStatsSave(ocp.args.CheckpointArgs):
    norm_stats: Mapping[str, Mapping[str, NormStats]]
    asset_dirs: Mapping[str, Path] | None = None  # extra asset directories to copy in, keyed by relative path


@ocp.args.register_with_handler(NormStatsCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class NormStatsRestore(ocp.args.CheckpointArgs):
    pass


def _validate_norm_stats(norm_stats: Mapping[str, Mapping[str, NormStats]]) -> dict[str, dict[str, NormStats]]:
    if not isinstance(norm_stats, Mapping):
        raise TypeError(f"norm_stats must be a dict {{asset_id: {{key: NormStats}}}}, got {type(norm_stats).__name__}")
    out = {}
    for asset_id, stats in norm_stats.items():
        parts = Path(asset_id).parts if isinstance(asset_id, str) else ()
        if not parts or Path(asset_id).is_absolute() or any(p in ("..", ".") for p in parts):
            raise ValueError(f"invalid asset id {asset_id!r}: must be a relative path such as 'libero' or 'org/name'")
        if not isinstance(stats, Mapping) or not stats:
            raise TypeError(f"norm_stats[{asset_id!r}] must be a non-empty dict {{key: NormStats}}")
        for key, value in stats.items():
            if not isinstance(value, NormStats):
                raise TypeError(f"norm_stats[{asset_id!r}][{key!r}] is a {type(value).__name__}; expected NormStats")
        out[asset_id] = dict(stats)
    return out


def _validate_data_state(data_state: Any) -> dict:
    if not isinstance(data_state, Mapping):
        raise TypeError(f"data_state must be a JSON-serializable dict, got {type(data_state).__name__}")
    try:
        text = json.dumps(data_state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data_state is not JSON-serializable: {e}") from e
    if json.loads(text) != data_state:
        raise ValueError(
            "data_state does not survive a JSON round trip unchanged (tuples become lists, non-string keys become "
            "strings); use lists and string keys so the resumed iterator sees exactly what was saved"
        )
    return dict(data_state)


# --------------------------------------------------------------------------------------------------------------
# Run directory setup
# --------------------------------------------------------------------------------------------------------------


def _step_dirs(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.is_dir() and _STEP_RE.match(p.name)}


def _remove_stale_tmp_dirs(directory: Path) -> list[Path]:
    stale = sorted(p for p in directory.iterdir() if TMP_DIR_MARKER in p.name)
    for path in stale:
        msg = (
            f"removing stale temporary checkpoint directory {path} left by an interrupted save (openpi #566); "
            "it never became a complete checkpoint"
        )
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)
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


def _wipe(directory: Path) -> None:
    _refuse_to_wipe(directory)
    trash = directory.parent / f".{directory.name}.deleting-{uuid.uuid4().hex[:8]}"
    os.rename(directory, trash)  # the name is free at once, even if deletion is slow or interrupted
    shutil.rmtree(trash, ignore_errors=True)


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
) -> tuple[ocp.CheckpointManager, bool]:
    """Prepare ``directory`` for a run and return ``(manager, resuming)``.

    * ``overwrite``: delete the directory and start fresh.
    * ``resume``: the directory must hold at least one complete step (else :class:`FileNotFoundError`).
    * neither: the directory must not exist or be empty (else :class:`FileExistsError`).

    Retention: the ``max_to_keep`` latest steps (``None`` = all) plus every step that is a multiple of
    ``keep_period``. Stale ``*.orbax-checkpoint-tmp*`` directories are removed with a warning.
    """
    if overwrite and resume:
        raise ValueError("--overwrite and --resume are mutually exclusive")
    if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
    if keep_period is not None and keep_period < 1:
        raise ValueError(f"keep_period must be >= 1 or None, got {keep_period}")
    if str(directory).startswith(("gs://", "s3://")):
        raise ValueError(f"only local checkpoint directories are supported, got {directory}")
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint directory {directory} exists and is not a directory")

    non_empty = directory.is_dir() and any(directory.iterdir())
    resuming = False
    if non_empty:
        if overwrite:
            _refuse_to_wipe(directory)
            logger.info("--overwrite: deleting %s", directory)
            _on_primary("wipe", _wipe, directory)
        elif resume:
            resuming = True
        else:
            steps = sorted(_step_dirs(directory))
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

    _on_primary("mkdir", lambda: directory.mkdir(parents=True, exist_ok=True))
    _on_primary("remove_tmp", _remove_stale_tmp_dirs, directory)

    if resuming:
        steps = _step_dirs(directory)
        problems = {s: check_checkpoint_step(p) for s, p in sorted(steps.items())}
        if not any(not p for p in problems.values()):
            detail = "; ".join(f"step {s}: {', '.join(p)}" for s, p in problems.items()) or "no step directories"
            raise FileNotFoundError(
                f"--resume was given but {directory} has no complete checkpoint ({detail}). "
                "Pass --overwrite instead to start a new run (this deletes the directory)."
            )

    manager = _make_manager(
        directory,
        keep_period=keep_period,
        max_to_keep=max_to_keep,
        async_save=async_save,
        async_timeout_secs=async_timeout_secs,
    )
    return manager, resuming


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
            f"earlier steps are intact: {sorted(_step_dirs(Path(str(manager.directory))))}"
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
) -> int:
    """Save ``state`` as step ``state.step`` (asynchronously unless ``wait``); returns the step.

    Raises :class:`CheckpointSaveError` if a previous asynchronous save failed (or this one, with ``wait``), and
    :class:`ValueError` if the step is not newer than the latest saved step. The device→host copy happens before
    this returns, so the caller may donate/overwrite ``state`` afterwards.
    """
    _check_ema(state, ema)
    step = int(jax.device_get(state.step))
    if step < 0:
        raise ValueError(f"cannot save negative step {step}")
    norm_stats = _validate_norm_stats(norm_stats) if norm_stats else None
    data_state = _validate_data_state(data_state) if data_state is not None else None
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
    }
    if norm_stats:
        args[ASSETS_ITEM] = NormStatsSave(norm_stats, asset_dirs)
    if data_state is not None:
        args[DATA_STATE_ITEM] = ocp.args.JsonSave(data_state)
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
# Step validation
# --------------------------------------------------------------------------------------------------------------


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"missing {path.name}"
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable {path.name} ({type(e).__name__})"
    return None


def _pytree_item_problems(item_dir: Path) -> list[str]:
    name = item_dir.name
    if not item_dir.is_dir():
        return [f"missing item directory {name}/"]
    problems = []
    if (p := _json_problem(item_dir / "_METADATA")) is not None:
        problems.append(f"{name}/: {p}")
    manifest = item_dir / "manifest.ocdbt"
    if not manifest.is_file() or manifest.stat().st_size == 0:
        problems.append(f"{name}/: missing or empty manifest.ocdbt")
    for sub in ("d", "ocdbt.process_0"):
        root = item_dir / sub
        if root.is_dir():
            for f in root.rglob("*"):
                if f.is_file() and f.stat().st_size == 0:
                    problems.append(f"{name}/: empty data file {f.relative_to(item_dir)}")
    return problems


def check_checkpoint_step(step_dir: str | os.PathLike) -> list[str]:
    """Structural problems of a saved step directory (empty list = looks complete).

    Checks the commit marker and step metadata, the ``params`` and ``train_state`` items (metadata, OCDBT
    manifest, no empty data files) and that optional ``data_state``/``assets`` files parse. It does not read the
    arrays; :func:`restore_state` does that and falls back on errors.
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return ["step directory is missing"]
    problems = []
    if not (step_dir / COMMIT_MARKER).is_file():
        problems.append(f"no commit marker ({COMMIT_MARKER}): the save did not finish")
    if (p := _json_problem(step_dir / STEP_METADATA_FILE)) is not None:
        problems.append(p)
    for item in (PARAMS_ITEM, TRAIN_STATE_ITEM):
        problems.extend(_pytree_item_problems(step_dir / item))
    data_dir = step_dir / DATA_STATE_ITEM
    if data_dir.exists() and (p := _json_problem(data_dir / DATA_STATE_FILE)) is not None:
        problems.append(f"{DATA_STATE_ITEM}/: {p}")
    assets = step_dir / ASSETS_ITEM
    if assets.is_dir():
        for f in assets.rglob(NORM_STATS_FILE):
            if (p := _json_problem(f)) is not None:
                problems.append(f"{f.relative_to(step_dir)}: {p}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Restoring
# --------------------------------------------------------------------------------------------------------------


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_shapes(tree, is_leaf=None) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {"/".join(_key_str(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _is_array_metadata(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _compare(item: str, expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    diffs = [
        f"{item}/{k}: missing from the checkpoint (expected shape {expected[k]})" for k in expected if k not in found
    ]
    diffs += [
        f"{item}/{k}: in the checkpoint (shape {found[k]}) but not in the state" for k in found if k not in expected
    ]
    diffs += [
        f"{item}/{k}: shape {found[k]} in the checkpoint, {expected[k]} expected"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    return diffs


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


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState):
    step_dir = Path(str(manager.directory)) / str(step)
    params_item, train_state_item, ema = _abstract_items(abstract_state)

    # Tree compatibility first: a mismatch is the caller's error, not corruption, so it must not trigger fallback.
    diffs = []
    for item, expected in ((PARAMS_ITEM, params_item), (TRAIN_STATE_ITEM, train_state_item)):
        found = _flat_shapes(_item_metadata_tree(step_dir / item), is_leaf=_is_array_metadata)
        diffs += _compare(item, _flat_shapes(expected), found)
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
    if (step_dir / DATA_STATE_ITEM).is_dir():
        args[DATA_STATE_ITEM] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    jax.block_until_ready(restored[PARAMS_ITEM])
    jax.block_until_ready(restored[TRAIN_STATE_ITEM])
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
    if saved_step != step:
        warnings.warn(f"checkpoint directory {step_dir} holds train state step {saved_step}", stacklevel=3)
    data_state = restored[DATA_STATE_ITEM] if DATA_STATE_ITEM in args else None
    return state, data_state


def _short(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _quarantine(directory: Path, steps: list[int]) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for step in steps:
        src = directory / str(step)
        if not src.exists():
            continue
        dst = directory / f"{step}{CORRUPT_MARKER}{stamp}"
        n = 0
        while dst.exists():
            n += 1
            dst = directory / f"{step}{CORRUPT_MARKER}{stamp}-{n}"
        os.rename(src, dst)
        msg = f"moved unreadable checkpoint step {step} to {dst} (kept for inspection; delete it when done)"
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)


def restore_state(
    manager: ocp.CheckpointManager, abstract_state: TrainState, *, step: int | None = None
) -> tuple[TrainState, dict | None, int]:
    """Restore ``(state, data_state, step)`` from the latest complete step (or exactly ``step``).

    ``abstract_state`` gives structure, shapes, dtypes and shardings: leaves may be arrays or
    ``jax.ShapeDtypeStruct`` (with ``sharding`` for sharded restore; none → replicated). EMA is restored iff
    ``abstract_state.ema_params`` is not None. ``data_state`` is None if the step has none.

    With ``step=None`` a truncated/partial/unreadable latest step is skipped with a warning and the previous
    complete step is used; the skipped newer steps are renamed ``<step>.corrupt-<time>``. A tree mismatch
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
        problems = check_checkpoint_step(directory / str(candidate))
        if not problems:
            try:
                state, data_state = _restore_step(manager, candidate, abstract_state)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any read error means the step is unusable
                problems = [f"restore failed: {type(e).__name__}: {_short(e)}"]
        if problems:
            reason = "; ".join(problems)
            failures.append((candidate, reason))
            if step is None:
                msg = f"checkpoint step {candidate} in {directory} is incomplete or unreadable ({reason}); trying an older step"
                warnings.warn(msg, stacklevel=2)
                logger.warning(msg)
            continue
        if failures:
            _on_primary("quarantine", _quarantine, directory, [s for s, _ in failures if s > candidate])
            manager.reload()
        logger.info("restored checkpoint step %d from %s", candidate, directory)
        return state, data_state, candidate

    detail = "\n  ".join(f"step {s}: {r}" for s, r in failures)
    if step is not None:
        raise CheckpointRestoreError(f"checkpoint step {step} in {directory} cannot be restored:\n  {detail}")
    raise CheckpointRestoreError(f"no checkpoint step in {directory} can be restored:\n  {detail}")


def restore_norm_stats(step_dir: str | os.PathLike) -> dict[str, dict[str, NormStats]]:
    """``{asset_id: {key: NormStats}}`` from ``<step_dir>/assets/`` (empty dict if the step has none)."""
    assets = Path(step_dir) / ASSETS_ITEM
    return _read_assets(assets) if assets.is_dir() else {}
