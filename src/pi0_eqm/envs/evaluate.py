"""Closed-loop evaluation of any chunking policy on the Meta-World benchmark, independent of the model code.

A policy is any object with ``infer(obs: dict) -> dict`` returning ``{"actions": array [H, 4], ...}`` and optionally
``reset()`` (called at the start of every episode). Extra scalar fields of the result (e.g. ``"iterations"``,
``"residual"``, nested dicts such as openpi's ``{"policy_timing": {"infer_ms": ...}}``) are recorded per chunk under
flattened ``a/b`` names. Control is receding-horizon: execute the first ``replan_every`` actions of each chunk, then
infer again from the new observation.

The result of :func:`evaluate` is a plain JSON-serializable dict (``json.dump(results, f)``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import importlib.metadata
import numbers
from pathlib import Path
import time
from typing import Any
from typing import Protocol

import imageio.v3 as iio
import numpy as np
from tqdm.auto import tqdm

from pi0_eqm.envs import metaworld as mw
from pi0_eqm.envs import realtime as rtm
from pi0_eqm.envs.stats import success_summary

EVAL_SEED = 1000  # default evaluation seed; demos default to seed 0, so evaluation configurations are held out


class ChunkPolicy(Protocol):
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


class ExpertPolicy:
    """The scripted Meta-World expert as a chunking policy (an upper-bound baseline).

    Needs the privileged full simulator state: evaluate with ``privileged_obs=True``. The task is recovered from the
    prompt. The chunk repeats the expert's action for the current state ``horizon`` times.
    """

    def __init__(self, horizon: int = 10):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self._task_of_prompt = {prompt: task for task, prompt in mw.INSTRUCTIONS.items()}
        self._experts: dict[str, mw.ScriptedExpert] = {}

    def reset(self) -> None:
        pass  # the experts are stateless functions of the observation

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if mw.ENV_STATE_KEY not in obs:
            raise KeyError(f"ExpertPolicy needs {mw.ENV_STATE_KEY!r}; run evaluate(..., privileged_obs=True)")
        prompt = obs[mw.PROMPT_KEY]
        if prompt not in self._task_of_prompt:
            raise KeyError(f"no Meta-World task has the instruction {prompt!r}")
        task = self._task_of_prompt[prompt]
        expert = self._experts.setdefault(task, mw.ScriptedExpert(task))
        action = expert.action(obs[mw.ENV_STATE_KEY])
        return {"actions": np.repeat(action[None], self.horizon, axis=0)}


class RandomPolicy:
    """Uniform random actions in [-1, 1] (a lower-bound baseline); deterministic given ``seed``."""

    def __init__(self, horizon: int = 10, seed: int = 0):
        self.horizon = horizon
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {"actions": self._rng.uniform(-1.0, 1.0, (self.horizon, mw.ACTION_DIM)).astype(np.float32)}


def scalar_stats(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the real scalar (0-d or size-1) fields of an ``infer`` result, except ``"actions"``; nested dicts
    become ``outer/inner``. Non-numeric and non-scalar values are ignored."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if not prefix and key == "actions":
            continue
        if isinstance(value, Mapping):
            out.update(scalar_stats(value, prefix=f"{name}/"))
        elif isinstance(value, numbers.Real):  # includes bool and numpy real scalars
            out[name] = float(value)
        elif hasattr(value, "__array__") or isinstance(value, list | tuple):
            try:
                arr = np.asarray(value)
            except Exception:
                continue
            real = (
                np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_
            )
            if real and arr.size == 1:
                out[name] = float(arr.reshape(()))
    return out


def _check_actions(actions: Any, where: str, dim: int) -> np.ndarray:
    arr = np.asarray(actions, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != dim:
        raise ValueError(f"{where}: policy must return 'actions' of shape [H>=1, {dim}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: policy returned non-finite actions")
    return arr


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _frame(obs: dict[str, Any], scale: int) -> np.ndarray:
    if "images" in obs:  # ALOHA layout: CHW cameras under "images"
        frame = np.concatenate([np.transpose(v, (1, 2, 0)) for v in obs["images"].values()], axis=1)
    else:
        frame = np.concatenate([obs[mw.IMAGE_KEY], obs[mw.WRIST_IMAGE_KEY]], axis=1)
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1) if scale > 1 else frame


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write uint8 [H, W, 3] frames as MP4 (H.264 via PyAV); falls back to GIF if no encoder is available."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(frames)
    h, w = stack.shape[1:3]
    stack = stack[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
    try:
        iio.imwrite(path.with_suffix(".mp4"), stack, fps=fps, plugin="pyav", codec="libx264")
        return path.with_suffix(".mp4")
    except Exception:  # no PyAV / libx264: GIF via Pillow always works
        gif = path.with_suffix(".gif")
        iio.imwrite(gif, stack, duration=1000 / fps, loop=0)
        return gif


@dataclasses.dataclass
class _EpisodeLog:
    task: str
    episode: int
    success: bool = False
    steps: int = 0
    success_step: int | None = None
    latency_s: list[float] = dataclasses.field(default_factory=list)
    stats: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    env_s: float = 0.0
    video: str | None = None
    jumps: list[float] = dataclasses.field(default_factory=list)  # real-time: discontinuity per chunk boundary
    delays: list[int] = dataclasses.field(default_factory=list)  # real-time: the delay of each chunk (control steps)
    broker_errors: list[str] = dataclasses.field(default_factory=list)
    late: int = 0  # wall-clock: chunks that ran out before their successor arrived
    max_reward: int | None = None  # the env's best reward in the episode, where it has one (ALOHA sim: 0–4)

    def record(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "episode": self.episode,
            "success": self.success,
            "steps": self.steps,
            "success_step": self.success_step,
            "num_chunks": len(self.latency_s),
            "latency_s": self.latency_s,
            "latency_mean_s": _mean(self.latency_s),
            "env_s": self.env_s,
            "stats": self.stats,
            "stats_mean": {k: _mean(v) for k, v in self.stats.items()},
            "video": self.video,
            "jumps": self.jumps,
            "jump_mean": _mean(self.jumps),
            "delays": self.delays,
            "broker_errors": self.broker_errors,
            "late": self.late,
            "max_reward": self.max_reward,
        }


def _finish(log: _EpisodeLog, env) -> dict[str, Any]:
    log.steps, log.success, log.max_reward = env.num_steps, env.success, getattr(env, "max_reward", None)
    if env.success:
        log.success_step = env.num_steps
    return log.record()


def run_episode(
    policy: ChunkPolicy,
    env: mw.MetaWorldEnv,
    episode: int,
    replan_every: int,
    frames: list[np.ndarray] | None = None,
    frame_scale: int = 1,
    realtime: rtm.RealtimeConfig | None = None,
    normalize: rtm.Normalize | None = None,
) -> dict[str, Any]:
    """One closed-loop episode of ``policy`` on ``env`` (configuration ``episode``); returns its record. With
    ``realtime`` the episode runs under inference delay (``pi0_eqm.envs.realtime``; ``replan_every`` is s)."""
    log = _EpisodeLog(env.task, episode)
    t0 = time.perf_counter()
    obs = env.reset(episode)
    log.env_s += time.perf_counter() - t0
    if hasattr(policy, "reset"):
        policy.reset()
    if frames is not None:
        frames.append(_frame(obs, frame_scale))
    if realtime is not None:
        return _realtime_episode(policy, env, episode, replan_every, frames, frame_scale, realtime, normalize, log, obs)
    while not env.done:
        t0 = time.perf_counter()
        result = policy.infer(dict(obs))
        log.latency_s.append(time.perf_counter() - t0)
        if not isinstance(result, Mapping) or "actions" not in result:
            raise TypeError(f"policy.infer must return a dict with 'actions', got {type(result).__name__}")
        actions = _check_actions(result["actions"], f"{env.task} episode {episode} step {env.num_steps}",
                                 env.action_dim)
        for name, value in scalar_stats(result).items():
            log.stats.setdefault(name, []).append(value)
        t0 = time.perf_counter()
        chunk = actions[:replan_every]
        for i, action in enumerate(chunk):
            # Only the observation the next inference sees (and video frames) need rendering.
            step_obs, _, done = env.step(action, render=frames is not None or i == len(chunk) - 1)
            if frames is not None:
                frames.append(_frame(step_obs, frame_scale))
            if done:
                break
            if step_obs is not None:
                obs = step_obs
        log.env_s += time.perf_counter() - t0
    return _finish(log, env)


def _realtime_episode(policy, env, episode, execute, frames, frame_scale, rt, normalize, log, obs) -> dict[str, Any]:
    runner = rtm.Runner(env, log, frames, lambda o: _frame(o, frame_scale))
    runner.obs = obs
    where = lambda: f"{env.task} episode {episode} step {env.num_steps}"

    def record(result, seconds):
        log.latency_s.append(seconds)
        for name, value in scalar_stats(result).items():
            log.stats.setdefault(name, []).append(value)

    def infer(request):
        t0 = time.perf_counter()
        result = policy.infer(request)
        record(result, time.perf_counter() - t0)
        return _check_actions(result["actions"], where(), env.action_dim)

    if rt.wall_clock:
        def on_reply(reply, seconds, delay):
            _check_actions(reply["actions"], where(), env.action_dim)
            record(reply, seconds)
            log.delays.append(delay)

        try:
            rtm.wall_clock_episode(policy, runner, execute, rt, on_reply, log, normalize)
        except rtm.ChunkExhaustedError as e:
            log.broker_errors.append(str(e))
    else:
        rtm.simulated_episode(runner, infer, execute, rt, normalize, log.jumps)
        log.delays = [rt.delay] * len(log.latency_s)
    return _finish(log, env)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("metaworld", "mujoco", "gymnasium", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def evaluate(
    policy: ChunkPolicy,
    tasks: Sequence[str] = mw.DEFAULT_TASKS,
    episodes_per_task: int = 10,
    seed: int = EVAL_SEED,
    max_steps: int = 200,
    replan_every: int = 5,
    *,
    resolution: int = 64,
    privileged_obs: bool = False,
    videos_per_task: int = 0,
    video_dir: str | Path | None = None,
    video_fps: int = 20,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    realtime: rtm.RealtimeConfig | None = None,
    normalize: rtm.Normalize | None = None,
    finished: Sequence[dict[str, Any]] = (),
    make_env: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Closed-loop success of ``policy`` on ``episodes_per_task`` held-out configurations of each task.

    Episode ``e`` of task ``t`` is configuration ``e`` of ``MetaWorldEnv(t, seed)``, so two policies evaluated with
    the same arguments see identical initial states. ``videos_per_task`` first episodes of each task are saved as
    MP4 (image | wrist image) in ``video_dir``. ``on_episode`` receives each episode record as soon as it finishes
    (e.g. to append to an ``EpisodeLog``); ``finished`` holds the records of episodes an earlier, interrupted run
    of the same evaluation finished (read back from that log): they are not run again and count as if just run.
    ``make_env(task)`` builds another benchmark's env with the same interface (``reset``, ``step``, ``done``,
    ``num_steps``, ``success``, ``task``, ``prompt``, ``action_dim``; a context manager): ``AlohaSimEnv`` for the ALOHA
    sim; default: ``MetaWorldEnv(task, seed, resolution, max_steps, privileged=privileged_obs)``.
    ``realtime`` runs every episode under inference delay (``pi0_eqm.envs.realtime``;
    ``normalize`` maps robot actions to normalized units for the discontinuity). Returns ``{"config", "versions", "episodes", "per_task", "mean_success", "overall",
    "timing"}``; ``mean_success`` is the unweighted mean over tasks, ``overall`` pools all episodes (Wilson 95% CI).
    """

    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must not be empty")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate tasks: {tasks}")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if replan_every < 1:
        raise ValueError(f"replan_every must be >= 1, got {replan_every}")
    if videos_per_task > 0 and video_dir is None:
        raise ValueError("videos_per_task > 0 needs a video_dir")
    if realtime is not None:
        realtime.check(replan_every)
    if not callable(getattr(policy, "infer", None)):
        raise TypeError(f"policy must have an infer(obs) -> dict method, got {type(policy).__name__}")
    frame_scale = max(1, -(-128 // resolution))  # upscale small frames so videos are watchable

    config = {
        "tasks": tasks, "episodes_per_task": episodes_per_task, "seed": seed, "max_steps": max_steps,
        "replan_every": replan_every, "resolution": resolution, "privileged_obs": privileged_obs,
        "realtime": dataclasses.asdict(realtime) if realtime is not None else None,
        "prompts": {},
    }  # fmt: skip
    if make_env is None:
        def make_env(task):
            return mw.MetaWorldEnv(task, seed, resolution, max_steps, privileged=privileged_obs)
    episodes: list[dict[str, Any]] = []
    per_task: dict[str, dict[str, Any]] = {}
    earlier = {(r.get("task"), r.get("episode")): r for r in finished}
    t_start = time.perf_counter()
    bar = tqdm(total=len(tasks) * episodes_per_task, desc="evaluate", unit="ep", disable=not progress)
    try:
        for task in tasks:
            with make_env(task) as env:
                config["prompts"][task] = env.prompt
                task_records = []
                for ep in range(episodes_per_task):
                    rec = earlier.get((task, ep))
                    if rec is None:
                        frames: list[np.ndarray] | None = [] if ep < videos_per_task else None
                        rec = run_episode(policy, env, ep, replan_every, frames, frame_scale, realtime, normalize)
                        if frames:
                            rec["video"] = str(write_video(frames, Path(video_dir) / f"{task}_ep{ep:03d}",
                                                           video_fps))
                        if on_episode is not None:
                            on_episode(rec)
                    task_records.append(rec)
                    episodes.append(rec)
                    bar.update(1)
                    done_so_far = sum(r["success"] for r in episodes)
                    bar.set_postfix(task=task, success=f"{done_so_far}/{len(episodes)}")
            per_task[task] = _summarize(task_records)
    finally:
        bar.close()

    rates = [s["success_rate"] for s in per_task.values()]
    total_latency = sum(sum(r["latency_s"]) for r in episodes)
    total_env = sum(r["env_s"] for r in episodes)
    total_steps = sum(r["steps"] for r in episodes)
    total_chunks = sum(r["num_chunks"] for r in episodes)
    return {
        "config": config,
        "versions": _versions(),
        "episodes": episodes,
        "per_task": per_task,
        "mean_success": float(np.mean(rates)),
        "overall": _summarize(episodes),
        "timing": {
            "total_s": time.perf_counter() - t_start,
            "policy_s": total_latency,
            "env_s": total_env,
            "policy_latency_mean_s": total_latency / max(total_chunks, 1),
            "env_step_mean_s": total_env / max(total_steps, 1),
        },
    }


def _summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    succ = [r for r in records if r["success"]]
    latencies = [x for r in records for x in r["latency_s"]]
    stat_names = sorted({k for r in records for k in r["stats"]})
    return {
        **success_summary(len(succ), len(records)),
        "mean_steps": _mean([r["steps"] for r in records]),
        "mean_steps_success": _mean([r["steps"] for r in succ]),
        "latency_mean_s": _mean(latencies),
        "latency_p50_s": float(np.median(latencies)) if latencies else None,
        "stats_mean": {k: _mean([x for r in records for x in r["stats"].get(k, [])]) for k in stat_names},
    }
