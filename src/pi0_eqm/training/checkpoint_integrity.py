"""Checks of saved checkpoint steps, and setting aside the unreadable ones.

* :func:`check_checkpoint_step`: structural problems of a step directory (commit marker, metadata, items, files);
  :func:`step_notes`: those in the parts resuming does not read (orbax's step metadata, norm-stats copies).
* :func:`tree_mismatches`: path/shape differences between a step's array items and the state to restore into.
* :func:`saved_step_problems`: the structural check for whatever directory a user serves or exports.
* :func:`params_problems`: params read from a training step (to serve, export or evaluate) checked against the
  step's own integrity record (per-array checksums, finiteness), as the trainer checks what it resumes.
* :func:`quarantine`: rename unreadable steps to ``<step>.corrupt-<time>`` (kept for inspection, never deleted).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import json
import logging
import os
from pathlib import Path
import time
from typing import Any

import jax

from pi0_eqm.data.normalize import NORM_STATS_FILE
from pi0_eqm.training.checkpoint_checksums import file_digest
from pi0_eqm.training.checkpoint_checksums import verify
from pi0_eqm.training.checkpoint_layout import ASSETS_ITEM
from pi0_eqm.training.checkpoint_layout import COMMIT_MARKER
from pi0_eqm.training.checkpoint_layout import CORRUPT_MARKER
from pi0_eqm.training.checkpoint_layout import DATA_STATE_FILE
from pi0_eqm.training.checkpoint_layout import DATA_STATE_ITEM
from pi0_eqm.training.checkpoint_layout import INTEGRITY_FILE
from pi0_eqm.training.checkpoint_layout import INTEGRITY_ITEM
from pi0_eqm.training.checkpoint_layout import PARAMS_ITEM
from pi0_eqm.training.checkpoint_layout import STEP_METADATA_FILE
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_FILE
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_ITEM
from pi0_eqm.training.checkpoint_layout import TRAIN_STATE_ITEM
from pi0_eqm.training.params_io import _item_metadata_tree

logger = logging.getLogger(__name__)


def _json_problem(path: Path) -> str | None:
    """``None`` if ``path`` holds JSON, else what is wrong with it. A file this process may not read is not damaged:
    that raises ``PermissionError`` naming it, so no caller sets the step aside for it."""
    if not path.is_file():
        return f"missing {path.name}"
    try:
        json.loads(_read_bytes(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, PermissionError):
            raise
        return f"unreadable {path.name} ({type(e).__name__})"
    return None


def _read_bytes(path: Path) -> bytes:
    """``path``'s bytes; a file this process may not read raises ``PermissionError`` saying it is not damaged."""
    try:
        return path.read_bytes()
    except PermissionError as e:
        raise PermissionError(f"cannot read {path}: permission denied. The file is not damaged and nothing was set "
                              "aside; give this user read access (e.g. chmod -R u+rX on the run directory) and run "
                              "the same command again") from e


def _integrity_record(step_dir: Path) -> Mapping | None:
    """The step's integrity record, or ``None`` when it has none or it does not parse (reported elsewhere)."""
    path = step_dir / INTEGRITY_ITEM / INTEGRITY_FILE
    if _json_problem(path) is not None:
        return None
    record = json.loads(_read_bytes(path))
    return record if isinstance(record, Mapping) else None


def _asset_problems(step_dir: Path, digests: Mapping[str, Any]) -> list[str]:
    """Files under ``assets/`` that differ from, or are missing against, the digests saved with the step, and
    norm-stats files it was not saved with."""
    assets = step_dir / ASSETS_ITEM
    problems = []
    for rel, digest in sorted(digests.items()):
        f = assets / rel
        if not f.is_file():
            problems.append(f"{ASSETS_ITEM}/{rel}: missing (it was saved with this step)")
            continue
        if file_digest(_read_bytes(f)) != digest:
            problems.append(f"{ASSETS_ITEM}/{rel}: differs from the file saved with this step (checksum mismatch)")
    if assets.is_dir():
        for f in sorted(assets.rglob(NORM_STATS_FILE)):
            if f.relative_to(assets).as_posix() not in digests:
                problems.append(f"{f.relative_to(step_dir)}: not saved with this step (not in its integrity record)")
    return problems


def step_notes(step_dir: str | os.PathLike) -> list[str]:
    """Problems in the parts of a step that resuming does not read: orbax's step metadata and the files under
    ``assets/`` (norm stats, tokenizer files: the trainer reads its config's assets), checked against the digests of
    the step's integrity record when it has them. Serving reads the assets, so :func:`check_checkpoint_step` reports
    these by default."""
    step_dir = Path(step_dir)
    return _notes(step_dir, _integrity_record(step_dir))


def _notes(step_dir: Path, record: Mapping | None) -> list[str]:
    notes = []
    if (p := _json_problem(step_dir / STEP_METADATA_FILE)) is not None:
        notes.append(p)
    assets = step_dir / ASSETS_ITEM
    if assets.is_dir():
        for f in assets.rglob(NORM_STATS_FILE):
            if (p := _json_problem(f)) is not None:
                notes.append(f"{f.relative_to(step_dir)}: {p}")
    if record is not None and isinstance(record.get("assets"), Mapping):
        reported = {n.split(":")[0] for n in notes}  # a file that does not parse is named once
        notes.extend(p for p in _asset_problems(step_dir, record["assets"]) if p.split(":")[0] not in reported)
    return notes


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


def check_checkpoint_step(step_dir: str | os.PathLike, *, notes: bool = True) -> list[str]:
    """Structural problems of a saved step directory (empty list = looks complete).

    Checks the commit marker, the ``params`` and ``train_state`` items (metadata, OCDBT manifest, no empty data
    files), that optional ``data_state``/``integrity``/``train_config`` files parse and, with ``notes``, the parts
    resuming does not read (:func:`step_notes`). It does not read the arrays;
    :func:`pi0_eqm.training.checkpoints.restore_state` does that (and verifies their checksums) and falls back on
    errors. A file this process may not read raises ``PermissionError``.
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return ["step directory is missing"]
    problems = []
    if not (step_dir / COMMIT_MARKER).is_file():
        problems.append(f"no commit marker ({COMMIT_MARKER}): the save did not finish")
    for item in (PARAMS_ITEM, TRAIN_STATE_ITEM):
        problems.extend(_pytree_item_problems(step_dir / item))
    data_dir = step_dir / DATA_STATE_ITEM
    if data_dir.exists() and (p := _json_problem(data_dir / DATA_STATE_FILE)) is not None:
        problems.append(f"{DATA_STATE_ITEM}/: {p}")
    integrity_dir = step_dir / INTEGRITY_ITEM
    if integrity_dir.exists() and (p := _json_problem(integrity_dir / INTEGRITY_FILE)) is not None:
        problems.append(f"{INTEGRITY_ITEM}/: {p}")
    config_dir = step_dir / TRAIN_CONFIG_ITEM
    if config_dir.exists() and (p := _json_problem(config_dir / TRAIN_CONFIG_FILE)) is not None:
        problems.append(f"{TRAIN_CONFIG_ITEM}/: {p}")
    record = _integrity_record(step_dir)
    saved_as = record.get("step") if record is not None else None
    if isinstance(saved_as, int) and step_dir.name.isdigit() and saved_as != int(step_dir.name):
        problems.append(f"{INTEGRITY_ITEM}/: this step was saved as step {saved_as}, but its directory is step "
                        f"{step_dir.name} (another step's files under this number?)")
    return problems + (_notes(step_dir, record) if notes else [])


def saved_step_problems(directory: str | os.PathLike) -> list[str]:
    """:func:`check_checkpoint_step` for a training step (it has orbax's step metadata); ``[]`` for an exported
    directory, which has no commit marker or integrity record to check."""
    directory = Path(directory)
    return check_checkpoint_step(directory) if (directory / STEP_METADATA_FILE).exists() else []


def params_problems(step_dir: str | os.PathLike, params: Mapping[str, Any]) -> list[str]:
    """Problems of ``params`` as read from ``<step_dir>/params``: float arrays holding NaN/inf and, when the step has
    an integrity record (a training step; exports have none), arrays whose checksums differ from the ones saved
    with that step (e.g. a ``params/`` copied in from another step) or that the record does not list."""
    step_dir = Path(step_dir)
    path = step_dir / INTEGRITY_ITEM / INTEGRITY_FILE
    record = None
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return [f"{path.relative_to(step_dir)} is unreadable ({type(e).__name__})"]
        if isinstance(record, Mapping) and isinstance(record.get("arrays"), Mapping):
            prefix = f"{PARAMS_ITEM}/"
            record = {**record, "arrays": {k: v for k, v in record["arrays"].items() if k.startswith(prefix)}}
    return verify({PARAMS_ITEM: {PARAMS_ITEM: params}}, record)


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


def tree_mismatches(step_dir: Path, expected: Mapping[str, Any]) -> list[str]:
    """Path/shape differences between the saved PyTree items of ``step_dir`` and ``expected`` (``{item: tree}``).

    Reads only the items' metadata, not the arrays.
    """
    diffs = []
    for item, tree in expected.items():
        found = _flat_shapes(_item_metadata_tree(step_dir / item), is_leaf=_is_array_metadata)
        diffs += _compare(item, _flat_shapes(tree), found)
    return diffs


def quarantine(directory: Path, steps: Iterable[int]) -> None:
    """Rename the unreadable ``<directory>/<step>`` directories to ``<step>.corrupt-<time>[-n]``, with a warning."""
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
        logger.warning("moved unreadable checkpoint step %d to %s (kept for inspection; delete it when done)", step, dst)
