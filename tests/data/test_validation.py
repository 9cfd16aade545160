"""Up-front dataset validation: wrong dims, non-finite values and bad images are named by key, episode and frame."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import InMemoryDataset
from pi0_eqm.data.validation import DatasetError
from pi0_eqm.data.validation import validate_dataset
from pi0_eqm.training.config import get_config
from pi0_eqm.training.data_config import EpisodicDataConfig
from pi0_eqm.training.data_loader import create_data_loader

KEYS = ("observation/image", "observation/wrist_image")


def _episode(T=6, state_dim=8, action_dim=7, size=(12, 12)):
    rng = np.random.default_rng(T)
    steps = {k: rng.integers(0, 255, (T, *size, 3), dtype=np.uint8) for k in KEYS}
    steps |= {"observation/state": rng.normal(size=(T, state_dim)), "action": rng.normal(size=(T, action_dim))}
    return steps


def _check(episodes, **kw):
    data = ChunkedDataset(InMemoryDataset([Episode(s, "pick") for s in episodes], image_keys=KEYS), 4)
    validate_dataset(data, state_dim=8, action_dim=7, image_keys=KEYS, where="dataset D", **kw)


def test_a_matching_dataset_passes():
    _check([_episode(), _episode(9)])


@pytest.mark.parametrize("action_dim", [9, 5])
def test_action_dims_other_than_the_robots_are_refused(action_dim):
    with pytest.raises(DatasetError, match=rf"dataset D: episode 1, key 'action': {action_dim}-d actions but the "
                                           r"config's robot has 7-d actions"):
        _check([_episode(), _episode(action_dim=action_dim)])


def test_state_dim_is_checked():
    with pytest.raises(DatasetError, match="episode 0, key 'observation/state': 6-d states .* 8-d states"):
        _check([_episode(state_dim=6)])


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e39])  # 1e39 overflows the float32 training reads
def test_non_finite_values_name_episode_frame_and_key(value):
    bad = _episode(8)
    bad["action"][5, 2] = value
    with pytest.raises(DatasetError, match=r"episode 2, frame 5, key 'action': dimension 2 is (nan|inf)"):
        _check([_episode(), _episode(), bad])


def test_images_must_be_uint8_hwc_rgb_of_one_shape_per_camera():
    gray = _episode()
    gray["observation/wrist_image"] = gray["observation/wrist_image"][..., :1].repeat(3, -1).astype(np.float32)
    with pytest.raises(DatasetError, match=r"episode 0, frame 0, key 'observation/wrist_image': expected a uint8"):
        _check([gray])
    with pytest.raises(DatasetError, match=r"episode 1, frame 0, key 'observation/image': image shape \(10, 12, 3\) "
                                           r"differs from \(12, 12, 3\) \(episode 0, frame 0\)"):
        _check([_episode(), _episode(size=(10, 12))])
    data = ChunkedDataset(InMemoryDataset([Episode(_episode(), "p")], image_keys=KEYS[:1]), 4)
    with pytest.raises(DatasetError, match=r"cameras \['observation/wrist_image'\] are missing"):
        validate_dataset(data, state_dim=8, action_dim=7, image_keys=KEYS, where="dataset D")


def test_the_training_loader_validates_before_anything_runs(tmp_path, monkeypatch):
    """9-d actions for the 7-d LIBERO config used to train silently; now create_data_loader refuses them."""
    bad = InMemoryDataset([Episode(_episode(action_dim=9), "pick")], image_keys=KEYS)
    monkeypatch.setattr(EpisodicDataConfig, "open_source", lambda self: bad)
    cfg = dataclasses.replace(get_config("debug_libero"), assets_base_dir=str(tmp_path))
    data_cfg = cfg.data.create(cfg.model, Path(cfg.assets_dir))
    with pytest.raises(DatasetError, match="9-d actions but the config's robot has 7-d actions"):
        create_data_loader(cfg, data_cfg, shard_index=0, shard_count=1)
