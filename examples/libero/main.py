"""LIBERO closed-loop evaluation against a pi0_eqm (or openpi) policy server, with openpi's client protocol.

    uv sync --extra libero
    uv run scripts/serve_policy.py --config pi0_eqm_libero --checkpoint <ckpt> --executed 5 &
    uv run examples/libero/main.py --task-suite-name libero_10 [--num-trials-per-task 50]

Protocol (openpi ``examples/libero/main.py``): 256 px render, both images rotated 180°, letterbox-resized to 224,
state = eef_pos + axis-angle(eef_quat) + gripper qpos (8-d), 10 settle steps of the dummy action, replan every 5
actions, per-suite max steps (spatial 220, object 280, goal 300, libero_10 520, libero_90 400), 50 trials per task on
the official init states, seed 7. Writes per-task results (JSON) and an MP4 per episode.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import pathlib

import numpy as np
import tyro

LIBERO_DUMMY_ACTION = [0.0] * 6 + [-1.0]
LIBERO_ENV_RESOLUTION = 256
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


@dataclasses.dataclass
class Args:
    host: str = "127.0.0.1"
    port: int = 8000
    resize_size: int = 224
    replan_steps: int = 5
    task_suite_name: str = "libero_spatial"
    num_steps_wait: int = 10
    num_trials_per_task: int = 50
    task_ids: tuple[int, ...] | None = None  # default: all tasks of the suite
    max_steps: int | None = None  # default: the suite's
    video_out_path: str = "data/libero/videos"
    results_out: str = "data/libero/results.json"
    seed: int = 7


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite quaternion (x, y, z, w) → axis-angle (openpi's helper)."""
    quat = np.array(quat, dtype=np.float64)
    quat[3] = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(quat[3])) / den


def make_observation(obs: dict, prompt: str, resize_size: int) -> dict:
    """openpi's LIBERO request from a robosuite observation (images rotated 180°, letterboxed to resize_size)."""
    from pi0_eqm.data.transforms import resize_with_pad

    img = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist = np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])
    state = np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]])
    return {
        "observation/image": resize_with_pad(img.astype(np.uint8), resize_size, resize_size),
        "observation/wrist_image": resize_with_pad(wrist.astype(np.uint8), resize_size, resize_size),
        "observation/state": state.astype(np.float32),
        "prompt": str(prompt),
    }


def make_env(task, resolution: int, seed: int):
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
    env.seed(seed)  # affects object positions even with fixed init states
    return env, task.language


def run_episode(env, client, init_state, prompt: str, args: Args, max_steps: int, frames: list | None) -> bool:
    env.reset()
    obs = env.set_init_state(init_state)
    plan: collections.deque = collections.deque()
    client.reset()
    for t in range(max_steps + args.num_steps_wait):
        if t < args.num_steps_wait:
            obs, _, done, _ = env.step(LIBERO_DUMMY_ACTION)
            continue
        element = make_observation(obs, prompt, args.resize_size)
        if frames is not None:
            frames.append(np.concatenate([element["observation/image"], element["observation/wrist_image"]], axis=1))
        if not plan:
            chunk = client.infer(element)["actions"]
            if len(chunk) < args.replan_steps:
                raise ValueError(f"policy returned {len(chunk)} actions; need at least replan_steps={args.replan_steps}")
            plan.extend(chunk[: args.replan_steps])
        obs, _, done, _ = env.step(np.asarray(plan.popleft()).tolist())
        if done:
            return True
    return False


def main(args: Args) -> dict:
    from libero.libero import benchmark

    from pi0_eqm.envs.evaluate import write_video
    from pi0_eqm.envs.stats import success_summary
    from pi0_eqm.serving.client import WebsocketClientPolicy

    np.random.seed(args.seed)
    suite = benchmark.get_benchmark_dict()[args.task_suite_name]()
    max_steps = args.max_steps or MAX_STEPS[args.task_suite_name]
    client = WebsocketClientPolicy(args.host, args.port)
    os.makedirs(args.video_out_path, exist_ok=True)
    results = {"args": dataclasses.asdict(args), "tasks": {}}
    task_ids = args.task_ids if args.task_ids is not None else range(suite.n_tasks)
    for task_id in task_ids:
        task = suite.get_task(task_id)
        init_states = suite.get_task_init_states(task_id)
        env, prompt = make_env(task, LIBERO_ENV_RESOLUTION, args.seed)
        successes = []
        for ep in range(args.num_trials_per_task):
            frames: list = []
            try:
                ok = run_episode(env, client, init_states[ep % len(init_states)], prompt, args, max_steps, frames)
            except Exception as e:  # noqa: BLE001 - openpi counts any exception as a failed episode
                logging.exception("episode failed: %s", e)
                ok = False
            successes.append(ok)
            tag = "success" if ok else "failure"
            if frames:
                write_video(frames, pathlib.Path(args.video_out_path) / f"{args.task_suite_name}_{task_id}_{ep}_{tag}",
                            fps=10)
            logging.info("task %d (%s) episode %d: %s", task_id, prompt, ep, tag)
        env.close()
        results["tasks"][prompt] = success_summary(sum(successes), len(successes))
    n = sum(r["n"] for r in results["tasks"].values())
    results["total"] = success_summary(sum(r["successes"] for r in results["tasks"].values()), n)
    pathlib.Path(args.results_out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.results_out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["total"]))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(tyro.cli(Args))
