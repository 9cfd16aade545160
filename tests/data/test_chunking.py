"""Action chunking: padding semantics, the frame index, samples from every source type."""

import numpy as np
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.chunking import chunk_actions
from pi0_eqm.data.lerobot import LeRobotDataset
from pi0_eqm.data.rlds import RldsDataset

SAMPLE_KEYS = {"observation/image", "observation/wrist_image", "state", "actions", "action_is_pad", "prompt", "episode_index", "frame_index"}


def test_chunk_actions_pads_by_repeating_last():
    actions = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    chunk, pad = chunk_actions(actions, 0, 3)
    np.testing.assert_array_equal(chunk, actions[:3])
    assert not pad.any()
    chunk, pad = chunk_actions(actions, 3, 4)
    np.testing.assert_array_equal(chunk, actions[[3, 4, 4, 4]])
    np.testing.assert_array_equal(pad, [False, False, True, True])
    chunk, pad = chunk_actions(actions, 4, 1)
    np.testing.assert_array_equal(chunk, actions[[4]])
    assert not pad.any()
    with pytest.raises(IndexError, match="frame 5 out of range"):
        chunk_actions(actions, 5, 2)


def check_sample(sample, ep, t, horizon):
    assert set(sample) == SAMPLE_KEYS
    T = len(ep)
    np.testing.assert_array_equal(sample["state"], ep.steps["observation/state"][t])
    idx = np.minimum(np.arange(t, t + horizon), T - 1)
    np.testing.assert_array_equal(sample["actions"], ep.steps["action"][idx])
    np.testing.assert_array_equal(sample["action_is_pad"], np.arange(t, t + horizon) >= T)
    assert sample["prompt"] == ep.prompt
    assert sample["state"].dtype == np.float32 and sample["actions"].shape == (horizon, 7)
    assert sample["action_is_pad"].dtype == bool
    np.testing.assert_array_equal(sample["observation/image"], ep.steps["observation/image"][t])


@pytest.mark.parametrize("kind", ["memory", "rlds", "lerobot"])
def test_chunked_dataset(kind, episodes, rlds_dir, lerobot_dir):
    source = {"memory": lambda: episodes, "rlds": lambda: RldsDataset(rlds_dir), "lerobot": lambda: LeRobotDataset(lerobot_dir)}[kind]()
    ds = ChunkedDataset(source, horizon=5)
    assert len(ds) == 12 + 15 + 18
    assert ds.locate(0) == (0, 0) and ds.locate(11) == (0, 11) and ds.locate(12) == (1, 0) and ds.locate(44) == (2, 17)
    assert ds.locate(-1) == (2, 17)
    for index in (0, 11, 12, 26, 27, 40, 44):
        e, t = ds.locate(index)
        check_sample(ds[index], episodes[e], t, 5)
    last = ds[44]
    assert last["action_is_pad"].tolist() == [False, True, True, True, True]
    assert int(last["episode_index"]) == 2 and int(last["frame_index"]) == 17
    with pytest.raises(IndexError, match="out of range for 45 frames"):
        ds[45]


def test_low_dim_samples(episodes):
    ds = ChunkedDataset(episodes, horizon=3)
    samples = list(ds.low_dim_samples())
    assert len(samples) == 45 and "observation/image" not in samples[0]
    shuffled = list(ds.low_dim_samples(seed=1, max_frames=10))
    assert len(shuffled) == 10
    picked = {(int(s["episode_index"]), int(s["frame_index"])) for s in shuffled}
    assert len(picked) == 10 and picked != {(0, t) for t in range(10)}
    no_images = ChunkedDataset(episodes, horizon=3, images=False)
    assert "observation/image" not in no_images[0] and no_images.image_keys == ()


def test_invalid_arguments(episodes):
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        ChunkedDataset(episodes, horizon=0)
    with pytest.raises(TypeError, match="needs an EpisodeSource"):
        ChunkedDataset({"not": "a dataset"}, horizon=4)
