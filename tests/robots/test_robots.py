"""Robot specs: each registered robot's declared keys drive its transforms, schema, dataset reader and examples, and
the ALOHA / RoboTwin layout trains from a LeRobot dataset end to end (dataset → norm stats → train → serve)."""

import dataclasses

import numpy as np
import pytest

from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.data.rlds import RldsDataset
from pi0_eqm.data.rlds import write_rlds_dataset
from pi0_eqm.models.pi0 import IMAGE_KEYS
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.robots import ALOHA
from pi0_eqm.robots import LIBERO
from pi0_eqm.robots import ROBOTS
from pi0_eqm.robots import get_robot
from pi0_eqm.robots.spec import Camera
from pi0_eqm.robots.spec import RobotSpec
from pi0_eqm.serving.client import WebsocketClientPolicy
from pi0_eqm.serving.schema import validate
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.serving.wire import WireError
from pi0_eqm.training import loop
from pi0_eqm.training.config import get_config
from pi0_eqm.training.norm_stats import compute_for_config


@pytest.mark.parametrize("name", sorted(ROBOTS))
def test_example_passes_schema_and_fills_the_model_views(name):
    spec = get_robot(name)
    obs = spec.example(np.random.default_rng(0), spec.image_size or 64)
    checked = validate(obs, spec.schema(spec.image_size or 64))
    out = spec.inputs()({**checked, "actions": np.zeros((4, spec.action_dim), np.float32)})
    assert list(out["image"]) == list(IMAGE_KEYS) and out["state"].shape == (spec.state_dim,)
    used = {c.view for c in spec.cameras if c.view is not None}
    assert {v for v, m in out["image_mask"].items() if m} == used
    assert all(img.dtype == np.uint8 and img.shape[-1] == 3 for img in out["image"].values())
    assert spec.outputs()({"actions": np.ones((4, 32))})["actions"].shape == (4, spec.action_dim)


def test_schema_rejects_a_wrong_state_dim_and_a_missing_required_camera():
    obs = LIBERO.example(np.random.default_rng(0))
    with pytest.raises(WireError, match=r"observation/state.*\(8,\)"):
        validate({**obs, "observation/state": np.zeros(7, np.float32)}, LIBERO.schema())
    obs = ALOHA.example(np.random.default_rng(0))
    del obs["images"]["cam_high"]
    with pytest.raises(WireError, match="images/cam_high: required key is missing"):
        validate(obs, ALOHA.schema())
    # optional wrist cameras may be absent: their views are black and masked off
    del obs["images"]["cam_left_wrist"]
    obs["images"]["cam_high"] = np.zeros((3, 224, 224), np.uint8)
    out = ALOHA.inputs()(validate(obs, ALOHA.schema()))
    assert not out["image_mask"]["left_wrist_0_rgb"] and out["image_mask"]["right_wrist_0_rgb"]


def test_repack_maps_dataset_samples_to_the_clients_keys():
    sample = {"images/cam_high": 1, "images/cam_left_wrist": 2, "images/cam_right_wrist": 3, "state": 4,
              "actions": 5, "prompt": "p", "episode_index": 0}
    assert ALOHA.repack()(sample) == {"images": {"cam_high": 1, "cam_left_wrist": 2, "cam_right_wrist": 3},
                                      "state": 4, "actions": 5, "prompt": "p"}
    assert ALOHA.lerobot_keys()["image_keys"]["images/cam_high"] == "observation.images.cam_high"


def test_rlds_datasets_are_read_with_the_spec_s_keys(tmp_path):
    """The RLDS reader takes its camera, state, action and instruction paths from the robot spec, as LeRobot's does;
    a robot that names no RLDS cameras is a clear error."""
    eps = [Episode({"observation/image": np.zeros((3, 8, 8, 3), np.uint8),
                    "observation/wrist_image": np.ones((3, 8, 8, 3), np.uint8),
                    STATE_KEY: np.zeros((3, 8), np.float32), ACTION_KEY: np.zeros((3, 7), np.float32)}, prompt="go")]
    path = write_rlds_dataset(tmp_path, "tiny_libero", eps)
    cfg = dataclasses.replace(get_config("debug_libero"), data=dataclasses.replace(
        get_config("debug_libero").data, format="rlds", path=str(path)))
    ep = cfg.data.open_source().episode(0)
    assert sorted(ep.steps) == sorted(["observation/image", "observation/wrist_image", STATE_KEY, ACTION_KEY])
    assert ep.prompt == "go" and ep.steps["observation/wrist_image"].max() == 1
    renamed = dataclasses.replace(LIBERO, rlds_state="observation/joints")
    with pytest.raises(ValueError, match="observation/joints"):
        RldsDataset(path, **renamed.rlds_keys())
    with pytest.raises(ValueError, match="names no RLDS camera features"):
        ALOHA.rlds_keys()


def test_spec_rejects_views_the_model_does_not_have():
    with pytest.raises(ValueError, match="camera views must be distinct"):
        RobotSpec("bad", 2, 2, (Camera(("a",), "base_0_rgb"), Camera(("b",), "top_rgb")), ("s",), "s", "a")
    with pytest.raises(ValueError, match="base view"):
        RobotSpec("bad", 2, 2, (Camera(("a",), "left_wrist_0_rgb"),), ("s",), "s", "a")


def _aloha_dataset(root, episodes=3, steps=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    cams = [c for c in ALOHA.cameras if c.lerobot_feature is not None]
    eps = [Episode({**{c.sample_key: rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8) for c in cams},
                    STATE_KEY: np.stack([ALOHA.convention.example_state(rng) for _ in range(steps)]).astype(np.float32),
                    ACTION_KEY: rng.uniform(-1, 1, size=(steps, 14)).astype(np.float32)}, prompt=f"task {e % 2}")
           for e in range(episodes)]
    names = {c.sample_key: c.lerobot_feature for c in cams} | {STATE_KEY: ALOHA.lerobot_state,
                                                                 ACTION_KEY: ALOHA.lerobot_actions}
    return write_lerobot_dataset(root, eps, fps=50, names=names, robot_type="aloha")


@pytest.mark.slow
def test_aloha_trains_from_a_lerobot_dataset_and_serves(tmp_path):
    """The ALOHA layout end to end: LeRobot features → norm stats → 2 training steps → checkpoint → server."""
    ds = _aloha_dataset(tmp_path / "data" / "aloha")
    cfg = get_config("debug_aloha")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(ds)), num_train_steps=2,
                              save_interval=2, checkpoint_base_dir=str(tmp_path / "ckpt"),
                              assets_base_dir=str(tmp_path / "assets"), async_checkpoint=False)
    stats_dir = compute_for_config(cfg)
    assert (stats_dir / "norm_stats.json").is_file()
    out = loop.train(cfg, progress=False)
    assert out["last_step"] == 2 and all(np.isfinite(r["loss"]) for r in out["history"])
    # Served with the other unit convention (robotwin: adapt_to_pi=False) it is refused by the recorded config.
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, robot="robotwin"))
    with pytest.raises(ValueError, match="data.robot: 'robotwin' in --config, 'aloha' in the checkpoint"):
        create_trained_policy(other, cfg.checkpoint_dir / "2")
    policy = create_trained_policy(cfg, cfg.checkpoint_dir / "2")
    server = PolicyServer(policy, host="127.0.0.1", port=0, schema=ALOHA.schema())
    port = server.start()
    try:
        client = WebsocketClientPolicy("127.0.0.1", port)
        reply = client.infer(ALOHA.example(np.random.default_rng(1)))
        assert reply["actions"].shape == (cfg.model.action_horizon, 14)
        assert np.all(np.isfinite(reply["actions"]))
        client.close()
    finally:
        server.stop()

