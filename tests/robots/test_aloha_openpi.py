"""ALOHA's units equal openpi's ``aloha_policy.py`` on the golden fixture ``tests/fixtures/openpi/aloha_golden.npz``
(produced by openpi's own code, provenance in ``aloha_golden.json``): ``aloha`` = ``adapt_to_pi=True``, ``robotwin`` =
``adapt_to_pi=False``; through the robot transforms, the data pipeline (delta actions, warm start) and bad grippers."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.robots import ALOHA
from pi0_eqm.robots import ROBOTWIN
from pi0_eqm.robots.aloha import GRIPPERS
from pi0_eqm.training.config import get_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openpi"
GOLDEN = dict(np.load(FIXTURE / "aloha_golden.npz"))
PROVENANCE = json.loads((FIXTURE / "aloha_golden.json").read_text())
NON_GRIPPER = [i for i in range(14) if i not in GRIPPERS]


def test_the_fixture_is_openpis():
    assert PROVENANCE["openpi_file"] == "src/openpi/policies/aloha_policy.py"
    assert len(PROVENANCE["openpi_commit"]) == 40 and PROVENANCE["numpy"].startswith("1.")
    # openpi's conversions do change the numbers (a fixture equal to its inputs would prove nothing)
    assert not np.allclose(GOLDEN["adapt_inputs_state"], GOLDEN["state"])
    assert not np.allclose(GOLDEN["adapt_outputs_actions"], GOLDEN["model_actions"][..., :14])


def test_the_conversion_equals_openpis_adapt_to_pi():
    conv = ALOHA.convention
    state = conv.state_to_model(GOLDEN["state"].copy())
    want = GOLDEN["adapt_inputs_state"]
    assert state.dtype == want.dtype == np.float64
    # Joints: bit-identical. Grippers go through np.arcsin, which numpy 2.4 (ours) and 1.26 (openpi's, which produced
    # the fixture) round differently in the last place of its ~1-radian output (2.2e-16), carried through the
    # normalization (bit-identical under numpy 1.26, checked when the fixture was made).
    np.testing.assert_array_equal(state[:, NON_GRIPPER], want[:, NON_GRIPPER])
    np.testing.assert_allclose(state[:, list(GRIPPERS)], want[:, list(GRIPPERS)], rtol=0, atol=5e-16)
    np.testing.assert_array_equal(conv.actions_to_model(GOLDEN["actions"].copy()), GOLDEN["adapt_inputs_actions"])
    np.testing.assert_array_equal(conv.actions_from_model(GOLDEN["model_actions"][..., :14].copy()),
                                  GOLDEN["adapt_outputs_actions"])


def _obs(i: int) -> dict:
    return {"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "state": GOLDEN["state"][i],
            "actions": GOLDEN["actions"][i]}


@pytest.mark.parametrize("spec, tag", [(ALOHA, "adapt"), (ROBOTWIN, "raw")])
def test_robot_transforms_equal_openpis_aloha_inputs_and_outputs(spec, tag):
    for i in range(len(GOLDEN["state"])):
        got = spec.inputs()(_obs(i))
        assert got["state"].dtype == got["actions"].dtype == np.float32
        np.testing.assert_array_max_ulp(got["state"], GOLDEN[f"{tag}_inputs_state"][i].astype(np.float32), maxulp=1)
        np.testing.assert_array_equal(got["actions"], GOLDEN[f"{tag}_inputs_actions"][i].astype(np.float32))
        out = spec.outputs()({"actions": GOLDEN["model_actions"][i]})["actions"]
        np.testing.assert_array_equal(out, GOLDEN[f"{tag}_outputs_actions"][i].astype(np.float32))


def test_robot_unit_chunks_round_trip_through_the_served_pipeline_with_delta_actions(tmp_path):
    """A robot-unit chunk brought into model space the way a warm start / real-time prefix is (units, delta actions,
    normalization) comes back out of the inference outputs unchanged; delta actions are taken in π units."""
    cfg = get_config("debug_aloha")
    data = dataclasses.replace(cfg.data, extra_delta_transform=True)
    stats = {"state": NormStats(np.full(14, 0.1), np.full(14, 2.0)),
             "actions": NormStats(np.full(14, -0.2), np.full(14, 0.5))}
    pipeline = data.create(cfg.model, tmp_path, load_stats=False).pipeline.with_norm_stats(stats)
    raw_state, chunk = GOLDEN["state"][3], GOLDEN["actions"][3]
    model_state = ALOHA.convention.state_to_model(raw_state.copy()).astype(np.float32)
    model = pipeline.warm_start_actions(cfg.model.action_dim)({"state": raw_state, "actions": chunk})["actions"]
    pi = ALOHA.convention.actions_to_model(chunk.copy()).astype(np.float32)
    mask = np.asarray(ALOHA.delta_mask)
    expected = (np.where(mask, pi - model_state, pi) - (-0.2)) / (0.5 + 1e-6)
    np.testing.assert_allclose(model[:, :14], expected, rtol=1e-5, atol=1e-5)
    state_in = (model_state - 0.1) / (2.0 + 1e-6)  # what the inference inputs hand the outputs as "state"
    back = pipeline.inference_outputs()({"state": state_in, "actions": model})["actions"]
    np.testing.assert_allclose(back, chunk, rtol=1e-4, atol=1e-4)


def test_a_gripper_state_in_other_units_is_a_clear_error_and_robotwin_takes_any_units():
    obs = _obs(0)
    obs["state"] = obs["state"].copy()
    obs["state"][13] = 45.0  # degrees, not ALOHA's normalized position
    with pytest.raises(InvalidRequestError, match=r"gripper state .* not a normalized gripper position.*'robotwin'"):
        ALOHA.inputs()(obs)
    assert np.isfinite(ROBOTWIN.inputs()(obs)["state"]).all()
    # A simulated gripper forced past its limits (gym-aloha under a poor policy: -0.6, i.e. a linear position below
    # 0 m, and 2.3) converts as openpi's does, through its clip, without a warning or an error.
    for value in (-0.6, 2.3):
        obs["state"][13] = value
        with np.errstate(all="raise"):
            assert np.isfinite(ALOHA.inputs()(obs)["state"]).all()
    assert ALOHA.inputs()(ALOHA.example(np.random.default_rng(0)))["state"].shape == (14,)


def test_aloha_sim_configs_read_the_sim_datasets_layout_as_openpis_pi0_aloha_sim(tmp_path):
    """``pi0_aloha_sim`` / ``pi0_eqm_aloha_sim`` (model shrunk to run here): the dataset's ``observation.images.top``
    fills the base view, state and actions arrive in π units, actions stay absolute, the prompt is "Transfer cube";
    the full-size model is openpi's ``Pi0Config()`` with 14 real action dims."""
    flow, eqm = get_config("pi0_aloha_sim"), get_config("pi0_eqm_aloha_sim")
    assert (flow.model.decoder.kind, eqm.model.decoder.kind) == ("flow", "eqm")
    assert flow.model == model_config("pi0", flow.model.decoder, real_action_dim=14) and flow.num_train_steps == 20_000
    assert not flow.data.extra_delta_transform and flow.data.default_prompt == "Transfer cube"
    steps = 6
    rng = np.random.default_rng(0)
    state, actions = GOLDEN["state"][:steps], GOLDEN["actions"][0, :steps]
    top = rng.integers(0, 255, (steps, 16, 16, 3), dtype=np.uint8)
    root = write_lerobot_dataset(tmp_path / "aloha_sim", [Episode({"top": top, STATE_KEY: state, ACTION_KEY: actions}, "transfer the cube")],
                                 fps=50, names={"top": "observation.images.top", STATE_KEY: "observation.state",
                                                ACTION_KEY: "action"}, robot_type="aloha")
    model = model_config("pi0_tiny", EqmConfig(), real_action_dim=14, tokenizer="words", max_token_len=12,
                         action_horizon=4)
    data = dataclasses.replace(eqm.data, path=str(root))
    cfg = data.create(model, tmp_path / "assets", load_stats=False)
    sample = ChunkedDataset(data.open_source(), model.action_horizon)[0]
    out = cfg.pipeline.statistics()(sample)
    np.testing.assert_array_max_ulp(out["state"], GOLDEN["adapt_inputs_state"][0].astype(np.float32), maxulp=1)
    np.testing.assert_array_equal(out["actions"][0], GOLDEN["adapt_inputs_actions"][0, 0].astype(np.float32))
    np.testing.assert_array_equal(out["image"]["base_0_rgb"], top[0])
    assert not out["image_mask"]["left_wrist_0_rgb"]
