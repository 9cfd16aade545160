"""Episode validation and the in-memory source."""

import numpy as np
import pytest

from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import EpisodeSource
from pi0_eqm.data.episodes import InMemoryDataset
from pi0_eqm.data.episodes import decode_image
from pi0_eqm.data.episodes import encode_png


def test_episode_valid(episodes):
    ep = episodes[1]
    assert len(ep) == 15 and ep.length == 15
    assert ep.steps["observation/image"].shape == (15, 32, 32, 3)
    with pytest.raises(dataclasses_frozen_error()):
        ep.prompt = "x"  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "steps, prompt, match",
    [
        ({}, "p", "non-empty mapping"),
        ({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, "p", "share the leading time axis"),
        ({"a": np.zeros((0, 2))}, "p", "T=0"),
        ({"a": np.float32(1.0)}, "p", "scalar"),
        ({"a": np.array(["x", "y"])}, "p", "dtype"),
        ({"a": np.array([object(), object()])}, "p", "object arrays"),
        ({"/a": np.zeros(3)}, "p", "'/'-joined"),
        ({"a": np.zeros(3)}, b"bytes", "prompt must be a str"),
    ],
)
def test_episode_rejects_invalid(steps, prompt, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Episode(steps=steps, prompt=prompt)


def test_in_memory_dataset(episodes):
    ds = InMemoryDataset(episodes)
    assert isinstance(ds, EpisodeSource)
    assert ds.image_keys == ("observation/image", "observation/wrist_image")
    np.testing.assert_array_equal(ds.episode_lengths(), [12, 15, 18])
    low = ds.episode(2, images=False)
    assert set(low.steps) == {"observation/state", "action"}
    np.testing.assert_array_equal(ds.frame_images(2, 5)["observation/image"], episodes[2].steps["observation/image"][5])
    with pytest.raises(IndexError, match="out of range for a dataset of 3 episodes"):
        ds.episode(3)
    with pytest.raises(KeyError, match="missing keys \\['observation/state'\\]"):
        InMemoryDataset([Episode(steps={"action": np.zeros((2, 7))}, prompt="p")], image_keys=())


def test_png_round_trip():
    rng = np.random.default_rng(0)
    for channels in (1, 3, 4):
        img = rng.integers(0, 256, (9, 7, channels), dtype=np.uint8)
        np.testing.assert_array_equal(decode_image(encode_png(img)), img)
    with pytest.raises(ValueError, match="expected a uint8 image"):
        encode_png(np.zeros((4, 4, 3), np.float32))
