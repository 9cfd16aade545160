"""Training-time image augmentation: deterministic per key, no crop/rotation on wrist cameras, off at inference,
and a resumed run draws the same augmentations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.models.observation import Observation
from pi0_eqm.training import loop
from pi0_eqm.training.augment import augment_observation
from pi0_eqm.training.config import get_config


def _obs(batch=6, size=32):
    """Gray images in [-1, 1], black but for one bright pixel per image (off-centre)."""
    img = (-jnp.ones((batch, size, size, 3))).at[:, 9, 21, :].set(1.0)
    images = {"base_0_rgb": img, "left_wrist_0_rgb": img, "right_wrist_0_rgb": img}
    masks = {k: jnp.ones(batch, bool) for k in images}
    return Observation(images=images, image_masks=masks, state=jnp.zeros((batch, 8)),
                       tokenized_prompt=jnp.zeros((batch, 4), jnp.int32),
                       tokenized_prompt_mask=jnp.ones((batch, 4), bool))


def test_deterministic_given_the_key_and_different_across_keys():
    obs, aug = _obs(), jax.jit(augment_observation)
    a, b, c = aug(obs, jax.random.key(1)), aug(obs, jax.random.key(1)), aug(obs, jax.random.key(2))
    for k in obs.images:
        np.testing.assert_array_equal(a.images[k], b.images[k])
        assert not np.array_equal(a.images[k], c.images[k])
        assert a.images[k].shape == obs.images[k].shape and float(jnp.abs(a.images[k]).max()) <= 1.0 + 1e-6
    np.testing.assert_array_equal(a.state, obs.state)  # only images change
    np.testing.assert_array_equal(a.tokenized_prompt, obs.tokenized_prompt)


def test_wrist_cameras_are_not_cropped_or_rotated():
    """Colour jitter keeps a gray image's brightest pixel in place (monotone in the value channel); the base camera's
    crop and rotation move it."""
    obs = _obs(batch=32)
    out = jax.jit(augment_observation)(obs, jax.random.key(0))

    def argmax(images):
        flat = np.asarray(images).mean(-1).reshape(images.shape[0], -1)
        return {divmod(int(i), images.shape[2]) for i in flat.argmax(1)}

    assert argmax(out.images["left_wrist_0_rgb"]) == argmax(out.images["right_wrist_0_rgb"]) == {(9, 21)}
    moved = argmax(out.images["base_0_rgb"]) - {(9, 21)}
    assert moved and all(abs(y - 9) <= 3 and abs(x - 21) <= 3 for y, x in moved)  # 5 % crop, ±5°: a few pixels


def test_inference_never_imports_the_augmentation():
    code = ("import sys, pi0_eqm.policies.policy, pi0_eqm.policies.policy_config; "
            "assert 'pi0_eqm.training.augment' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_a_resumed_run_draws_the_same_augmentations(tmp_path):
    base = get_config("debug_eqm")
    model = dataclasses.replace(base.model, image_resolution=(16, 16), action_horizon=4)

    def cfg(root, **kw):
        return dataclasses.replace(base, model=model, checkpoint_base_dir=str(root), exp_name="run",
                                   num_train_steps=4, save_interval=2, async_checkpoint=False, **kw)

    plain = loop.train(cfg(tmp_path / "plain"), progress=False)
    full = loop.train(cfg(tmp_path / "full", augment_images=True), progress=False)
    loop.train(cfg(tmp_path / "part", augment_images=True), progress=False, stop_after=2)
    resumed = loop.train(cfg(tmp_path / "part", augment_images=True, resume=True), progress=False)
    losses = [h["loss"] for h in full["history"]]
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], losses[2:], rtol=1e-6)
    assert not np.allclose([h["loss"] for h in plain["history"]], losses)  # the augmentation changed the inputs
