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

from collections.abc import Mapping
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
from pi0_eqm.decoders.config import EqmConfig
from pi0_eqm.decoders.config import FlowConfig
from pi0_eqm.decoders.config import SolverPreset
from pi0_eqm.decoders.config import SolverVariant
from pi0_eqm.decoders.config import WarmStartMode
from pi0_eqm.decoders.config import check_solver_values
from pi0_eqm.decoders.config import solver_preset
from pi0_eqm.decoders.warm_start import MODES as WARM_START_MODES
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0Config

SETTINGS_KEY = "decoder_settings"


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    preset: SolverPreset | None = None  # EqM solver preset (action | paper | bb): fills the fields left unset
    max_iters: int | None = None  # EqM iteration cap / flow Euler steps (None: the preset's, else the config's)
    threshold: float | None = None  # EqM ε (None: the config's; <= 0: never stop early)
    step_size: float | None = None  # η
    momentum: float | None = None  # μ
    variant: SolverVariant | None = None
    guard: bool | None = None  # EqM step guard (restart momentum / halve η when the residual grows)
    warm_start: WarmStartMode = "off"  # EqM only; "aligned" cost success on the embedded benchmark (README)
    executed: int = 5  # actions executed from a chunk before the next request (openpi LIBERO: replan every 5)
    max_reuse: int | None = None

    def __post_init__(self):
        if self.warm_start not in WARM_START_MODES:
            raise ValueError(f"warm_start must be one of {WARM_START_MODES}, got {self.warm_start!r}")
        if not isinstance(self.executed, int) or self.executed < 0:
            raise ValueError(f"executed must be an int >= 0, got {self.executed!r}")
        if self.preset is not None:
            solver_preset(self.preset)
        if self.guard is not None and not isinstance(self.guard, bool):
            raise ValueError(f"guard must be true or false, got {self.guard!r}")
        check_solver_values(variant=self.variant, step_size=self.step_size, momentum=self.momentum,
                            max_iters=self.max_iters, threshold=self.threshold)

    def updated(self, overrides: Mapping[str, Any] | None) -> PolicySettings:
        if not overrides:
            return self
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        if not isinstance(overrides, Mapping):
            raise InvalidRequestError(f"{SETTINGS_KEY} must be a map of setting → value, got {type(overrides).__name__}")
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise InvalidRequestError(f"unknown decoder settings {unknown}; allowed: {sorted(fields)}")
        values = {}
        for k, v in overrides.items():
            if isinstance(v, np.ndarray | np.generic):
                v = v.item()
            values[k] = v
        try:
            return dataclasses.replace(self, **values)
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"bad {SETTINGS_KEY}: {e}") from e

    def decode_settings(self, decoder_config: EqmConfig | FlowConfig | None = None) -> DecodeSettings:
        """The decoder settings; with ``decoder_config``, every field is resolved (explicit value, else the preset's,
        else the config's), so the compiled decode function sees the same structure for every request."""
        base = solver_preset(self.preset) if self.preset is not None else None

        def pick(name):
            value = getattr(self, name)
            return getattr(base, name) if value is None and base is not None else value

        ds = DecodeSettings(max_iters=pick("max_iters"), threshold=pick("threshold"), step_size=pick("step_size"),
                            momentum=pick("momentum"), variant=pick("variant"), guard=pick("guard"))
        if decoder_config is None:
            return ds
        if isinstance(decoder_config, FlowConfig):
            return DecodeSettings(max_iters=self.max_iters or decoder_config.num_steps)
        solver = decoder_config.solver
        return DecodeSettings(**{f.name: getattr(solver, f.name) if getattr(ds, f.name) is None else getattr(ds, f.name)
                                 for f in dataclasses.fields(DecodeSettings)})


@dataclasses.dataclass
class _Session:
    prev_actions: np.ndarray | None = None  # robot-space absolute actions of the previous chunk [H, d]


class Policy:
    def __init__(self, model_config: Pi0Config, params: Any, *, input_transforms=(), output_transforms=(),
                 action_transforms=(), settings: PolicySettings | None = None, metadata: dict | None = None,
                 seed: int = 0):
        """``input_transforms``: robot inputs → Normalize → model inputs; ``output_transforms``: Unnormalize → robot
        outputs; ``action_transforms``: the action part of the inputs (delta, normalize, pad) used to bring a previous
        robot-space chunk back into model space for warm starts."""
        self.config = model_config
        self.params = params
        self.settings = settings or PolicySettings()
        self.metadata = dict(metadata or {})
        self._inputs = _t.compose(input_transforms)
        self._outputs = _t.compose(output_transforms)
        self._actions_in = _t.compose(action_transforms)
        self._decoder = make_decoder(model_config)
        self._is_eqm = isinstance(model_config.decoder, EqmConfig)
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
            dec = self._decoder

            @jax.jit
            def fn(params, obs, rng, init, knobs):
                ds = DecodeSettings(variant=variant, **knobs)
                actions, stats = dec.decode(params, obs, rng, init=init, settings=ds)
                return actions, stats.iterations, stats.residual, stats.converged

            self._decode_cache[variant] = fn
        return fn

    def knobs(self, ds: DecodeSettings) -> dict[str, np.ndarray]:
        """The traced arguments of the compiled decode for resolved settings ``ds``."""
        if not self._is_eqm:
            return {"max_iters": np.int32(ds.max_iters)}
        return {"max_iters": np.int32(ds.max_iters), "threshold": np.float32(ds.threshold),
                "step_size": np.float32(ds.step_size), "momentum": np.float32(ds.momentum), "guard": np.bool_(ds.guard)}

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
        warm = self._is_eqm and settings.warm_start != "off" and sess.prev_actions is not None
        init = noise
        if warm:
            prev_model = self._actions_in({"state": state_raw, "actions": sess.prev_actions})["actions"]
            prev_model = jnp.asarray(_t.pad_to_dim(np.asarray(prev_model, np.float32), cfg.action_dim))[None]
            # The previous chunk was re-expressed for the new state, so it is already aligned to "now + 0" in the
            # delta sense; the shift by the executed actions happens on the time axis here.
            init = warm_start_init(prev_model, settings.executed, noise, settings.warm_start, settings.max_reuse)
        ds = settings.decode_settings(cfg.decoder)
        actions, iters, residual, converged = self._decode_fn(ds.variant)(
            self.params, model_obs, rng, init, self.knobs(ds))
        actions = np.asarray(jax.device_get(actions))[0]
        infer_ms = (time.perf_counter() - t0) * 1e3
        outputs = self._outputs({"state": inputs["state"], "actions": actions, "raw_state": state_raw})
        out_actions = np.asarray(outputs["actions"])
        sess.prev_actions = out_actions.copy() if self._is_eqm else None
        result = {"actions": out_actions, "policy_timing": {"infer_ms": infer_ms}}
        result["solver"] = {
            "iterations": int(iters[0]),
            "final_residual": float(residual[0]),
            "converged": bool(converged[0]),
            "warm_started": bool(warm),
            "decoder": cfg.decoder.kind,
        }
        return result
