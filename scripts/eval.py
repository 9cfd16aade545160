"""Closed-loop evaluation of a trained checkpoint on the embedded Meta-World benchmark (held-out seeds).

    uv run scripts/eval.py --checkpoint checkpoints/pi0_eqm_metaworld/main [--config pi0_eqm_metaworld] \\
        [--episodes-per-task 10] [--replan-every 8] [--preset action|paper|bb] [--threshold 1e-2] [--max-iters 10] \\
        [--step-size 0.03] [--momentum 0.3] [--variant nesterov] [--warm-start off] [--videos-per-task 1]

Writes ``<out>/episodes.jsonl`` as episodes finish (an ``EpisodeLog``: a stopped or killed evaluation keeps them,
and the same command again runs only the rest; another evaluation's ``--out`` is refused), then
``<out>/results.json`` (per-episode records, per-task and mean success with 95% CIs, solver iterations and latency)
and ``<out>/success.png``; prints a table. The train config is the one the checkpoint records (``--config``
is then optional, and refused if it does not match; checkpoints saved before configs were recorded need it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

os.environ.setdefault("MUJOCO_GL", "egl")

import tyro  # noqa: E402

from pi0_eqm.decoders.settings import DecoderSettings  # noqa: E402


@dataclasses.dataclass(frozen=True)
class EvalDecoderSettings(DecoderSettings):
    """The decoder flags of ``DecoderSettings`` without ``--executed``: the evaluator executes ``--replan-every``."""

    executed: tyro.conf.Suppress[int] = 5


@dataclasses.dataclass
class Args:
    checkpoint: str  # run dir (latest committed step is used), step dir, or exported dir
    config: str | None = None  # default: the config recorded in the checkpoint
    episodes_per_task: int = 10
    replan_every: int = 8
    seed: int = 1000  # evaluation seed (demos use 0: held-out configurations)
    max_steps: int | None = None  # default: 200 on Meta-World, 400 on the ALOHA sim
    tasks: tuple[str, ...] | None = None  # default: the benchmark's (Meta-World's 8; ALOHA: the config's task)
    decoder: Annotated[EvalDecoderSettings, tyro.conf.OmitArgPrefixes] = EvalDecoderSettings()
    videos_per_task: int = 0
    out: str = "results/eval"


def _episode_log(args: Args, step_dir, settings: DecoderSettings, tasks, max_steps: int):
    """``<out>/episodes.jsonl`` of this evaluation; ``ValueError`` if ``<out>`` holds another evaluation's."""
    from pi0_eqm.atomic import atomic_write_bytes
    from pi0_eqm.envs.episode_log import EpisodeLog

    what = {"checkpoint": str(step_dir.resolve()), "settings": dataclasses.asdict(settings), "seed": args.seed,
            "max_steps": max_steps, "replan_every": args.replan_every, "tasks": list(tasks)}
    what = json.loads(json.dumps(what))
    path = os.path.join(args.out, "evaluation.json")
    log = EpisodeLog(os.path.join(args.out, "episodes.jsonl"))
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != what:
            diffs = sorted(k for k in set(before) | set(what) if before.get(k) != what.get(k))
            raise ValueError(f"{args.out} holds the episodes of another evaluation (different {', '.join(diffs)}); "
                             "choose another --out, or delete that directory to start over")
    elif log.read():
        raise ValueError(f"{log.path} exists without {path}; choose another --out")
    else:
        atomic_write_bytes(Path(path), json.dumps(what, indent=1).encode())
    return log


def main(args: Args) -> dict:
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.envs.tasks import DEFAULT_TASKS
    from pi0_eqm.policies.policy_config import resolve_checkpoint

    cfg, step_dir = resolve_checkpoint(args.checkpoint, args.config)
    fields = {f.name: getattr(args.decoder, f.name) for f in dataclasses.fields(DecoderSettings)}
    settings = DecoderSettings(**{**fields, "executed": args.replan_every})
    env = cfg.policy_metadata.get("env", "metaworld")
    resolution = cfg.model.image_resolution[0]
    make_env = None
    if env == "aloha_sim":
        from pi0_eqm.envs import aloha_sim

        tasks = args.tasks or tuple(cfg.policy_metadata.get("tasks", ("transfer_cube",)))
        max_steps = args.max_steps or aloha_sim.MAX_STEPS

        def make_env(task):
            return aloha_sim.AlohaSimEnv(task, args.seed, resolution, max_steps)
    else:
        tasks, max_steps = args.tasks or DEFAULT_TASKS, args.max_steps or 200
    log = _episode_log(args, step_dir, settings, tasks, max_steps)
    policy = bench.load_policy(cfg, step_dir, settings)
    result = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task, replan_every=args.replan_every,
                                   seed=args.seed, max_steps=max_steps, tasks=tasks, resolution=resolution,
                                   videos_per_task=args.videos_per_task, video_dir=os.path.join(args.out, "videos"),
                                   log=log, make_env=make_env)
    row = bench.summary_row(result)
    result["settings"] = dataclasses.asdict(settings)
    result["summary"] = row
    bench.save_json(os.path.join(args.out, "results.json"), result)
    bench.plot_success({cfg.name: row}, tasks, os.path.join(args.out, "success.png"), f"{cfg.name} on {'the ALOHA sim' if env == 'aloha_sim' else 'Meta-World'}")
    print(bench.format_table({cfg.name: row}, tasks))
    print(f"results in {args.out}/results.json")
    return result


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
