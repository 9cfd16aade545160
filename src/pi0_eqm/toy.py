"""A generated, learnable toy task for the tiny end-to-end demo and the tests (no simulator, no downloads).

Each sample shows one of ``num_goals`` goal colours in the base image (the wrist image is noise), a prompt that names
the goal by token id, and a random 4-d state. The action chunk moves the state linearly to the goal position:
``a[h] = s + (goal − s)·(h + 1)/H`` on the first ``real_action_dim`` dims, zero padding after. A policy must read the
image or the prompt and the state to predict it.
"""

from __future__ import annotations

import numpy as np

from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0Config

_COLOURS = np.array(
    [[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]], dtype=np.float32
)


def goals(num_goals: int, dim: int, seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (num_goals, dim)).astype(np.float32)


def make_batch(config: Pi0Config, batch_size: int, rng: np.random.Generator, num_goals: int = 4):
    """Returns ``(Observation, actions [B, H, D], goal_ids [B])`` as numpy-backed arrays."""
    if num_goals > len(_COLOURS):
        raise ValueError(f"num_goals must be <= {len(_COLOURS)}, got {num_goals}")
    d = config.real_action_dim or 4
    h_res, w_res = config.image_resolution
    ids = rng.integers(0, num_goals, batch_size)
    g = goals(num_goals, d)[ids]
    state = rng.uniform(-1.0, 1.0, (batch_size, d)).astype(np.float32)
    frac = (np.arange(config.action_horizon, dtype=np.float32) + 1) / config.action_horizon
    chunk = state[:, None, :] + (g - state)[:, None, :] * frac[None, :, None]
    actions = np.zeros((batch_size, config.action_horizon, config.action_dim), np.float32)
    actions[..., :d] = chunk
    padded_state = np.zeros((batch_size, config.action_dim), np.float32)
    padded_state[:, :d] = state
    images = {}
    for i, key in enumerate(config.image_keys):
        if i == 0:
            img = np.broadcast_to(_COLOURS[ids][:, None, None, :], (batch_size, h_res, w_res, 3)).copy()
            img += 0.1 * rng.standard_normal(img.shape).astype(np.float32)
        else:
            img = rng.uniform(-1.0, 1.0, (batch_size, h_res, w_res, 3)).astype(np.float32)
        images[key] = np.clip(img, -1.0, 1.0)
    tokens = np.zeros((batch_size, config.max_token_len), np.int32)
    tokens[:, 0] = 1  # BOS
    tokens[:, 1] = 10 + ids
    mask = np.zeros((batch_size, config.max_token_len), bool)
    mask[:, :2] = True
    obs = Observation(
        images=images,
        image_masks={k: np.ones((batch_size,), bool) for k in config.image_keys},
        state=padded_state,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=mask,
    )
    return obs, actions, ids
