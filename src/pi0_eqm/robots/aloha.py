"""ALOHA and RoboTwin (two 6-DoF arms with grippers), as openpi's ``AlohaInputs`` (``adapt_to_pi=False``) sees them.

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

from pi0_eqm.data.transforms import make_bool_mask
from pi0_eqm.robots.spec import Camera
from pi0_eqm.robots.spec import RobotSpec

_CHW = ("CHW",)

ALOHA = RobotSpec(
    name="aloha",
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
