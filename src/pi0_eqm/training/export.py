"""Export a checkpoint step to openpi's serving layout: ``<out>/params`` + ``<out>/assets/<asset_id>/norm_stats.json``,
plus the step's train config record (``<out>/train_config/train_config.json``) when it has one.

The export is built in a hidden sibling directory and renamed into place: ``<out>`` is never half-written. It holds
the marker file ``.pi0_eqm_export.json``; ``overwrite`` replaces only a directory holding that marker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.atomic import atomic_write_bytes
from pi0_eqm.atomic import publish_dir
from pi0_eqm.atomic import sibling
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.training.checkpoint_assets import restore_norm_stats
from pi0_eqm.training.checkpoint_dir import check_overwritable
from pi0_eqm.training.checkpoint_dir import latest_step_dir
from pi0_eqm.training.checkpoint_integrity import params_problems
from pi0_eqm.training.checkpoint_integrity import saved_step_problems
from pi0_eqm.training.config_record import record_path
from pi0_eqm.training.params_io import restore_params
from pi0_eqm.training.params_io import save_params

EXPORT_MARKER = ".pi0_eqm_export.json"


def export_checkpoint(step_dir: str | os.PathLike, out: str | os.PathLike, *, bf16: bool = False,
                      overwrite: bool = False) -> Path:
    """``step_dir``: a step directory, or a run directory (its latest committed step is exported)."""
    step_dir, out = latest_step_dir(step_dir), Path(out).absolute()
    if not (step_dir / "params").exists():
        raise FileNotFoundError(f"{step_dir} has no params/; expected a training step directory like "
                                "checkpoints/<config>/<exp>/<step>")
    problems = saved_step_problems(step_dir)
    if problems:
        raise ValueError(f"checkpoint step {step_dir} is incomplete or damaged: {problems}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_overwritable(out, None, marker=EXPORT_MARKER, made_by="export_checkpoint",
                           way_out="choose another --out")
    params = restore_params(step_dir / "params", restore_type=np.ndarray)
    damaged = params_problems(step_dir, params)
    if damaged:
        raise ValueError(f"the params in {step_dir} are not the ones that step saved: {'; '.join(damaged[:10])}; "
                         "export an earlier step of the run")
    if bf16:
        params = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), params)
    norm_stats = restore_norm_stats(step_dir)
    tmp = sibling(out, "export")
    try:
        save_params(tmp / "params", params)
        record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "pi0_eqm.training.export",
                  "source": str(step_dir)}
        atomic_write_bytes(tmp / EXPORT_MARKER, json.dumps(record).encode())
        for asset_id, stats in norm_stats.items():
            save_norm_stats(tmp / "assets" / asset_id, stats)
        assets = step_dir / "assets"
        for fast_dir in sorted(assets.rglob(FAST_TOKENIZER_DIR)) if assets.is_dir() else ():
            shutil.copytree(fast_dir, tmp / "assets" / fast_dir.relative_to(assets))
        if record_path(step_dir).is_file():
            record_path(tmp).parent.mkdir(parents=True)
            shutil.copyfile(record_path(step_dir), record_path(tmp))
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
