"""The trained Meta-World π₀-EqM policy the solver analysis inspects: the main job's checkpoint, or — on a fresh clone
without it — a small model trained on the fly through the same pipeline (demos → norm stats → ``loop.train``).

The quick model is written under its own ``workdir`` (data, assets and checkpoints), so it never touches the main
job's ``./data``, ``./assets`` or ``./checkpoints/pi0_eqm_metaworld``; a finished quick run is reused.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

CONFIG_NAME = "pi0_eqm_metaworld"
DEFAULT_CHECKPOINT = Path("checkpoints") / CONFIG_NAME / "main"
DEFAULT_WORKDIR = Path("checkpoints") / "solver_iterates_quick"
QUICK_TASKS = ("drawer-open-v3", "window-open-v3")  # the tasks the notebook inspects


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint step (or is one)."""
    from pi0_eqm.training.checkpoint_dir import latest_step_dir

    try:
        latest_step_dir(run_dir)
    except FileNotFoundError:
        return False
    return True


def quick_train_config(workdir: str | os.PathLike, *, data_path: str | os.PathLike, train_steps: int = 600,
                       batch_size: int = 8, peak_lr: float = 2e-3, seed: int = 42):
    """``pi0_eqm_metaworld`` shrunk for a fast CPU run, with data, assets and checkpoints under ``workdir``.

    Small batches, a higher peak learning rate (cosine to a tenth of it) and no EMA: with a few hundred steps an EMA
    would still carry a large share of the random initialisation, and the field would not yet contract around its
    roots (the solver would never reach any ε)."""
    from pi0_eqm.training.config import get_config

    cfg = get_config(CONFIG_NAME)
    workdir = Path(workdir)
    sched = dataclasses.replace(cfg.lr_schedule, warmup_steps=max(1, train_steps // 10), peak_lr=peak_lr,
                                decay_steps=train_steps, decay_lr=peak_lr / 10)
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=str(Path(data_path).resolve())),
        exp_name="quick",
        seed=seed,
        num_train_steps=train_steps,
        batch_size=batch_size,
        lr_schedule=sched,
        ema_decay=None,
        log_interval=max(1, train_steps // 5),
        save_interval=train_steps,
        checkpoint_base_dir=str(workdir / "checkpoints"),
        assets_base_dir=str(workdir / "assets"),
        async_checkpoint=False,
    )


def train_quick_model(workdir: str | os.PathLike = DEFAULT_WORKDIR, *, tasks=QUICK_TASKS, demos_per_task: int = 2,
                      train_steps: int = 600, batch_size: int = 8, peak_lr: float = 2e-3, seed: int = 42,
                      progress: bool = False):
    """Generates ``demos_per_task`` expert demos per task, computes norm stats and trains ``train_steps`` steps
    (≈ 1.5 min on 2 busy CPU cores with the defaults; deterministic given the arguments; reuses a finished run).
    It memorises a handful of demos — enough for the solver to behave as on a real model, not to solve the tasks.
    Returns ``(train config, run dir)``."""
    from pi0_eqm.envs.demos import generate_dataset
    from pi0_eqm.training import loop
    from pi0_eqm.training.norm_stats import compute_for_config

    workdir = Path(workdir)
    version_dir = generate_dataset(workdir / "data", tasks=tuple(tasks), episodes_per_task=demos_per_task,
                                   resolution=64, progress=progress)
    cfg = quick_train_config(workdir, data_path=version_dir.parent, train_steps=train_steps, batch_size=batch_size,
                             peak_lr=peak_lr, seed=seed)
    run = cfg.checkpoint_dir
    steps = sorted(int(p.name) for p in run.iterdir() if p.name.isdigit()) if run.is_dir() else []
    if not (steps and steps[-1] >= train_steps and has_checkpoint(run)):
        compute_for_config(cfg)
        loop.train(dataclasses.replace(cfg, overwrite=True), progress=progress)
    return cfg, run


def load_or_train_policy(checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT, *, settings=None,
                         workdir: str | os.PathLike = DEFAULT_WORKDIR, quick: dict[str, Any] | None = None):
    """The policy of ``checkpoint`` (a run or step directory, by default the main job's) if it exists, else of a quick
    model from :func:`train_quick_model` (``quick``: its keyword arguments). Returns ``(policy, info)`` with
    ``info = {"source": "checkpoint" | "quick", "run_dir", "step_dir", "config"}``."""
    from pi0_eqm.benchmarks.metaworld import load_policy
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.training.checkpoint_dir import latest_step_dir
    from pi0_eqm.training.config import get_config
    from pi0_eqm.training.config_record import read_config

    settings = settings or DecoderSettings()
    if has_checkpoint(checkpoint):
        run, source = Path(checkpoint), "checkpoint"
        # the checkpoint's own config (e.g. a π₀.5 run); checkpoints saved before configs were recorded are the
        # main job's
        cfg = read_config(latest_step_dir(run)) or get_config(CONFIG_NAME)
    else:
        cfg, run = train_quick_model(workdir, **(quick or {}))
        source = "quick"
    policy = load_policy(cfg, run, settings)
    return policy, {"source": source, "run_dir": str(run), "step_dir": str(latest_step_dir(run)), "config": cfg}
