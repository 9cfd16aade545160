"""Scripted pick-and-place demos on LIBERO-Object, written as a LeRobot dataset in ``physical-intelligence/libero``'s
layout (features ``image``, ``wrist_image`` (both rotated 180°, as openpi's conversion stores them), ``state``
(eef pos + axis-angle + gripper qpos, 8-d), ``actions`` (7-d OSC delta pose + gripper), the task language as prompt).

    uv run examples/libero/scripted_demos.py --out data/lerobot/libero_object_scripted --init-states 0 1 2 3

The expert reads the target object's and the basket's positions from the simulator and drives the end effector
through waypoints (above the object, down, close, lift, above the basket, open) with proportional OSC deltas; a
phase that does not reach its waypoint within 60 steps is left for the next one.
Episodes the expert fails are left out and counted. The dataset is written atomically (``write_lerobot_dataset``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import tyro  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from main import LIBERO_DUMMY_ACTION  # noqa: E402
from main import make_env  # noqa: E402
from main import quat2axisangle  # noqa: E402


@dataclasses.dataclass
class Args:
    out: str = "data/lerobot/libero_object_scripted"
    task_suite_name: str = "libero_object"
    task_ids: tuple[int, ...] | None = None  # default: all tasks of the suite
    init_states: tuple[int, ...] = (0, 1, 2, 3)  # official init-state indices to record (evaluate on others)
    resolution: int = 128
    max_steps: int = 280
    num_steps_wait: int = 10
    seed: int = 7
    overwrite: bool = False


def _state(obs: dict) -> np.ndarray:
    return np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]),
                           obs["robot0_gripper_qpos"]]).astype(np.float32)


def _waypoints(obj: np.ndarray, basket: np.ndarray) -> list[tuple[np.ndarray, float, int]]:
    """(target eef position, gripper command, minimum steps) per phase."""
    above = lambda p, dz: np.array([p[0], p[1], p[2] + dz])  # noqa: E731
    return [
        (above(obj, 0.12), -1.0, 0),
        (above(obj, 0.02), -1.0, 0),
        (above(obj, 0.02), 1.0, 12),  # close
        (above(obj, 0.28), 1.0, 0),
        (above(basket, 0.28), 1.0, 0),
        (above(basket, 0.20), 1.0, 0),
        (above(basket, 0.20), -1.0, 30),  # open: the object drops into the basket
    ]


def run_expert(env, init_state, args: Args) -> tuple[dict, bool]:
    """One scripted episode from ``init_state``: ``(steps, success)``."""
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(args.num_steps_wait):
        obs, _, _, _ = env.step(LIBERO_DUMMY_ACTION)
    inner = env.env
    target, basket = inner.obj_of_interest[0], inner.obj_of_interest[-1]
    pos = lambda name: np.array(inner.sim.data.body_xpos[inner.obj_body_id[name]])  # noqa: E731
    steps: dict[str, list] = {"observation/image": [], "observation/wrist_image": [], "observation/state": [],
                              "action": []}
    plan = _waypoints(pos(target), pos(basket))
    phase, in_phase, done = 0, 0, False
    for _ in range(args.max_steps):
        goal, grip, min_steps = plan[phase]
        err = goal - obs["robot0_eef_pos"]
        action = np.concatenate([np.clip(err * 12.0, -1.0, 1.0), np.zeros(3), [grip]]).astype(np.float32)
        steps["observation/image"].append(np.ascontiguousarray(obs["agentview_image"][::-1, ::-1]))
        steps["observation/wrist_image"].append(np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1]))
        steps["observation/state"].append(_state(obs))
        steps["action"].append(action)
        obs, _, done, _ = env.step(action.tolist())
        in_phase += 1
        if done:
            break
        reached = np.linalg.norm(err) < 0.01 or in_phase >= 60
        if reached and in_phase >= min_steps and phase < len(plan) - 1:
            phase, in_phase = phase + 1, 0
            if phase == 1:  # re-read the object: settling after the wait steps moves it
                plan = _waypoints(pos(target), pos(basket))
    return {k: np.stack(v) for k, v in steps.items()}, bool(done)


def main(args: Args) -> None:
    from libero.libero import benchmark

    from pi0_eqm.data.episodes import Episode
    from pi0_eqm.data.lerobot import write_lerobot_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suite = benchmark.get_benchmark_dict()[args.task_suite_name]()
    task_ids = args.task_ids if args.task_ids is not None else tuple(range(suite.n_tasks))
    counts = {"recorded": 0, "failed": 0}

    def episodes():
        for task_id in task_ids:
            task = suite.get_task(task_id)
            init_states = suite.get_task_init_states(task_id)
            env, prompt = make_env(task, args.resolution, args.seed)
            try:
                for i in args.init_states:
                    steps, ok = run_expert(env, init_states[i], args)
                    logging.info("task %d (%s) init state %d: %s in %d steps", task_id, prompt, i,
                                 "success" if ok else "failure", len(steps["action"]))
                    counts["recorded" if ok else "failed"] += 1
                    if ok:
                        yield Episode(steps, prompt=prompt, metadata={"task_id": task_id, "init_state": i})
            finally:
                env.close()

    out = write_lerobot_dataset(args.out, episodes(), fps=20, overwrite=args.overwrite)
    print(f"{counts['recorded']} demos written to {out} ({counts['failed']} expert failures left out)")


if __name__ == "__main__":
    main(tyro.cli(Args))
