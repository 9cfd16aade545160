"""RoboTwin adapter against our server (real Policy, ALOHA layout) with a recorded RoboTwin-shaped observation.

RoboTwin itself needs CUDA, so the task environment here is a minimal recorder of the two calls the adapter makes
(``get_instruction``, ``take_action``); everything from the observation dict to the server and back is real.
"""

import importlib.util
from pathlib import Path

import jax
import numpy as np

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.robots import ROBOTWIN
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.training.config import get_config

REPO = Path(__file__).resolve().parents[2]


def _load_adapter():
    spec = importlib.util.spec_from_file_location("deploy_policy", REPO / "examples" / "robotwin" / "deploy_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def recorded_observation(rng) -> dict:
    """The structure RoboTwin 2.0 passes to ``eval`` (D435 cameras 240×320, 14-d joint vector)."""
    cams = {c: {"rgb": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)}
            for c in ("head_camera", "left_camera", "right_camera")}
    return {"observation": cams, "joint_action": {"vector": rng.normal(size=14).astype(np.float64)},
            "endpose": {}, "pointcloud": []}


class RecordingTaskEnv:
    def __init__(self):
        self.actions = []

    def get_instruction(self):
        return "place the cup on the coaster"

    def take_action(self, action, action_type="qpos"):
        assert action_type == "qpos"
        self.actions.append(np.asarray(action))


def test_robotwin_contract_against_server():
    cfg = get_config("debug_robotwin")
    stats = {"state": NormStats(np.zeros(14), np.ones(14)), "actions": NormStats(np.zeros(14), np.ones(14))}
    policy = policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats,
                                settings=DecoderSettings(max_iters=10, executed=3, warm_start="aligned"))
    server = PolicyServer(policy, host="127.0.0.1", port=0, schema=ROBOTWIN.schema())
    port = server.start()
    try:
        adapter = _load_adapter()
        model = adapter.get_model({"host": "127.0.0.1", "port": port, "replan_steps": 3})
        env = RecordingTaskEnv()
        rng = np.random.default_rng(0)
        for _ in range(7):
            adapter.eval(env, model, recorded_observation(rng))
        assert len(env.actions) == 7 and all(a.shape == (14,) for a in env.actions)
        assert model.last_reply["solver"]["warm_started"] is True  # 3rd request warm-starts from the 2nd chunk
        adapter.reset_model(model)
        adapter.eval(env, model, recorded_observation(rng))
        assert model.last_reply["solver"]["warm_started"] is False  # reset dropped the server-side state
        model.client.close()
    finally:
        server.stop()
