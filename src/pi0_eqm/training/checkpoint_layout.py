"""On-disk layout of a training run directory (openpi's), one sub-directory per saved step::

    <ckpt_dir>/<step>/_CHECKPOINT_METADATA, commit_success.txt     written by orbax at commit
    <ckpt_dir>/<step>/params/          orbax PyTree (OCDBT): {"params": <pure dict>}  (EMA params when EMA is on)
    <ckpt_dir>/<step>/train_state/     orbax PyTree: {"step", "opt_state", "rng"} (+ "params": raw params if EMA)
    <ckpt_dir>/<step>/assets/<asset_id>/norm_stats.json     openpi format (pi0_eqm.data.normalize)
    <ckpt_dir>/<step>/data_state/data_state.json            data-iterator state (JSON)
    <ckpt_dir>/<step>/train_config/train_config.json        the train config of the run (pi0_eqm.training.config_record)
    <ckpt_dir>/<step>/integrity/checksums.json              per-array checksums (pi0_eqm.training.checkpoint_checksums)

``<step>/params`` is readable by openpi's ``restore_params`` and by a bare ``ocp.PyTreeCheckpointer().restore``.
Interrupted saves leave ``<step>.orbax-checkpoint-tmp*`` directories; unreadable steps set aside by
:func:`pi0_eqm.training.checkpoints.restore_state` are named ``<step>.corrupt-<time>``.
"""

from __future__ import annotations

from pathlib import Path
import re

from pi0_eqm.training.params_io import PARAMS_ITEM

__all__ = [
    "ASSETS_ITEM",
    "COMMIT_MARKER",
    "CORRUPT_MARKER",
    "DATA_STATE_FILE",
    "DATA_STATE_ITEM",
    "INTEGRITY_FILE",
    "INTEGRITY_ITEM",
    "PARAMS_ITEM",
    "STEP_METADATA_FILE",
    "TMP_DIR_MARKER",
    "TRAIN_CONFIG_FILE",
    "TRAIN_CONFIG_ITEM",
    "TRAIN_STATE_ITEM",
    "step_dirs",
]

TRAIN_STATE_ITEM = "train_state"
ASSETS_ITEM = "assets"
DATA_STATE_ITEM = "data_state"
DATA_STATE_FILE = "data_state.json"
TRAIN_CONFIG_ITEM = "train_config"
INTEGRITY_ITEM = "integrity"
INTEGRITY_FILE = "checksums.json"
TRAIN_CONFIG_FILE = "train_config.json"
COMMIT_MARKER = "commit_success.txt"
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
TMP_DIR_MARKER = ".orbax-checkpoint-tmp"
CORRUPT_MARKER = ".corrupt-"
_STEP_RE = re.compile(r"^(0|[1-9]\d*)$")


def step_dirs(directory: Path) -> dict[int, Path]:
    """``{step: <directory>/<step>}`` for every step-numbered sub-directory (complete or not)."""
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.is_dir() and _STEP_RE.match(p.name)}
