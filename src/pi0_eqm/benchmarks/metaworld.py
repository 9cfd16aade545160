"""The embedded Meta-World benchmark's steps: point a registered config at generated demos, train or reuse it, load a
checkpoint as a policy, evaluate it closed loop, summarize, tabulate and plot (``scripts/embedded_benchmark.py``,
``scripts/eval.py`` and the studies in ``lab/``)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.envs import evaluate as _ev
from pi0_eqm.envs.episode_log import EpisodeLog
from pi0_eqm.envs.realtime import RealtimeConfig
from pi0_eqm.envs.tasks import DEFAULT_TASKS
from pi0_eqm.policies.policy import Policy
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.training import loop
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.config import get_config
from pi0_eqm.training.norm_stats import compute_for_config


def configure_run(name: str, data_path: str, *, exp_name: str, seed: int, train_steps: int | None = None,
                  batch_size: int | None = None, checkpoint_base_dir: str = "./checkpoints",
                  assets_base_dir: str = "./assets", keep_every: int | None = None,
                  decoder_updates: dict[str, Any] | None = None) -> TrainConfig:
    """Registered config ``name`` pointed at the generated demos; ``train_steps`` rescales the LR schedule;
    ``keep_every`` saves and keeps a checkpoint every that many steps (for success-vs-steps curves);
    ``decoder_updates`` replaces fields of the model's decoder config."""
    cfg = get_config(name)
    if decoder_updates:
        decoder = dataclasses.replace(cfg.model.decoder, **decoder_updates)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=decoder))
    updates = {"data": dataclasses.replace(cfg.data, path=data_path), "exp_name": exp_name, "seed": seed,
               "checkpoint_base_dir": checkpoint_base_dir, "assets_base_dir": assets_base_dir}
    if train_steps is not None:
        sched = dataclasses.replace(cfg.lr_schedule, decay_steps=train_steps,
                                    warmup_steps=min(cfg.lr_schedule.warmup_steps, max(1, train_steps // 10)))
        updates |= {"num_train_steps": train_steps, "lr_schedule": sched,
                    "save_interval": min(cfg.save_interval, train_steps)}
    if batch_size is not None:
        updates["batch_size"] = batch_size
    if keep_every is not None:
        updates |= {"save_interval": keep_every, "keep_period": keep_every}
    return dataclasses.replace(cfg, **updates)


def train_or_reuse(cfg: TrainConfig, retrain: bool, progress: bool) -> None:
    """Computes the norm stats (and FAST tokenizer for KI configs), then trains ``cfg``, resumes an interrupted run,
    or reuses a finished one (unless ``retrain``)."""
    compute_for_config(cfg)

    run = cfg.checkpoint_dir
    steps = sorted(int(p.name) for p in run.iterdir() if p.name.isdigit()) if run.is_dir() else []
    if steps and steps[-1] >= cfg.num_train_steps and not retrain:
        print(f"[{cfg.name}] reusing finished run {run} (step {steps[-1]})")
        return
    resume = bool(steps) and not retrain
    cfg = dataclasses.replace(cfg, resume=resume, overwrite=not resume)
    print(f"[{cfg.name}] {'resuming' if resume else 'training'} → {run}")
    loop.train(cfg, progress=progress)


def load_policy(config: TrainConfig, checkpoint: str | os.PathLike, settings: DecoderSettings) -> Policy:
    return create_trained_policy(config, checkpoint, settings=settings)


def evaluate_policy(policy: Policy, *, episodes_per_task: int, replan_every: int, seed: int, max_steps: int,
                    tasks=None, resolution: int = 64, videos_per_task: int = 0, video_dir=None,
                    progress: bool = True, realtime: RealtimeConfig | None = None,
                    log: EpisodeLog | None = None, make_env=None) -> dict[str, Any]:
    """``envs.evaluate.evaluate`` on the policy; under ``realtime`` the discontinuities are in the policy's normalized
    action units. With ``log``, each finished episode is appended to it and the episodes already there are not run
    again (the caller checks that the log belongs to this evaluation). ``make_env(task)``: another benchmark's env
    (``envs.evaluate.evaluate``'s; default Meta-World)."""
    return _ev.evaluate(policy, tasks=tuple(tasks or DEFAULT_TASKS), episodes_per_task=episodes_per_task, seed=seed,
                        max_steps=max_steps, replan_every=replan_every, resolution=resolution,
                        videos_per_task=videos_per_task, video_dir=video_dir, progress=progress, realtime=realtime,
                        normalize=lambda state, a: policy.action_transform({"state": state, "actions": a})["actions"],
                        finished=log.read() if log is not None else (),
                        on_episode=log.append if log is not None else None, make_env=make_env)


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    """Mean success, CI, solver iterations (mean/p50/p90 per chunk) and policy latency from an ``evaluate`` result."""
    iters = [x for ep in result["episodes"] for x in ep["stats"].get("solver/iterations", [])]
    lat = [x for ep in result["episodes"] for x in ep["latency_s"]]
    overall = result["overall"]
    return {
        "mean_success": result["mean_success"],
        "overall_success": overall["success_rate"],
        "ci95": overall["ci95"],
        "episodes": overall["n"],
        "iters_mean": float(np.mean(iters)) if iters else None,
        "iters_p50": float(np.percentile(iters, 50)) if iters else None,
        "iters_p90": float(np.percentile(iters, 90)) if iters else None,
        "latency_ms_mean": 1e3 * float(np.mean(lat)) if lat else None,
        "latency_ms_p90": 1e3 * float(np.percentile(lat, 90)) if lat else None,
        "per_task": {t: s["success_rate"] for t, s in result["per_task"].items()},
        "per_task_ci95": {t: s["ci95"] for t, s in result["per_task"].items()},
    }


def format_table(rows: dict[str, dict[str, Any]], tasks) -> str:
    """A plain-text table: one row per named run, one column per task, then mean success with 95% CI."""
    short = [t.replace("-v3", "") for t in tasks]
    head = f"{'run':<28}" + "".join(f"{s[:12]:>13}" for s in short) + f"{'mean':>7}  {'95% CI':>13} {'iters':>7} {'ms':>6}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(f"{r['per_task'].get(t, float('nan')):>13.2f}" for t in tasks)
        it = f"{r['iters_mean']:.0f}" if r.get("iters_mean") is not None else "-"
        ms = f"{r['latency_ms_mean']:.0f}" if r.get("latency_ms_mean") is not None else "-"
        lines.append(f"{name:<28}{cells}{r['mean_success']:>7.2f}  [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] "
                     f"{it:>7} {ms:>6}")
    return "\n".join(lines)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def plot_success(rows: dict[str, dict[str, Any]], tasks, path: str | os.PathLike, title: str) -> Path:
    import matplotlib  # lazy: plotting is optional (the `sim` extra installs matplotlib)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    names = list(rows)
    x = np.arange(len(tasks) + 1)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(x)), 4))
    for i, name in enumerate(names):
        r = rows[name]
        vals = [r["per_task"].get(t, 0.0) for t in tasks] + [r["mean_success"]]
        pos = x + (i - (len(names) - 1) / 2) * width
        fwd = f", {r['iters_mean']:.0f} forwards/chunk" if r.get("iters_mean") is not None else ""
        bars = ax.bar(pos, vals, width, label=f"{name}{fwd}")
        task_ci = r.get("per_task_ci95") or {}
        tasks_with_ci = [i for i, t in enumerate(tasks) if task_ci.get(t) is not None]
        if tasks_with_ci:  # per-task Wilson 95% CIs
            ys = np.array([vals[i] for i in tasks_with_ci])
            los = np.array([task_ci[tasks[i]][0] for i in tasks_with_ci])
            his = np.array([task_ci[tasks[i]][1] for i in tasks_with_ci])
            ax.errorbar(pos[tasks_with_ci], ys, yerr=[ys - los, his - ys], fmt="none", ecolor="0.3", elinewidth=0.8,
                        capsize=2)
        if r.get("ci95") is not None:  # pooled Wilson 95% CI on the overall success
            lo, hi = r["ci95"]
            y = r["overall_success"]
            ax.errorbar([pos[-1]], [y], yerr=[[y - lo], [hi - y]], fmt="k.", capsize=4)
            ax.text(pos[-1], min(hi, 1.0) + 0.02 + 0.04 * i, f"[{lo:.2f}, {hi:.2f}]", ha="center", fontsize=6,
                    color=bars[-1].get_facecolor())
    ax.set_xticks(x, [t.replace("-v3", "") for t in tasks] + ["MEAN"], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1 + 0.04 * len(names))
    ax.set_ylabel("success rate (Wilson 95% CIs; MEAN pooled)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
