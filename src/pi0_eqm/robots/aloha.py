"""ALOHA and RoboTwin (two 6-DoF arms with grippers), as openpi's ``AlohaInputs`` / ``AlohaOutputs`` see them.

Two robots share the layout below and differ only in units:

* ``aloha`` — openpi's default for ALOHA data (``adapt_to_pi=True``: ``pi0_aloha``, ``pi0_aloha_sim``, the real-ALOHA
  configs, openpi's ALOHA checkpoints): the model works in the units of the π internal runtime its base was trained in.
  Going in, joints 1, 2, 8, 9 change sign and each gripper's normalized linear position (0 closed … 1 open) becomes
  the normalized angle of the gripper motor (through the Interbotix linkage); going out, the signs flip back and the
  gripper becomes the ALOHA runtime's normalized gripper joint. ``AlohaPiUnits`` below is that conversion, equal to
  openpi's ``aloha_policy.py`` on the golden fixture in ``tests/fixtures/openpi`` (the commit is recorded there).
* ``robotwin`` — the same layout in ALOHA units throughout (``adapt_to_pi=False``, as RoboTwin's π₀ adapter).
* ``aloha_sim`` — ``aloha`` for the gym-aloha simulator's LeRobot datasets (``lerobot/aloha_sim_*``): their one camera
  is ``observation.images.top`` (openpi's ``pi0_aloha_sim`` repacks it into ``cam_high``); clients send ``cam_high``.

For your own ALOHA-like robot, copy ``ALOHA`` and change the LeRobot feature names of its cameras; keep
``convention=AlohaPiUnits()`` when its data are standard ALOHA units and you fine-tune an openpi base model.

The client sends, per step::

    "state"                     float [14]            per arm: 6 joint angles + gripper
    "images": {
        "cam_high":             uint8 [3, 224, 224]   the top camera (required)
        "cam_low":              uint8 [3, 224, 224]   optional, accepted but not used (π₀ has three views)
        "cam_left_wrist":       uint8 [3, 224, 224]   optional
        "cam_right_wrist":      uint8 [3, 224, 224]   optional
    }
    "prompt"                    str                   optional

and executes 14-d joint-space actions. ``cam_high`` fills the base view and the wrist cameras the wrist views; a
missing wrist camera is a black, masked view. Datasets: the LeRobot ALOHA layout (``observation.images.cam_high``,
``observation.images.cam_left_wrist``, ``observation.images.cam_right_wrist``, ``observation.state``, ``action``).
Under delta actions the joints become relative to the state and the grippers stay absolute (openpi's
``make_bool_mask(6, -1, 6, -1)``).
"""

import dataclasses

import numpy as np

from pi0_eqm.data.transforms import make_bool_mask
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.robots.spec import Camera
from pi0_eqm.robots.spec import RobotSpec

GRIPPERS = (6, 13)  # the gripper dims of the 14-d state and actions
JOINT_SIGNS = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])  # ALOHA ↔ π joint directions
# The ALOHA runtime's gripper ranges (PUPPET_GRIPPER_POSITION_OPEN/CLOSED in meters, PUPPET_GRIPPER_JOINT_CLOSE/OPEN in
# radians), the Interbotix gripper linkage (meters) and the π runtime's gripper angle range (radians).
POSITION_CLOSED, POSITION_OPEN = 0.01844, 0.05800
JOINT_CLOSED, JOINT_OPEN = -0.6213, 1.4910
ARM_LENGTH, HORN_RADIUS = 0.036, 0.022
PI_ANGLE_MIN, PI_ANGLE_MAX = 0.5476, 1.6296
# Gripper states outside this range are not ALOHA's normalized positions (0 closed … 1 open) but other units (degrees,
# encoder counts): refused rather than converted. Inside it openpi's conversion applies as is, clipping included; a
# simulated gripper forced past its joint limits by a poor policy was seen at -0.6 and 2.3 in gym-aloha.
GRIPPER_RANGE = (-5.0, 5.0)


def _gripper_to_pi(position: np.ndarray) -> np.ndarray:
    """Normalized linear gripper position → normalized π gripper angle."""
    linear = position * (POSITION_OPEN - POSITION_CLOSED) + POSITION_CLOSED
    with np.errstate(divide="ignore", invalid="ignore"):  # a linear position of 0 clips to ±90° as in openpi
        sine = (HORN_RADIUS**2 + linear**2 - ARM_LENGTH**2) / (2 * HORN_RADIUS * linear)
    return (np.arcsin(np.clip(sine, -1.0, 1.0)) - PI_ANGLE_MIN) / (PI_ANGLE_MAX - PI_ANGLE_MIN)


def _gripper_from_pi(angle: np.ndarray) -> np.ndarray:
    """π gripper angle (the model's actions are in radians) → the ALOHA runtime's normalized gripper joint."""
    return (angle + PI_ANGLE_MIN - JOINT_CLOSED) / (JOINT_OPEN - JOINT_CLOSED)


def _gripper_from_pi_inverse(joint: np.ndarray) -> np.ndarray:
    return joint * (JOINT_OPEN - JOINT_CLOSED) + JOINT_CLOSED - PI_ANGLE_MIN


@dataclasses.dataclass(frozen=True)
class AlohaPiUnits:
    """openpi's ``adapt_to_pi`` conversion (``UnitConvention``); float64 like openpi's, in the same operation order."""

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        grip = np.asarray(state)[..., GRIPPERS]
        lo, hi = GRIPPER_RANGE
        if not np.all((grip >= lo) & (grip <= hi)):
            raise InvalidRequestError(
                f"ALOHA gripper state {np.round(grip, 4).tolist()} (dims 6 and 13) is not a normalized gripper "
                f"position: expected the ALOHA runtime's (0 closed, 1 open; within [{lo:g}, {hi:g}]); a robot whose "
                "state is already in openpi's π units needs the 'robotwin' robot (adapt_to_pi=False) instead")
        out = JOINT_SIGNS * state
        out[..., GRIPPERS] = _gripper_to_pi(out[..., GRIPPERS])
        return out

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        out = JOINT_SIGNS * actions
        out[..., GRIPPERS] = _gripper_from_pi_inverse(out[..., GRIPPERS])
        return out

    def actions_from_model(self, actions: np.ndarray) -> np.ndarray:
        out = JOINT_SIGNS * actions
        out[..., GRIPPERS] = _gripper_from_pi(out[..., GRIPPERS])
        return out

    def example_state(self, rng: np.random.Generator) -> np.ndarray:
        state = rng.normal(size=14)
        state[list(GRIPPERS)] = rng.uniform(0.0, 1.0, 2)
        return state


_CHW = ("CHW",)

ALOHA = RobotSpec(
    name="aloha",
    convention=AlohaPiUnits(),
    state_dim=14,
    action_dim=14,
    cameras=(
        Camera(("images", "cam_high"), "base_0_rgb", "observation.images.cam_high", layouts=_CHW),
        Camera(("images", "cam_low"), None, layouts=_CHW, required=False),
        Camera(("images", "cam_left_wrist"), "left_wrist_0_rgb", "observation.images.cam_left_wrist", layouts=_CHW,
               required=False),
        Camera(("images", "cam_right_wrist"), "right_wrist_0_rgb", "observation.images.cam_right_wrist",
               layouts=_CHW, required=False),
    ),
    state_key=("state",),
    lerobot_state="observation.state",
    lerobot_actions="action",
    delta_mask=make_bool_mask(6, -1, 6, -1),
    prompt_required=False,
)

ROBOTWIN = dataclasses.replace(ALOHA, name="robotwin", convention=None)
ALOHA_SIM = dataclasses.replace(
    ALOHA,
    name="aloha_sim",
    cameras=(Camera(("images", "cam_high"), "base_0_rgb", "observation.images.top", layouts=_CHW),
             *(dataclasses.replace(c, lerobot_feature=None) for c in ALOHA.cameras[1:])),
)
