"""gym-aloha as an openpi-client runtime ``Environment``, converted as openpi's ``examples/aloha_sim`` does."""

from __future__ import annotations

import gym_aloha  # noqa: F401  (registers the gym_aloha/* tasks)
import gymnasium
import numpy as np
from openpi_client import image_tools
from openpi_client.runtime import environment as _environment


class AlohaSimEnvironment(_environment.Environment):
    def __init__(self, task: str, obs_type: str = "pixels_agent_pos", seed: int = 0) -> None:
        np.random.seed(seed)
        self._rng = np.random.default_rng(seed)
        self._gym = gymnasium.make(task, obs_type=obs_type)
        self._last_obs = None
        self._done = True
        self.episode_reward = 0.0

    def reset(self) -> None:
        gym_obs, _ = self._gym.reset(seed=int(self._rng.integers(2**32 - 1)))
        self._last_obs = self._convert(gym_obs)
        self._done = False
        self.episode_reward = 0.0

    def is_episode_complete(self) -> bool:
        return self._done

    def get_observation(self) -> dict:
        if self._last_obs is None:
            raise RuntimeError("no observation yet: call reset() first")
        return self._last_obs

    def apply_action(self, action: dict) -> None:
        gym_obs, reward, terminated, truncated, _ = self._gym.step(action["actions"])
        self._last_obs = self._convert(gym_obs)
        self._done = terminated or truncated
        self.episode_reward = max(self.episode_reward, float(reward))

    @staticmethod
    def _convert(gym_obs: dict) -> dict:
        img = image_tools.convert_to_uint8(image_tools.resize_with_pad(gym_obs["pixels"]["top"], 224, 224))
        return {"state": gym_obs["agent_pos"], "images": {"cam_high": np.transpose(img, (2, 0, 1))}}
