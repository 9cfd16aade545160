"""The generated toy task behind the ``debug*`` configs (``ToyDataConfig``): no simulator, no downloads.

Each sample shows one of ``num_goals`` goal colours in the base image (the wrist image is noise), a prompt that names
the goal by token id, and a random 4-d state. The action chunk (absolute targets) moves each real dim toward the goal
at constant speed and then holds (see ``chunk_from``); padded dims are zero. A policy must read the image or the
prompt, and the state, to predict it.
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


def chunk_from(config: Pi0Config, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Expert chunk ``[B, H, action_dim]``: each real dim moves toward the goal at a constant speed 2/H, then holds.

    Constant speed makes receding-horizon plans consistent: after executing ``s`` actions the new chunk is exactly the
    old one shifted by ``s`` (what an aligned warm start assumes).
    """
    d = state.shape[-1]
    speed = 2.0 / config.action_horizon
    steps = (np.arange(config.action_horizon, dtype=np.float32) + 1) * speed
    delta = goal - state
    move = np.sign(delta)[:, None, :] * np.minimum(np.abs(delta)[:, None, :], steps[None, :, None])
    actions = np.zeros((state.shape[0], config.action_horizon, config.action_dim), np.float32)
    actions[..., :d] = state[:, None, :] + move
    return actions


def make_obs(config: Pi0Config, ids: np.ndarray, state: np.ndarray, rng: np.random.Generator) -> Observation:
    """Observation for goal ids ``[B]`` and real-dim states ``[B, d]``."""
    batch_size, d = state.shape
    h_res, w_res = config.image_resolution
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
    return Observation(
        images=images,
        image_masks={k: np.ones((batch_size,), bool) for k in config.image_keys},
        state=padded_state,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=mask,
    )


def make_batch(config: Pi0Config, batch_size: int, rng: np.random.Generator, num_goals: int = 4):
    """Returns ``(Observation, actions [B, H, D], goal_ids [B])`` as numpy arrays."""
    if num_goals > len(_COLOURS):
        raise ValueError(f"num_goals must be <= {len(_COLOURS)}, got {num_goals}")
    d = config.real_action_dim or 4
    ids = rng.integers(0, num_goals, batch_size)
    state = rng.uniform(-1.0, 1.0, (batch_size, d)).astype(np.float32)
    actions = chunk_from(config, state, goals(num_goals, d)[ids])
    return make_obs(config, ids, state, rng), actions, ids


class ToySource:
    """Random-access source of model-ready toy samples (deterministic per index) for the data loader."""

    def __init__(self, config: Pi0Config, num_samples: int, seed: int = 0):
        self.config, self.num_samples, self.seed = config, int(num_samples), int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.num_samples:
            raise IndexError(f"toy sample {index} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, int(index)])
        obs, actions, _ = make_batch(self.config, 1, rng)
        sample = {k: (v[0] if not isinstance(v, dict) else {kk: vv[0] for kk, vv in v.items()})
                  for k, v in obs.to_dict().items()}
        sample["actions"] = actions[0]
        sample["action_is_pad"] = np.zeros((self.config.action_horizon,), bool)
        return sample
