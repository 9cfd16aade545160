"""Transforms: repack, resize, tokenize, pad, delta/absolute actions, normalize, full LIBERO training pipeline."""

import numpy as np
import pytest

from pi0_eqm.data import transforms as t
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.tokenizer import ByteTokenizer
from pi0_eqm.models.tokenizer import PaligemmaTokenizer
from pi0_eqm.training.data_config import EpisodicDataConfig


def test_resize_with_pad_letterboxes():
    img = np.full((20, 40, 3), 200, np.uint8)
    out = t.resize_with_pad(img, 32, 32)
    assert out.shape == (32, 32, 3)
    assert out[0].max() == 0 and out[-1].max() == 0  # padded rows
    assert out[16, 16, 0] == 200
    assert t.resize_with_pad(img, 20, 40) is img


def test_byte_tokenizer_and_padding():
    tok = ByteTokenizer(max_len=8)
    ids, mask = tok.tokenize(" pick_up\n")
    assert ids[0] == 1 and mask.sum() == 8  # truncated: BOS + "pick up\n" is 9 tokens
    ids, mask = ByteTokenizer(max_len=16).tokenize("go")
    assert ids[: mask.sum()].tolist() == [1, ord("g") + 3, ord("o") + 3, ord("\n") + 3]
    assert not mask[4:].any() and (ids[4:] == 0).all()


def test_paligemma_tokenizer_missing_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PI0_PALIGEMMA_TOKENIZER", raising=False)
    with pytest.raises(FileNotFoundError, match="paligemma_tokenizer.model"):
        PaligemmaTokenizer(48).tokenize("hi")


def test_delta_and_absolute_actions_round_trip():
    mask = t.make_bool_mask(6, -1)
    assert mask == (True,) * 6 + (False,)
    state = np.arange(8, dtype=np.float32)
    actions = np.ones((5, 7), np.float32)
    d = t.DeltaActions(mask)({"state": state, "actions": actions})
    assert np.allclose(d["actions"][:, :6], 1 - state[:6]) and np.allclose(d["actions"][:, 6], 1)
    a = t.AbsoluteActions(mask)(d)
    np.testing.assert_allclose(a["actions"], actions)


def test_repack_errors_name_missing_keys():
    with pytest.raises(KeyError, match="not in the sample"):
        t.RepackTransform({"a": "missing"})({"b": 1})


def test_libero_training_pipeline_produces_model_inputs(tmp_path):
    cfg = model_config("pi0_tiny", real_action_dim=7)
    stats = {"state": NormStats(mean=np.ones(8), std=np.full(8, 2.0)),
             "actions": NormStats(mean=np.zeros(7), std=np.ones(7))}
    data_cfg = EpisodicDataConfig(robot="libero", extra_delta_transform=True).create(cfg, tmp_path)
    pipeline = data_cfg.pipeline.with_norm_stats(stats)
    rng = np.random.default_rng(0)
    sample = {
        "observation/image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        "state": np.full(8, 3.0, np.float32),
        "actions": np.full((cfg.action_horizon, 7), 5.0, np.float32),
        "action_is_pad": np.zeros(cfg.action_horizon, bool),
        "prompt": "open the drawer",
    }
    out = pipeline.training()(sample)
    assert sorted(out) == ["actions", "image", "image_mask", "state", "tokenized_prompt", "tokenized_prompt_mask"]
    assert out["image"]["base_0_rgb"].shape == (32, 32, 3) and out["image"]["base_0_rgb"].dtype == np.uint8
    assert out["image_mask"]["right_wrist_0_rgb"] is np.False_ or not out["image_mask"]["right_wrist_0_rgb"]
    assert out["state"].shape == (32,) and np.allclose(out["state"][:8], (3 - 1) / (2 + 1e-6), atol=1e-5)
    # delta on dims 0-5 (5 - 3 = 2), gripper absolute (5); then z-score with mean 0 std 1; padded to 32.
    assert out["actions"].shape == (cfg.action_horizon, 32)
    assert np.allclose(out["actions"][0, :6], 2.0, atol=1e-4) and np.isclose(out["actions"][0, 6], 5.0, atol=1e-4)
    assert np.all(out["actions"][:, 7:] == 0)
    obs = Observation.from_dict({k: {kk: vv[None] for kk, vv in v.items()} if isinstance(v, dict) else v[None]
                                 for k, v in out.items() if k != "actions"})
    assert obs.images["base_0_rgb"].min() >= -1 and obs.images["base_0_rgb"].max() <= 1
