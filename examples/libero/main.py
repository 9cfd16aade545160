"""LIBERO closed-loop evaluation against a pi0_eqm (or openpi) policy server, with openpi's client protocol.

    uv sync --extra libero
    uv run scripts/serve_policy.py --checkpoint <run dir> --executed 5 &
    uv run examples/libero/main.py --task-suite-name libero_object [--task-ids 0 1] [--init-state-start 48] \\
        [--num-trials-per-task 2] [--replan-steps 5] [--no-video] [--out data/libero/eval]

Protocol (openpi ``examples/libero/main.py``): 256 px render, both images rotated 180°, letterbox-resized to 224,
state = eef_pos + axis-angle(eef_quat) + gripper qpos (8-d), 10 settle steps of the dummy action, replan every 5
actions, per-suite max steps (spatial 220, object 280, goal 300, libero_10 520, libero_90 400), 50 trials per task on
the official init states, seed 7.

Episode ``k`` of a task starts from official init state ``(init_state_start + k) mod n``. Every finished episode is
appended to ``<out>/episodes.jsonl`` (``pi0_eqm.envs.episode_log.EpisodeLog``, the record every runner keeps) (success, steps, and per chunk the solver iterations, final residual, the
server's and the policy's inference ms and the round trip ms); a rerun with the same ``--out`` skips the episodes
already there. ``<out>/summary.json`` (written atomically) and the printed table give the success per task and for
the suite with Wilson 95% CIs, over every episode in the JSONL. Videos (``--video``, on by default) go to
``<out>/videos``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Literal

import numpy as np
import tyro

from pi0_eqm.envs.episode_log import EpisodeLog
from pi0_eqm.serving.realtime import AsyncChunkBroker

LIBERO_DUMMY_ACTION = [0.0] * 6 + [-1.0]
LIBERO_ENV_RESOLUTION = 256
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass
class Args:
    host: str = "127.0.0.1"
    port: int = 8000
    resize_size: int = 224
    replan_steps: int = 5
    task_suite_name: str = "libero_spatial"
    num_steps_wait: int = 10
    num_trials_per_task: int = 50  # episodes per task
    init_state_start: int = 0  # episode k uses official init state (init_state_start + k) mod n
    task_ids: tuple[int, ...] | None = None  # default: all tasks of the suite
    max_steps: int | None = None  # default: the suite's
    video: bool = True
    out: str = "data/libero/eval"  # episodes.jsonl, summary.json, videos/
    seed: int = 7
    # Asynchronous execution (pi0_eqm.serving.realtime.AsyncChunkBroker): "off" = openpi's synchronous loop; "naive" =
    # keep executing the current chunk while the next request is in flight and switch at the measured delay;
    # "prefix" = also send the committed prefix (``--expected-delay`` rows, then the largest delay measured).
    realtime: Literal["off", "naive", "prefix"] = "off"
    expected_delay: int = 1


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


def chunk_record(reply: dict, round_trip_ms: float) -> dict:
    """What one reply says about its chunk: solver iterations and residual, inference and round-trip times."""
    solver = reply.get("solver") if isinstance(reply.get("solver"), dict) else {}
    timing = lambda key: (reply.get(key) or {}).get("infer_ms") if isinstance(reply.get(key), dict) else None  # noqa: E731
    return {"iterations": solver.get("iterations"), "residual": solver.get("final_residual"),
            "server_ms": timing("server_timing"), "policy_ms": timing("policy_timing"),
            "round_trip_ms": round_trip_ms}


def run_episode(env, client, init_state, prompt: str, args: Args, max_steps: int, frames: list | None,
                chunks: list | None = None) -> tuple[bool, int]:
    """One episode from ``init_state``: ``(success, policy steps taken)``; ``chunks`` collects ``chunk_record``s."""
    env.reset()
    obs = env.set_init_state(init_state)
    plan: collections.deque = collections.deque()
    client.reset()
    broker = None
    if args.realtime != "off":
        broker = AsyncChunkBroker(client, execute=args.replan_steps, expected_delay=args.expected_delay,
                                  send_prefix=args.realtime == "prefix",
                                  on_chunk=lambda rec: chunks is not None and chunks.append(
                                      {**chunk_record(rec.reply, rec.round_trip_ms), "delay": rec.delay,
                                       "committed_sent": rec.committed_sent}))
    try:
        return _steps(env, client, obs, prompt, args, max_steps, frames, chunks, plan, broker)
    finally:
        if broker is not None:
            if chunks is not None and broker.errors:
                chunks.append({"broker_errors": broker.errors})
            broker.close()


def _steps(env, client, obs, prompt, args, max_steps, frames, chunks, plan, broker) -> tuple[bool, int]:
    for t in range(max_steps + args.num_steps_wait):
        if t < args.num_steps_wait:
            obs, _, done, _ = env.step(LIBERO_DUMMY_ACTION)
            continue
        element = make_observation(obs, prompt, args.resize_size)
        if frames is not None:
            frames.append(np.concatenate([element["observation/image"], element["observation/wrist_image"]], axis=1))
        if broker is not None:
            obs, _, done, _ = env.step(np.asarray(broker.infer(element)["actions"]).tolist())
            if done:
                return True, t - args.num_steps_wait + 1
            continue
        if not plan:
            start = time.perf_counter()
            reply = client.infer(element)
            if chunks is not None:
                chunks.append(chunk_record(reply, (time.perf_counter() - start) * 1000))
            chunk = reply["actions"]
            if len(chunk) < args.replan_steps:
                raise ValueError(f"policy returned {len(chunk)} actions; need at least replan_steps={args.replan_steps}")
            plan.extend(chunk[: args.replan_steps])
        obs, _, done, _ = env.step(np.asarray(plan.popleft()).tolist())
        if done:
            return True, t - args.num_steps_wait + 1
    return False, max_steps


def summarize(records: list[dict], suite_name: str) -> dict:
    """Success per task and for the suite (Wilson 95% CIs), iterations and latency per chunk."""
    from pi0_eqm.envs.stats import success_summary

    by_task: dict[int, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_task[int(r["task_id"])].append(r)
    tasks = {}
    for task_id, rs in sorted(by_task.items()):
        tasks[str(task_id)] = {"prompt": rs[0]["prompt"], **success_summary(sum(r["success"] for r in rs), len(rs))}
    chunks = [c for r in records for c in r["chunks"]]
    values = lambda key: [c[key] for c in chunks if isinstance(c.get(key), int | float)]  # noqa: E731
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"suite": suite_name, "tasks": tasks,
            "total": success_summary(sum(r["success"] for r in records), len(records)),
            "chunks": len(chunks), "iterations_mean": mean(values("iterations")),
            "residual_mean": mean(values("residual")), "server_ms_mean": mean(values("server_ms")),
            "round_trip_ms_mean": mean(values("round_trip_ms"))}


def format_table(summary: dict) -> str:
    rows = [f"{'task':<14} {'n':>4} {'success':>8}  {'Wilson 95% CI':<15} prompt"]
    for task_id, s in summary["tasks"].items():
        lo, hi = s["ci95"]
        rows.append(f"{task_id:<14} {s['n']:>4} {s['success_rate']:>8.3f}  [{lo:.2f}, {hi:.2f}]    {s['prompt']}")
    t = summary["total"]
    if t["n"]:
        lo, hi = t["ci95"]
        rows.append(f"{summary['suite']:<14} {t['n']:>4} {t['success_rate']:>8.3f}  [{lo:.2f}, {hi:.2f}]    (suite)")
    it, ms = summary["iterations_mean"], summary["server_ms_mean"]
    rows.append(f"{summary['chunks']} chunks; expert forwards per chunk {it if it is None else round(it, 2)}, "
                f"server ms per chunk {ms if ms is None else round(ms, 1)}")
    return "\n".join(rows)


def main(args: Args) -> dict:
    from libero.libero import benchmark

    from pi0_eqm.atomic import atomic_write_bytes
    from pi0_eqm.envs.evaluate import write_video

    try:  # openpi's own client where it is installed; ours speaks the same protocol
        from openpi_client.websocket_client_policy import WebsocketClientPolicy
    except ImportError:
        from pi0_eqm.serving.client import WebsocketClientPolicy

    if args.num_trials_per_task < 1 or args.replan_steps < 1:
        raise ValueError("--num-trials-per-task and --replan-steps must be >= 1")
    np.random.seed(args.seed)
    suite = benchmark.get_benchmark_dict()[args.task_suite_name]()
    max_steps = args.max_steps or MAX_STEPS[args.task_suite_name]
    out = pathlib.Path(args.out)
    log = EpisodeLog(out / EPISODES_FILE)
    done = log.done(lambda r: (r["suite"], r["task_id"], r["init_state"]))
    client = WebsocketClientPolicy(args.host, args.port)
    task_ids = args.task_ids if args.task_ids is not None else range(suite.n_tasks)
    for task_id in task_ids:
        task = suite.get_task(task_id)
        init_states = suite.get_task_init_states(task_id)
        todo = [(k, (args.init_state_start + k) % len(init_states)) for k in range(args.num_trials_per_task)]
        todo = [(k, i) for k, i in todo if (args.task_suite_name, task_id, i) not in done]
        if not todo:
            continue
        env, prompt = make_env(task, LIBERO_ENV_RESOLUTION, args.seed)
        try:
            for k, init_index in todo:
                frames: list | None = [] if args.video else None
                chunks: list = []
                start = time.perf_counter()
                try:
                    ok, steps = run_episode(env, client, init_states[init_index], prompt, args, max_steps, frames,
                                            chunks)
                    error = None
                except Exception as e:  # noqa: BLE001 - openpi counts any exception as a failed episode
                    logging.exception("episode failed: %s", e)
                    ok, steps, error = False, None, f"{type(e).__name__}: {e}"
                tag = "success" if ok else "failure"
                if frames:
                    write_video(frames, out / "videos" / f"{args.task_suite_name}_{task_id}_{init_index}_{tag}", fps=10)
                log.append({
                    "suite": args.task_suite_name, "task_id": task_id, "prompt": prompt, "episode": k,
                    "init_state": init_index, "success": bool(ok), "steps": steps, "max_steps": max_steps,
                    "replan_steps": args.replan_steps, "wall_s": time.perf_counter() - start, "error": error,
                    "chunks": chunks})
                logging.info("task %d (%s) init state %d: %s", task_id, prompt, init_index, tag)
        finally:
            env.close()
    records = [r for r in log.read() if r["suite"] == args.task_suite_name]
    summary = summarize(records, args.task_suite_name)
    atomic_write_bytes(out / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    print(format_table(summary))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(tyro.cli(Args))
