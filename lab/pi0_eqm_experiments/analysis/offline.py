"""Offline solver measurements on held-out expert states: forwards, residual and chunk error vs the expert.

* :func:`expert_states` — roll the scripted expert on held-out configurations and keep, every ``every`` steps, the
  observation and the expert's next ``H`` actions (the chunk it then executed);
* :func:`batched_decode` — the policy's decoder on many observations at once, with any settings (one compile per
  solver variant), from fixed noise;
* :func:`chunk_errors` — per-chunk RMS distance of decoded chunks to reference chunks in the model's normalized
  space over the real action dims (the scale the residual lives on).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.envs import metaworld as mw
from pi0_eqm.models.observation import Observation
from pi0_eqm_experiments.analysis.iterates import policy_model_inputs
from pi0_eqm_experiments.analysis.iterates import to_model


@dataclasses.dataclass(frozen=True)
class ExpertState:
    task: str
    episode: int
    step: int
    obs: dict[str, Any]
    expert: np.ndarray  # [H, d] robot-space actions the expert executed from this state


def expert_states(tasks: Sequence[str], *, seed: int, episodes_per_task: int, horizon: int, every: int = 8,
                  resolution: int = 64, max_steps: int = 200) -> list[ExpertState]:
    """Expert rollouts on configurations ``0..episodes_per_task-1`` of ``MetaWorldEnv(task, seed)``; a state every
    ``every`` steps while ``horizon`` expert actions still follow it."""
    out = []
    for task in tasks:
        expert = mw.ScriptedExpert(task)
        with mw.MetaWorldEnv(task, seed, resolution, max_steps) as env:
            for ep in range(episodes_per_task):
                obs = env.reset(ep)
                kept, actions = [], []
                while not env.done:
                    t = env.num_steps
                    if t % every == 0:
                        kept.append((t, obs))
                    a = expert.action(env.raw_obs)
                    actions.append(a)
                    step_obs, _, done = env.step(a, render=(t + 1) % every == 0)
                    if step_obs is not None:
                        obs = step_obs
                acts = np.asarray(actions, np.float32)
                out += [ExpertState(task, ep, t, o, acts[t:t + horizon]) for t, o in kept if t + horizon <= len(acts)]
    return out


def _stack(policy, states: Sequence[ExpertState]) -> Observation:
    inputs = [policy_model_inputs(policy, s.obs)[1] for s in states]
    return Observation.from_dict(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *inputs))


def batched_decode(policy, states: Sequence[ExpertState], settings, *, noise_seed: int = 0,
                   batch_size: int = 32) -> dict[str, np.ndarray]:
    """Decodes every state from noise (state ``i`` always gets the same noise) with ``DecoderSettings`` ``settings``;
    returns model-space ``actions [N, H, D]``, ``iterations``, ``residual``, ``converged``."""
    cfg = policy.config
    ds = policy.decoder.resolve(settings)
    fn = policy.compiled_decode(policy.compiled_key(ds))
    knobs = policy.decoder.traced(ds)
    noise = np.asarray(jax.random.normal(jax.random.key(noise_seed), (len(states), cfg.action_horizon, cfg.action_dim)))
    parts = []
    for i in range(0, len(states), batch_size):
        chunk = states[i:i + batch_size]
        pad = batch_size - len(chunk)
        chunk = list(chunk) + [chunk[-1]] * pad  # one compiled batch shape
        init = np.concatenate([noise[i:i + batch_size], np.repeat(noise[-1:], pad, 0)])
        out = jax.device_get(fn(policy.params, _stack(policy, chunk), jax.random.key(0), jnp.asarray(init), knobs))
        parts.append([np.asarray(x)[: batch_size - pad] for x in out])
    names = ("actions", "iterations", "residual", "converged")
    return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}


def expert_model_chunks(policy, states: Sequence[ExpertState]) -> np.ndarray:
    """The expert chunks in the policy's model space ``[N, H, D]``."""
    return np.stack([to_model(policy, s.obs, s.expert) for s in states])


def chunk_errors(actions: np.ndarray, reference: np.ndarray, real_dims: int) -> np.ndarray:
    """Per-chunk RMS over ``[H, :real_dims]`` of ``actions − reference`` (model space) → ``[N]``."""
    d = np.asarray(actions)[..., :real_dims] - np.asarray(reference)[..., :real_dims]
    return np.sqrt(np.mean(np.square(d), axis=(-2, -1)))
