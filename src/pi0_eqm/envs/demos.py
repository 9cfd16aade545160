"""Meta-World scripted demonstrations → an RLDS (TFDS ``array_record``) dataset the training pipeline reads.

Idempotent and atomic: an existing complete dataset with the same name is reused; a new one is built in a temporary
directory and renamed into place, so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.rlds import find_version_dir
from pi0_eqm.data.rlds import is_complete_rlds
from pi0_eqm.data.rlds import write_rlds_dataset
from pi0_eqm.envs.metaworld import generate_demos
from pi0_eqm.envs.tasks import DEFAULT_TASKS
from pi0_eqm.envs.tasks import dataset_name


def generate_dataset(root: str | Path, *, tasks: Sequence[str] = DEFAULT_TASKS, episodes_per_task: int = 10,
                     seed: int = 0, resolution: int = 64, max_steps: int = 200, name: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Writes (or reuses) ``<root>/<name>/1.0.0`` and returns the dataset's version directory."""

    tasks = tuple(tasks)
    name = name or dataset_name(tasks, episodes_per_task, seed, resolution)
    root = Path(root)
    existing = root / name
    if existing.exists() and not overwrite:
        try:
            version_dir = find_version_dir(existing)
            if is_complete_rlds(version_dir):
                return version_dir
        except FileNotFoundError:
            pass

    def episodes():
        for demo in generate_demos(tasks, episodes_per_task, seed, resolution, max_steps=max_steps, progress=progress):
            meta = {k: v for k, v in demo.get("metadata", {}).items() if isinstance(v, str | int | float)}
            yield Episode(demo["steps"], demo["prompt"], meta)

    return write_rlds_dataset(root, name, episodes(), overwrite=overwrite)
