"""Meta-World v3 as the embedded closed-loop benchmark: env wrapper, scripted experts and demo generation.

Observations follow the openpi-client convention (one flat dict per step)::

    "observation/image"        uint8 [R, R, 3]   fixed ``corner`` camera, rotated 180 deg to upright
    "observation/wrist_image"  uint8 [R, R, 3]   ``gripperPOV`` wrist camera (already upright)
    "observation/state"        float32 [4]       hand xyz + gripper opening (raw obs[:4])
    "prompt"                   str               fixed instruction of the task

Actions are 4-d (delta xyz + gripper), clipped to [-1, 1].

Reproducibility: each task has 50 object/goal configurations per Meta-World seed (``metaworld.MT1(task, seed)``).
Episode ``e`` of ``MetaWorldEnv(task, seed)`` is configuration ``e % 50`` of block ``e // 50``, where block ``b`` is
generated from a seed derived from ``(seed, task, b)``. An episode is therefore a pure function of
``(task, seed, episode index)``, independent of what ran before; use different seeds for demos and evaluation to get
held-out configurations.

Rendering turns MSAA, shadows and reflections off (several times faster in software GL; what remains is mostly vertex
processing of the ~70k-face scene, so cost barely depends on resolution). Demos and evaluation must use the same
settings, which this module guarantees.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence
import os
from typing import Any
import warnings

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* gymnasium ids)
from metaworld.policies import ENV_POLICY_MAP
import mujoco
import numpy as np
from tqdm.auto import tqdm

from pi0_eqm.envs import MUJOCO_PREIMPORTED_WITHOUT_GL
from pi0_eqm.envs.seeding import derive_seed
from pi0_eqm.envs.tasks import DEFAULT_TASKS
from pi0_eqm.envs.tasks import INSTRUCTIONS
from pi0_eqm.robots import METAWORLD

# The observation keys and dims are the robot's (pi0_eqm/robots/metaworld.py).
IMAGE_KEY, WRIST_IMAGE_KEY = (c.sample_key for c in METAWORLD.cameras)
STATE_KEY = METAWORLD.state_key[0]
PROMPT_KEY = "prompt"
ENV_STATE_KEY = "observation/env_state"  # privileged raw 39-d float64 Meta-World obs (only if privileged=True)
ACTION_DIM = METAWORLD.action_dim
STATE_DIM = METAWORLD.state_dim
CONFIGS_PER_BLOCK = 50  # metaworld._N_GOALS
MAX_PATH_LENGTH = 500  # Meta-World refuses to step further without a reset


def instruction(task: str) -> str:
    """The fixed natural-language instruction for ``task``."""
    try:
        return INSTRUCTIONS[task]
    except KeyError:
        raise KeyError(f"no instruction for Meta-World task {task!r}; known: {sorted(INSTRUCTIONS)}") from None


def _check_task(task: str) -> None:
    if task not in metaworld.ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World v3 task {task!r}; e.g. {', '.join(DEFAULT_TASKS)}")


class MetaWorldEnv:
    """One Meta-World v3 task with two fast offscreen cameras and openpi-style observations.

    ``reset(episode=None) -> obs``; ``step(action) -> (obs, success, done)``; ``close()``. ``done`` is true on
    success or after ``max_steps`` steps. Use as a context manager to close the GL context deterministically.
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        resolution: int = 64,
        max_steps: int = 200,
        *,
        prompt: str | None = None,
        camera: str = "corner",
        wrist_camera: str = "gripperPOV",
        privileged: bool = False,
    ):
        _check_task(task)
        if not 1 <= max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_steps must be in [1, {MAX_PATH_LENGTH}], got {max_steps}")
        if not 8 <= resolution <= 480:
            raise ValueError(f"resolution must be in [8, 480] pixels, got {resolution}")
        self.task = task
        self.seed = int(seed)
        self.resolution = int(resolution)
        self.max_steps = int(max_steps)
        self.prompt = prompt if prompt is not None else instruction(task)
        self.privileged = privileged
        self._camera, self._wrist_camera = camera, wrist_camera
        self._env = gym.make(
            "Meta-World/MT1", env_name=task, seed=derive_seed(self.seed, task, 0), disable_env_checker=True
        )
        self._env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)  # we pick configurations ourselves
        self._blocks: dict[int, list[Any]] = {0: list(self._env.get_wrapper_attr("tasks"))}
        uw = self._env.unwrapped
        for name in (camera, wrist_camera):
            if mujoco.mj_name2id(uw.model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
                cams = [uw.model.camera(i).name for i in range(uw.model.ncam)]
                self._env.close()
                raise ValueError(f"camera {name!r} not in the {task} model; available: {cams}")
        uw.model.vis.quality.offsamples = 0  # MSAA off: must precede the renderer (it sizes the framebuffer)
        try:
            self._renderer = mujoco.Renderer(uw.model, self.resolution, self.resolution)
        except Exception as e:  # pragma: no cover - depends on the system GL stack
            self._env.close()
            hint = (
                "mujoco was imported before pi0_eqm.envs without MUJOCO_GL set, so it chose GLFW; "
                if MUJOCO_PREIMPORTED_WITHOUT_GL
                else ""
            )
            raise RuntimeError(
                f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {e}. {hint}Set "
                "MUJOCO_GL=egl (or osmesa) before importing mujoco and install libegl1 libegl-mesa0 "
                "libgl1-mesa-dri libopengl0 libosmesa6."
            ) from e
        # Shadows and the (nearly invisible) floor reflection each cost a full extra scene pass in software GL.
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.action_dim = ACTION_DIM
        self.episode = -1  # index of the current episode; reset() without an argument advances it
        self.num_steps = 0
        self.raw_obs: np.ndarray | None = None  # last full 39-d Meta-World observation
        self._success = False
        self._closed = False

    # ------------------------------------------------------------------ episodes
    def _configuration(self, episode: int) -> Any:
        block, index = divmod(episode, CONFIGS_PER_BLOCK)
        if block not in self._blocks:
            self._blocks[block] = list(
                metaworld.MT1(self.task, seed=derive_seed(self.seed, self.task, block)).train_tasks
            )
        return self._blocks[block][index]

    def reset(self, episode: int | None = None) -> dict[str, Any]:
        """Start episode ``episode`` (default: the one after the current) and return its first observation."""
        self._check_open()
        episode = self.episode + 1 if episode is None else int(episode)
        if episode < 0:
            raise ValueError(f"episode index must be >= 0, got {episode}")
        self._env.unwrapped.set_task(self._configuration(episode))
        raw, _ = self._env.reset()
        self.episode, self.num_steps, self._success = episode, 0, False
        self.raw_obs = np.asarray(raw, dtype=np.float64)
        return self.observation()

    def step(self, action: np.ndarray, *, render: bool = True) -> tuple[dict[str, Any] | None, bool, bool]:
        """Apply one clipped 4-d action; returns ``(obs, success, done)``.

        ``success`` is this step's success flag; ``done`` is true once the episode has succeeded at some step or
        ``max_steps`` steps were taken. Stepping past a success is allowed (until ``max_steps``). With
        ``render=False`` no images are rendered and ``obs`` is ``None`` (rendering is ~95% of the step cost); call
        :meth:`observation` later if needed.
        """
        self._check_open()
        if self.raw_obs is None:
            raise RuntimeError("call reset() before step()")
        if self.num_steps >= self.max_steps:
            raise RuntimeError(f"episode reached max_steps={self.max_steps}; call reset()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        raw, _, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self.num_steps += 1
        self.raw_obs = np.asarray(raw, dtype=np.float64)
        success = bool(info["success"] > 0.5)
        self._success |= success
        return (self.observation() if render else None), success, self.done

    @property
    def success(self) -> bool:
        """Whether the current episode has succeeded at any step so far."""
        return self._success

    @property
    def done(self) -> bool:
        return self._success or self.num_steps >= self.max_steps

    # ------------------------------------------------------------------ rendering
    def render_camera(self, camera: str) -> np.ndarray:
        """Render ``camera`` at the env resolution (uint8 [R, R, 3]); ``corner*`` cameras are rotated upright."""
        self._renderer.update_scene(self._env.unwrapped.data, camera=camera)
        img = self._renderer.render()
        if camera.startswith("corner"):  # Meta-World's corner cameras render upside down
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def observation(self) -> dict[str, Any]:
        """The current observation dict (renders both cameras)."""
        self._check_open()
        if self.raw_obs is None:
            raise RuntimeError("call reset() before observation()")
        obs = {
            IMAGE_KEY: self.render_camera(self._camera),
            WRIST_IMAGE_KEY: self.render_camera(self._wrist_camera),
            STATE_KEY: self.raw_obs[:STATE_DIM].astype(np.float32),
            PROMPT_KEY: self.prompt,
        }
        if self.privileged:
            obs[ENV_STATE_KEY] = self.raw_obs.copy()  # float64, exactly what the experts see
        return obs

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("environment is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._renderer.close()
            self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MetaWorldEnv({self.task!r}, seed={self.seed}, resolution={self.resolution}, max_steps={self.max_steps})"
        )


class ScriptedExpert:
    """Meta-World's hand-written expert for one task: ``action(raw_obs) -> clipped float32 [4]``."""

    def __init__(self, task: str):
        _check_task(task)
        if task not in ENV_POLICY_MAP:
            raise ValueError(f"no scripted expert for {task!r}")
        self.task = task
        self._policy = ENV_POLICY_MAP[task]()

    def action(self, raw_obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # the experts warn that their gains exceed [-1, 1]; we clip
            warnings.filterwarnings("ignore", message="Constant.*may be too high")
            a = self._policy.get_action(np.asarray(raw_obs, dtype=np.float64))
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def expert_episode(env: MetaWorldEnv, *, extra_steps: int = 0) -> dict[str, Any] | None:
    """Roll out the scripted expert from the env's fresh reset; ``None`` if it fails within ``env.max_steps``.

    Records the observation before each step and the clipped action taken from it. After success, up to
    ``extra_steps`` further expert steps are recorded (bounded by ``env.max_steps``) so action chunks near the end
    stay meaningful. Returns ``{"steps": {key: array[T, ...]}, "prompt", "task", "metadata"}``.
    """
    if env.raw_obs is None or env.num_steps != 0:
        raise RuntimeError("expert_episode needs a freshly reset env (call env.reset() first)")
    if extra_steps < 0:
        raise ValueError(f"extra_steps must be >= 0, got {extra_steps}")
    expert = ScriptedExpert(env.task)
    obs = env.observation()
    images, wrists, states, actions = [], [], [], []
    success_step = None
    while env.num_steps < env.max_steps and (success_step is None or env.num_steps < success_step + extra_steps):
        action = expert.action(env.raw_obs)
        images.append(obs[IMAGE_KEY])
        wrists.append(obs[WRIST_IMAGE_KEY])
        states.append(obs[STATE_KEY])
        actions.append(action)
        obs, _, _ = env.step(action)
        if env.success and success_step is None:
            success_step = env.num_steps
    if success_step is None:
        return None
    return {
        "steps": {
            IMAGE_KEY: np.stack(images),
            WRIST_IMAGE_KEY: np.stack(wrists),
            STATE_KEY: np.stack(states).astype(np.float32),
            "action": np.stack(actions).astype(np.float32),
        },
        "prompt": env.prompt,
        "task": env.task,
        "metadata": {
            "task": env.task,
            "seed": env.seed,
            "episode": env.episode,
            "success_step": success_step,
            "resolution": env.resolution,
        },
    }


def generate_demos(
    tasks: Sequence[str] = DEFAULT_TASKS,
    episodes_per_task: int = 10,
    seed: int = 0,
    resolution: int = 64,
    *,
    max_steps: int = 200,
    extra_steps: int = 0,
    max_attempts_per_task: int | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``episodes_per_task`` successful expert demos per task (failed attempts are skipped).

    Deterministic given the arguments: task ``t`` uses ``MetaWorldEnv(t, seed)`` episodes 0, 1, 2, ... until enough
    succeeded or ``max_attempts_per_task`` (default ``2 * episodes_per_task + 10``) were tried, which raises.
    """

    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must not be empty")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    max_attempts = max_attempts_per_task or 2 * episodes_per_task + 10
    bar = tqdm(total=len(tasks) * episodes_per_task, desc="expert demos", unit="ep", disable=not progress)
    try:
        for task in tasks:
            with MetaWorldEnv(task, seed=seed, resolution=resolution, max_steps=max_steps) as env:
                kept = 0
                for attempt in range(max_attempts):
                    env.reset(attempt)
                    demo = expert_episode(env, extra_steps=extra_steps)
                    if demo is None:
                        continue
                    kept += 1
                    bar.update(1)
                    bar.set_postfix(task=task, failed=attempt + 1 - kept)
                    yield demo
                    if kept == episodes_per_task:
                        break
                else:
                    raise RuntimeError(
                        f"{task}: only {kept}/{episodes_per_task} expert successes in {max_attempts} attempts"
                    )
    finally:
        bar.close()
