"""RoboTwin 2.0 policy adapter: ``get_model / eval / reset_model`` talking to a pi0_eqm policy server.

Drop this file into RoboTwin's ``policy/<name>/`` (branch ``stable_2.0``) next to a ``deploy_policy.yml`` with
``host``, ``port`` and ``replan_steps``, and serve an ALOHA-layout config::

    uv run scripts/serve_policy.py --checkpoint <run or step dir> --executed <replan_steps>

Observation layout (RoboTwin's ``pi0`` adapter with ``adapt_to_pi=False``, openpi ALOHA keys): head camera →
``cam_high``, wrist cameras → ``cam_left_wrist`` / ``cam_right_wrist`` (uint8 CHW), 14-d joint state (two arms × 6
joints + gripper), the task instruction as ``prompt``. Actions: a [H, 14] chunk of joint targets; ``replan_steps``
of them execute before the next request (RoboTwin's pi0 default executes the whole 50-step chunk).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pi0_eqm.data.transforms import resize_with_pad

IMAGE_SIZE = 224  # letterboxed like openpi's clients
CAMERAS = {"head_camera": "cam_high", "left_camera": "cam_left_wrist", "right_camera": "cam_right_wrist"}


def encode_obs(observation: dict, instruction: str) -> dict:
    """RoboTwin observation → openpi ALOHA request (images CHW uint8, 14-d state, prompt)."""
    images = {}
    for src, dst in CAMERAS.items():
        rgb = np.asarray(observation["observation"][src]["rgb"])
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"{src}: expected an HxWx3 RGB image, got shape {rgb.shape}")
        rgb = resize_with_pad(rgb.astype(np.uint8), IMAGE_SIZE, IMAGE_SIZE)
        images[dst] = np.ascontiguousarray(np.transpose(rgb, (2, 0, 1)))
    state = np.asarray(observation["joint_action"]["vector"], dtype=np.float32)
    if state.shape != (14,):
        raise ValueError(f"joint_action.vector: expected 14 joint values, got shape {state.shape}")
    return {"images": images, "state": state, "prompt": instruction}


class _Model:
    def __init__(self, host: str, port: int, replan_steps: int, client=None):
        if client is None:
            from pi0_eqm.serving.client import WebsocketClientPolicy

            client = WebsocketClientPolicy(host, port)
        self.client = client
        self.replan_steps = int(replan_steps)
        self.instruction = ""
        self.plan: list[np.ndarray] = []
        self.last_reply: dict[str, Any] = {}

    def next_action(self, observation: dict) -> np.ndarray:
        if not self.plan:
            reply = self.client.infer(encode_obs(observation, self.instruction))
            actions = np.asarray(reply["actions"])
            if actions.ndim != 2 or actions.shape[1] != 14:
                raise ValueError(f"server returned actions of shape {actions.shape}; expected [H, 14]")
            self.plan = list(actions[: self.replan_steps])
            self.last_reply = reply
        return self.plan.pop(0)


def get_model(usr_args: dict) -> _Model:
    return _Model(usr_args.get("host", "127.0.0.1"), int(usr_args.get("port", 8000)),
                  int(usr_args.get("replan_steps", 25)))


def eval(TASK_ENV, model: _Model, observation: dict) -> None:  # noqa: A001 - RoboTwin's contract name
    """One control step: (re)plan if the chunk is used up, then execute one joint-space action."""
    if not model.instruction:
        model.instruction = TASK_ENV.get_instruction()
    action = model.next_action(observation)
    TASK_ENV.take_action(action, action_type="qpos")


def reset_model(model: _Model) -> None:
    """Episode reset: drop the plan and the server-side warm-start state."""
    model.plan = []
    model.instruction = ""
    model.client.reset()
