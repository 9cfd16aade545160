"""Scripted bimanual demonstrations for the ALOHA sim tasks, as the ACT paper made them: waypoints for the two
end-effector (mocap) targets in gym-aloha's end-effector scenes, the joint trajectory that produces replayed in the
joint-space env (``AlohaSimEnv``), and the episode kept only if the replay succeeds. Written as a LeRobot dataset in
the layout of ``lerobot/aloha_sim_transfer_cube_scripted`` (``observation.images.top``, ``observation.state`` [14],
``action`` [14], 50 fps), idempotent and atomic.

The scripts are ours (ACT's are not in gym-aloha). Each end-effector target is a gripper pose: the finger pads'
position and the gripper orientation, turned into the mocap pose through the scene's weld (``Arms.mocap``). The
expert reads the objects' poses (privileged): at the start, and again while the arms hold them, so that the second
arm goes where the object really is.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

from dm_control import mujoco as dm_mujoco
from dm_control.rl import control
from gym_aloha.constants import ASSETS_DIR
from gym_aloha.constants import DT
from gym_aloha.tasks import sim_end_effector as ee_tasks
import numpy as np
from tqdm.auto import tqdm

from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.envs.aloha_sim import FPS
from pi0_eqm.envs.aloha_sim import MAX_REWARD
from pi0_eqm.envs.aloha_sim import MAX_STEPS
from pi0_eqm.envs.aloha_sim import AlohaSimEnv
from pi0_eqm.envs.aloha_sim import check_task
from pi0_eqm.envs.aloha_sim import object_pose

EE_SCENES = {"transfer_cube": "bimanual_viperx_end_effector_transfer_cube.xml",
             "insertion": "bimanual_viperx_end_effector_insertion.xml"}
PAD = np.array([0.0987, 0.0, 0.0])  # finger pads in the gripper link's frame (link origin + 0.0687 + ~0.03)
RIGHT_REST = np.array([0.0, 0.0, 0.0, 1.0])  # gripper orientations at rest (w, x, y, z): the right arm faces −x
LEFT_REST = np.array([1.0, 0.0, 0.0, 0.0])
PEG_HALF_LENGTH = SOCKET_HALF_LENGTH = 0.06  # both boxes are 12 cm long along their x axis (the scene's MJCF)
LEROBOT_NAMES = {"top": "observation.images.top", STATE_KEY: "observation.state", ACTION_KEY: "action"}


def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def qconj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return qmul(qmul(q, np.concatenate([[0.0], v])), qconj(q))[1:]


def axis_quat(axis: Sequence[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * a])


class Arms:
    """Gripper poses → mocap poses. The scene welds each gripper link to its mocap body at a fixed relative pose
    (``eq_data``: the link's pose in the mocap frame), so the mocap goes where that offset puts the link."""

    def __init__(self, physics):
        data = np.asarray(physics.model.eq_data)
        self.relative = [(data[i, 3:6].copy(), data[i, 6:10].copy()) for i in (0, 1)]

    def mocap(self, side: int, pads: np.ndarray, quat: np.ndarray) -> np.ndarray:
        """The mocap pose (xyz, wxyz) that puts arm ``side``'s (0 left, 1 right) finger pads at ``pads``."""
        rel_pos, rel_quat = self.relative[side]
        link = pads - qrot(quat, PAD)
        mocap_quat = qmul(quat, qconj(rel_quat))
        return np.concatenate([link - qrot(mocap_quat, rel_pos), mocap_quat])


def _interpolate(waypoints: list[tuple[int, np.ndarray]], t: int) -> np.ndarray:
    for (t0, a0), (t1, a1) in zip(waypoints[:-1], waypoints[1:], strict=True):
        if t0 <= t <= t1:
            f = (t - t0) / (t1 - t0)
            return (1 - f) * a0 + f * a1
    return waypoints[-1][1]


def _at(t: int, xyz, grip: float) -> tuple[int, np.ndarray]:
    return t, np.concatenate([np.asarray(xyz, float), [grip]])


class _EndEffectorTask:
    """gym-aloha's end-effector task without rendering, with the objects placed from our configuration seed."""

    def __init__(self, task: str, pose: np.ndarray):
        base = ee_tasks.TransferCubeEndEffectorTask if task == "transfer_cube" else ee_tasks.InsertionEndEffectorTask

        class Task(base):
            def initialize_episode(self, physics):
                self.initialize_robots(physics)
                physics.data.qpos[16:16 + len(pose)] = pose
                physics.forward()

            def get_observation(self, physics):
                return collections.OrderedDict(qpos=self.get_qpos(physics))

        self.physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / EE_SCENES[task]))
        self.env = control.Environment(self.physics, Task(), float("inf"), control_timestep=DT, n_sub_steps=None,
                                       flat_observation=False)


class ScriptedExpert:
    """Waypoint scripts for both tasks. ``plan(t, objects)`` → (left, right) targets ``[pads xyz, gripper]``."""

    def __init__(self, task: str, objects: np.ndarray):
        check_task(task)
        self.task = task
        pitch = axis_quat([0, 1, 0], 60)  # fingers 60° below the horizontal, toward the table's middle
        self.right_quat = qmul(RIGHT_REST, pitch)
        if task == "transfer_cube":
            self.left_quat = qmul(LEFT_REST, axis_quat([1, 0, 0], 90))  # level, rolled: fingers open up/down
        else:
            self.left_quat = qmul(LEFT_REST, pitch)
        self.meet = np.array([0.0, 0.5, 0.25])  # where the transfer's hand-over happens
        self.left, self.right = self._start(objects)

    def _start(self, objects: np.ndarray):
        meet = self.meet
        if self.task == "transfer_cube":
            box = np.array([objects[0], objects[1], 0.03])  # the cube rests at z = 0.02; pads 1 cm above its center
            right = [_at(0, box + [0, 0, 0.1], 0), _at(80, box + [0, 0, 0.1], 1), _at(110, box, 1), _at(140, box, 0),
                     _at(180, meet + [0.02, 0, 0], 0), _at(200, meet, 0), _at(330, meet, 0), _at(345, meet, 1),
                     _at(380, meet + [0.1, 0, 0.05], 1)]
            left = [_at(0, meet + [-0.25, 0, 0], 0), _at(100, meet + [-0.15, 0, 0], 1), _at(200, meet + [-0.12, 0, 0], 1)]
            return left, right
        # Insertion: the right arm grasps the peg at its middle, lifts it and carries it in line with the socket's
        # open end (+x); the left arm holds the socket down on the table from above, fingers closed, so the push
        # cannot slide it away; from step 290 the right arm re-aims the peg's tip at the socket's mouth every 20 steps
        # and pushes it in until it touches the pin.
        peg = np.array([objects[0], objects[1], 0.01])
        mouth = np.array([objects[7] + SOCKET_HALF_LENGTH, objects[8], 0.042])
        top = np.array([objects[7] - 0.04, objects[8], 0.052])  # pads 1 cm above the socket's top wall
        right = [_at(0, peg + [0, 0, 0.1], 0), _at(90, peg + [0, 0, 0.1], 1), _at(130, peg, 1), _at(160, peg, 0),
                 _at(190, peg + [0, 0, 0.06], 0), _at(260, mouth + [0.18, 0, 0], 0)]
        left = [_at(0, top + [0, 0, 0.1], 0), _at(120, top + [0, 0, 0.05], 0), _at(170, top, 0)]
        return left, right

    def replan(self, t: int, objects: np.ndarray) -> None:
        """Transfer: from 220 to 300, every 20 steps, the left gripper heads for where the held cube is. Insertion:
        from 290, every 20 steps (6 times in a 400-step episode, at most 8), the right arm moves the peg's tip to 2 cm
        outside the socket's mouth twice, then 2 cm deeper each time down to 4 cm inside (the pin's end is 2 cm
        inside)."""
        if self.task == "transfer_cube" and t in (220, 240, 260, 280, 300):
            held = objects[:3]
            later = [_at(260, held + [-0.1, 0, 0], 1), _at(295, held + [0.02, 0, 0], 1),
                     _at(305, held + [0.02, 0, 0], 1), _at(320, held + [0.02, 0, 0], 0),
                     _at(370, held + [-0.1, 0, 0], 0)]
            self.left = [(t, _interpolate(self.left, t)), *(w for w in later if w[0] > t)]
        elif self.task == "insertion" and t >= 290 and (t - 290) % 20 == 0 and t < 290 + 8 * 20:
            k = (t - 290) // 20 + 1
            tip = objects[:3] - PEG_HALF_LENGTH * qrot(objects[3:7], np.array([1.0, 0.0, 0.0]))
            mouth = objects[7:10] + SOCKET_HALF_LENGTH * qrot(objects[10:14], np.array([1.0, 0.0, 0.0]))
            depth = 0.02 if k <= 2 else max(-0.04, 0.02 - (k - 2) * 0.02)
            now = _interpolate(self.right, t)
            self.right = [(t, now), _at(t + 20, now[:3] + (mouth + [depth, 0, 0] - tip), 0)]

    def targets(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        return _interpolate(self.left, t), _interpolate(self.right, t)


def expert_joint_trajectory(task: str, config_seed: int, steps: int = MAX_STEPS) -> tuple[np.ndarray, int]:
    """The scripted expert in the end-effector scene: ``(joint actions [steps, 14], highest reward reached)``. Each
    action is the joint state the end-effector control reached at the next step, with the commanded gripper."""
    pose = object_pose(task, config_seed)
    sim = _EndEffectorTask(task, pose)
    sim.env.reset()
    arms = Arms(sim.physics)
    expert = ScriptedExpert(task, pose)
    actions, best = [], 0
    for t in range(steps):
        expert.replan(t, np.asarray(sim.physics.data.qpos[16:]))
        left, right = expert.targets(t)
        mocap = np.concatenate([arms.mocap(0, left[:3], expert.left_quat), [left[3]],
                                arms.mocap(1, right[:3], expert.right_quat), [right[3]]])
        ts = sim.env.step(mocap)
        best = max(best, int(ts.reward or 0))
        joints = np.asarray(ts.observation["qpos"], np.float64).copy()
        joints[6], joints[13] = left[3], right[3]
        actions.append(joints)
    sim.physics.free()
    return np.stack(actions), best


def expert_actions(env: AlohaSimEnv, episode: int) -> tuple[np.ndarray, int]:
    """The expert's joint actions for configuration ``episode`` of ``env`` in float32, as a dataset stores them (so
    replaying the stored actions reproduces the episode), and the highest end-effector reward it reached."""
    actions, best = expert_joint_trajectory(env.task, env.configuration_seed(episode), env.max_steps)
    return actions.astype(np.float32), best


def expert_episode(env: AlohaSimEnv, episode: int) -> Episode | None:
    """Configuration ``episode`` of ``env``: the expert's joint trajectory replayed there, rendered; the episode if
    the replay succeeds (the recording stops at success), else ``None``."""
    actions, _ = expert_actions(env, episode)
    obs = env.reset(episode)
    images, states, done_actions = [], [], []
    for action in actions:
        images.append(obs["images"]["cam_high"].transpose(1, 2, 0))
        states.append(obs["state"])
        done_actions.append(action)
        obs, success, done = env.step(action)
        if done:
            break
    if not env.success:
        return None
    return Episode({"top": np.stack(images), STATE_KEY: np.stack(states), ACTION_KEY: np.stack(done_actions)},
                   env.prompt, {"task": env.task, "configuration": episode, "steps": len(done_actions)})


def dataset_name(task: str, episodes: int, seed: int, resolution: int) -> str:
    return f"aloha_sim_{task}_scripted_e{episodes}_s{seed}_r{resolution}"


def generate_aloha_dataset(root: str | Path, task: str, *, episodes: int = 50, seed: int = 0, resolution: int = 64,
                           max_tries: int | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Writes (or reuses) ``<root>/<name>`` with ``episodes`` successful scripted episodes of ``task`` (configurations
    0, 1, … of ``AlohaSimEnv(task, seed)``; failed replays are skipped, at most ``max_tries`` configurations, default
    5 × ``episodes``: the insertion expert's replays succeed on about a third). Returns the dataset directory; its
    ``meta/expert.json`` records the expert's success rate."""
    check_task(task)
    root = Path(root) / dataset_name(task, episodes, seed, resolution)
    if (root / "meta" / "info.json").is_file() and not overwrite:
        return root
    tries = max_tries or 5 * episodes
    tried: list[int] = []

    def kept():
        with AlohaSimEnv(task, seed, resolution) as env:
            bar = tqdm(total=episodes, desc=f"ALOHA {task} demos", unit="episode", disable=not progress)
            n = 0
            for e in range(tries):
                ep = expert_episode(env, e)
                tried.append(int(ep is not None))
                if ep is not None:
                    n += 1
                    bar.update(1)
                    yield ep
                if n == episodes:
                    break
            bar.close()
            if n < episodes:
                raise RuntimeError(f"the {task} expert succeeded on {n} of {len(tried)} configurations; "
                                   f"{episodes} were asked for (raise max_tries or lower episodes)")

    def expert_record():
        return {"expert.json": {"task": task, "seed": seed, "resolution": resolution, "configurations_tried": len(tried),
                                "succeeded": sum(tried), "success_rate": sum(tried) / len(tried),
                                "kept_configurations": [i for i, ok in enumerate(tried) if ok]}}

    return write_lerobot_dataset(root, kept(), fps=FPS, names=LEROBOT_NAMES, robot_type="aloha", overwrite=overwrite,
                                 extra_meta=expert_record)


def success_rate(task: str, configurations: int, seed: int = 0) -> tuple[float, list[int]]:
    """The expert's success in the end-effector scene and after replay in the joint-space env (no rendering of
    unused frames): ``(replay success rate, [highest end-effector reward per configuration])``."""
    rewards, wins = [], 0
    with AlohaSimEnv(task, seed, resolution=8) as env:
        for e in range(configurations):
            actions, best = expert_actions(env, e)
            rewards.append(best)
            env.reset(e)
            for action in actions:
                if env.step(action, render=False)[2]:
                    break
            wins += int(env.success)
    return wins / configurations, rewards


__all__ = ["MAX_REWARD", "ScriptedExpert", "expert_actions", "expert_episode", "expert_joint_trajectory",
           "generate_aloha_dataset", "success_rate"]
