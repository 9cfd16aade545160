"""LIBERO (Franka Panda in robosuite), as openpi's ``examples/libero/main.py`` and ``LiberoInputs`` see it.

The client sends, per step::

    "observation/image"        uint8 [224, 224, 3]  agent-view camera, rotated 180° (openpi's convention)
    "observation/wrist_image"  uint8 [224, 224, 3]  eye-in-hand camera
    "observation/state"        float [8]            eef position (3) + axis-angle (3) + gripper qpos (2)
    "prompt"                   str                  the task's language instruction

and executes 7-d actions (6-d eef delta + gripper). The agent view fills the model's base view, the wrist camera the
left-wrist view; the right-wrist view stays black and masked. Datasets: the LeRobot layout of
``physical-intelligence/libero`` (features ``image``, ``wrist_image``, ``state``, ``actions``). With delta actions
(``pi0_libero``'s ``extra_delta_transform``) the first 6 action dims become relative to the state; the gripper stays
absolute (openpi's ``make_bool_mask(6, -1)``).
"""

from pi0_eqm.data.transforms import make_bool_mask
from pi0_eqm.robots.spec import Camera
from pi0_eqm.robots.spec import RobotSpec

LIBERO = RobotSpec(
    name="libero",
    state_dim=8,
    action_dim=7,
    cameras=(
        Camera(("observation/image",), "base_0_rgb", lerobot_feature="image", rlds_feature="observation/image"),
        Camera(("observation/wrist_image",), "left_wrist_0_rgb", lerobot_feature="wrist_image",
               rlds_feature="observation/wrist_image"),
    ),
    state_key=("observation/state",),
    lerobot_state="state",
    lerobot_actions="actions",
    delta_mask=make_bool_mask(6, -1),
)
