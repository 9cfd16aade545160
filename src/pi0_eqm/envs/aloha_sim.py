"""The ALOHA bimanual simulator (gym-aloha's MuJoCo scenes and tasks, through dm_control) with openpi-style
observations for the ``aloha_sim`` robot.

Tasks: ``transfer_cube`` (the right arm picks up the cube and hands it to the left) and ``insertion`` (the arms pick
up a peg and a socket and insert one into the other). 14-d joint-position actions at 50 Hz (per arm 6 joints + the
gripper's normalized position, 0 closed … 1 open); the state is the same 14 values measured. Only the top camera is
rendered, at the size the model uses (``resolution``; gym-aloha renders three 480×640 views per step). Success is the
task's top reward (cube held by the left gripper off the table; peg touching the socket's pin). Episode ``e`` of task
``t`` places the objects from ``derive_seed(seed, t, e)`` with gym-aloha's own samplers, so two policies evaluated
with the same seed see the same initial states.

The interface is ``MetaWorldEnv``'s (``reset(episode) -> obs``, ``step(action, render) -> (obs, success, done)``),
so the closed-loop evaluator runs either.
"""

from __future__ import annotations

import collections
from typing import Any

from dm_control import mujoco as dm_mujoco
from dm_control.rl import control
from gym_aloha.constants import ASSETS_DIR
from gym_aloha.constants import DT
from gym_aloha.tasks import sim as joint_tasks
from gym_aloha.utils import sample_box_pose
from gym_aloha.utils import sample_insertion_pose
import numpy as np

from pi0_eqm.envs.seeding import derive_seed

TASKS = ("transfer_cube", "insertion")
PROMPTS = {"transfer_cube": "Transfer cube", "insertion": "Insert the peg into the socket"}
SCENES = {"transfer_cube": "bimanual_viperx_transfer_cube.xml", "insertion": "bimanual_viperx_insertion.xml"}
MAX_STEPS = 400  # gym-aloha's episodes: 8 s at 50 Hz
MAX_REWARD = 4
FPS = 50


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown ALOHA sim task {task!r}; expected one of {list(TASKS)}")


def object_pose(task: str, seed: int) -> np.ndarray:
    """The task's free-object poses (cube: 7; insertion: peg 7 + socket 7) for one configuration."""
    check_task(task)
    if task == "transfer_cube":
        return np.asarray(sample_box_pose(seed), np.float64)
    return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)


def _state_only(base: type) -> type:
    """``base`` (a gym-aloha joint-space task) rendering nothing itself (the env renders the top camera)."""

    class Task(base):
        def get_observation(self, physics):
            obs = collections.OrderedDict()
            obs["qpos"] = self.get_qpos(physics)
            obs["env_state"] = self.get_env_state(physics)
            return obs

    Task.__name__ = base.__name__
    return Task


class AlohaSimEnv:
    """One ALOHA sim task: ``reset(episode=None) -> obs``; ``step(action, render=True) -> (obs, success, done)``.

    ``obs`` is what an openpi ALOHA client sends: ``{"images": {"cam_high": uint8 [3, r, r]}, "state": float32 [14],
    "prompt": str}`` (``None`` from ``step(render=False)``). ``done`` is true on success or after ``max_steps``;
    ``max_reward`` is the best task reward of the episode so far (0–4; gym-aloha's stages, 4 is success).
    """

    def __init__(self, task: str, seed: int = 0, resolution: int = 64, max_steps: int = MAX_STEPS, *,
                 prompt: str | None = None):
        check_task(task)
        if not 8 <= resolution <= 480:
            raise ValueError(f"resolution must be in [8, 480] pixels, got {resolution}")
        if not 1 <= max_steps <= 10 * MAX_STEPS:
            raise ValueError(f"max_steps must be in [1, {10 * MAX_STEPS}], got {max_steps}")
        self.task, self.seed, self.resolution, self.max_steps = task, int(seed), int(resolution), int(max_steps)
        self.prompt = prompt if prompt is not None else PROMPTS[task]
        base = joint_tasks.TransferCubeTask if task == "transfer_cube" else joint_tasks.InsertionTask
        self.physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / SCENES[task]))
        self._env = control.Environment(self.physics, _state_only(base)(), float("inf"),
                                        control_timestep=DT, n_sub_steps=None, flat_observation=False)
        self.action_dim = 14
        self.episode = -1
        self.num_steps, self.success, self.done = 0, False, True
        self._qpos = np.zeros(14)

    def configuration_seed(self, episode: int) -> int:
        return derive_seed(self.seed, self.task, episode)

    def reset(self, episode: int | None = None) -> dict[str, Any]:
        self.episode = self.episode + 1 if episode is None else int(episode)
        joint_tasks.BOX_POSE[0] = object_pose(self.task, self.configuration_seed(self.episode))
        ts = self._env.reset()
        self.num_steps, self.success, self.done, self.max_reward = 0, False, False, 0
        self._qpos = np.asarray(ts.observation["qpos"])
        return self.observation()

    def step(self, action, render: bool = True) -> tuple[dict[str, Any] | None, bool, bool]:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape != (14,) or not np.all(np.isfinite(action)):
            raise ValueError(f"expected 14 finite joint-position actions, got {action.shape} {action[:4]}...")
        ts = self._env.step(action)
        self._qpos = np.asarray(ts.observation["qpos"])
        self.num_steps += 1
        self.max_reward = max(self.max_reward, int(ts.reward or 0))
        self.success = self.success or self.max_reward == MAX_REWARD
        self.done = self.success or self.num_steps >= self.max_steps
        return (self.observation() if render else None), self.success, self.done

    def state(self) -> np.ndarray:
        return self._qpos.astype(np.float32)

    def object_state(self) -> np.ndarray:
        """The free objects' current poses (privileged: for scripted experts, not for policies)."""
        return np.asarray(self.physics.data.qpos[16:], np.float64).copy()

    def render(self) -> np.ndarray:
        """The top camera, uint8 [r, r, 3]."""
        return self.physics.render(height=self.resolution, width=self.resolution, camera_id="top")

    def observation(self) -> dict[str, Any]:
        return {"images": {"cam_high": np.ascontiguousarray(self.render().transpose(2, 0, 1))},
                "state": self.state(), "prompt": self.prompt}

    def close(self) -> None:
        self.physics.free()

    def __enter__(self) -> AlohaSimEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
