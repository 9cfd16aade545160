"""The embedded Meta-World benchmark (Sawyer arm, MuJoCo), with LIBERO's key layout.

``pi0_eqm.envs.metaworld`` renders, per step::

    "observation/image"        uint8 [R, R, 3]  the upright corner camera (R: the model's resolution, 64 by default)
    "observation/wrist_image"  uint8 [R, R, 3]  the ``gripperPOV`` camera
    "observation/state"        float [4]        hand xyz + gripper opening
    "prompt"                   str              the task's instruction

and executes 4-d actions (hand xyz delta + gripper effort). Demos are written as RLDS (``scripts/generate_demos.py``)
with these keys (``rlds_feature``); actions are absolute (no delta mask).
"""

from pi0_eqm.robots.spec import Camera
from pi0_eqm.robots.spec import RobotSpec

METAWORLD = RobotSpec(
    name="metaworld",
    state_dim=4,
    action_dim=4,
    cameras=(
        Camera(("observation/image",), "base_0_rgb", lerobot_feature="image", rlds_feature="observation/image"),
        Camera(("observation/wrist_image",), "left_wrist_0_rgb", lerobot_feature="wrist_image",
               rlds_feature="observation/wrist_image"),
    ),
    state_key=("observation/state",),
    lerobot_state="state",
    lerobot_actions="actions",
    image_size=None,
)
