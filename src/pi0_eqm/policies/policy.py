"""``Policy``: observation dict → action chunk, wrapping params, transforms and decoder settings.

For EqM with a warm start (``warm_start`` "aligned" or "paper_half"; the default "off" decodes from noise) the policy
keeps, per client session, the previous chunk and warm-starts the next solve from it (aligned shift by the number of
actions executed since, or the paper's half-chunk rule); ``reset(session)`` (episode reset) drops it.
Decoder settings (solver preset, ε, max iterations, step size, momentum, solver variant, guard, warm-start mode,
executed actions) are set at construction and can be overridden per request with a ``"decoder_settings"`` dict in the
observation. Only the solver variant is compiled in: one compiled decode function per variant serves every ε, cap,
η, μ and guard (they are traced arguments).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.data import transforms as _t
from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.base import DecodeSettings
from pi0_eqm.decoders.settings import SETTINGS_KEY
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0Config


@dataclasses.dataclass
class _Session:
    prev_actions: np.ndarray | None = None  # robot-space absolute actions of the previous chunk [H, d]


class Policy:
    def __init__(self, model_config: Pi0Config, params: Any, *, input_transforms=(), output_transforms=(),
                 action_transforms=(), settings: DecoderSettings | None = None, metadata: dict | None = None,
                 seed: int = 0):
        """``input_transforms``: robot inputs → Normalize → model inputs; ``output_transforms``: Unnormalize → robot
        outputs; ``action_transforms``: the action part of the inputs (delta, normalize, pad) used to bring a previous
        robot-space chunk back into model space for warm starts."""
        self.config = model_config
        self.params = params
        self.settings = settings or DecoderSettings()
        self.metadata = dict(metadata or {})
        self._inputs = _t.compose(input_transforms)
        self._outputs = _t.compose(output_transforms)
        self._actions_in = _t.compose(action_transforms)
        self.decoder = make_decoder(model_config)
        self._rng = jax.random.key(seed)
        self._sessions: dict[Any, _Session] = {}
        self._lock = threading.Lock()
        self._decode_cache: dict[str | None, Any] = {}

    # -------------------------------------------------------------------------------------------- state
    def reset(self, session: Any = None) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def _session(self, session: Any) -> _Session:
        with self._lock:
            return self._sessions.setdefault(session, _Session())

    def _decode_fn(self, variant: str | None):
        """One compiled decode per solver variant; every other setting is a traced argument (``knobs``)."""
        fn = self._decode_cache.get(variant)
        if fn is None:
            dec = self.decoder

            @jax.jit
            def fn(params, obs, rng, init, knobs):
                ds = DecodeSettings(variant=variant, **knobs)
                actions, stats = dec.decode(params, obs, rng, init=init, settings=ds)
                return actions, stats.iterations, stats.residual, stats.converged

            self._decode_cache[variant] = fn
        return fn

    # -------------------------------------------------------------------------------------------- infer
    def infer(self, obs: dict, session: Any = None) -> dict:
        obs = dict(obs)
        settings = self.settings.updated(obs.pop(SETTINGS_KEY, None))
        state_raw = np.asarray(obs.get("observation/state", obs.get("state", np.zeros(0))), np.float32)
        t0 = time.perf_counter()
        inputs = self._inputs(obs)
        batched = jax.tree.map(lambda x: np.asarray(x)[None], inputs)
        model_obs = Observation.from_dict(batched)
        cfg = self.config
        with self._lock:
            self._rng, rng = jax.random.split(self._rng)
        noise = jax.random.normal(rng, (1, cfg.action_horizon, cfg.action_dim))
        sess = self._session(session)
        warm = self.decoder.warm_starts and settings.warm_start != "off" and sess.prev_actions is not None
        init = noise
        if warm:
            prev_model = self._actions_in({"state": state_raw, "actions": sess.prev_actions})["actions"]
            prev_model = jnp.asarray(_t.pad_to_dim(np.asarray(prev_model, np.float32), cfg.action_dim))[None]
            # The previous chunk was re-expressed for the new state, so it is already aligned to "now + 0" in the
            # delta sense; the shift by the executed actions happens on the time axis here.
            init = warm_start_init(prev_model, settings.executed, noise, settings.warm_start, settings.max_reuse)
        ds = self.decoder.resolve(settings)
        actions, iters, residual, converged = self._decode_fn(ds.variant)(
            self.params, model_obs, rng, init, self.decoder.traced(ds))
        actions = np.asarray(jax.device_get(actions))[0]
        infer_ms = (time.perf_counter() - t0) * 1e3
        outputs = self._outputs({"state": inputs["state"], "actions": actions, "raw_state": state_raw})
        out_actions = np.asarray(outputs["actions"])
        sess.prev_actions = out_actions.copy() if self.decoder.warm_starts else None
        result = {"actions": out_actions, "policy_timing": {"infer_ms": infer_ms}}
        result["solver"] = {
            "iterations": int(iters[0]),
            "final_residual": float(residual[0]),
            "converged": bool(converged[0]),
            "warm_started": bool(warm),
            "decoder": cfg.decoder.kind,
        }
        return result
