"""``Policy``: observation dict → action chunk, wrapping params, transforms and decoder settings.

``infer`` runs four public stages, which ``infer_batch`` runs for many sessions at once:

1. ``prepare(obs, session)``: the request's decoder settings (with ``caps`` applied) and the input transforms
   (robot inputs → Normalize → model inputs); a state that normalises to non-finite values is refused;
2. ``initial_chunk(request)``: new-episode detection (``EpisodeDetection``), then the solver's start, drawn from the
   session's own RNG, or, for EqM with a warm start ("aligned" or "paper_half"), built from the session's previous
   robot-space chunk through the same action transforms the inputs use;
3. ``decode(requests)``: one compiled decode per (variant, batch size); requests with equal settings are decoded
   together (padded to a power of two), every setting but the variant is a traced argument;
4. ``robot_actions(request, decoded)``: the output transforms; a non-finite chunk is refused (``InvalidRequestError``)
   and clears the session's warm start instead of becoming it.

Sessions are independent: each has its own RNG stream (``session=None`` starts from ``jax.random.key(seed)``, any
other from that key folded with a CRC of the session id), warm-start chunk and episode tracking.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import threading
import time
from typing import Any
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.data import transforms as _t
from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.realtime import Prefix
from pi0_eqm.decoders.realtime import prefix_weights
from pi0_eqm.decoders.settings import SETTINGS_KEY
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY

_MODEL_KEYS = ("image", "image_mask", "state", "tokenized_prompt", "tokenized_prompt_mask")


def padded_batch_size(n: int) -> int:
    """The batch size ``n`` requests decode at: the next power of two, which bounds the compiled batch sizes."""
    return 1 << (n - 1).bit_length()


def padded_batch_sizes(max_batch: int) -> list[int]:
    """Every batch size a decode of 1 to ``max_batch`` requests runs at (1, 2, 4, … up to the padded largest): what a
    server's warm-up compiles."""
    return [1 << i for i in range(padded_batch_size(max_batch).bit_length())]


@dataclasses.dataclass(frozen=True)
class RequestCaps:
    """What one request may spend: the resolved cap on expert forwards and the lowest ε (``None``: no bound)."""

    max_iters: int | None = None
    min_threshold: float | None = None

    def check(self, ds: Any) -> None:
        """``ds``: a decoder's resolved settings; ``min_threshold`` applies to decoders that stop on a ``threshold``."""
        threshold = getattr(ds, "threshold", None)
        if self.max_iters is not None and ds.max_iters is not None and ds.max_iters > self.max_iters:
            raise InvalidRequestError(f"max_iters {ds.max_iters} is above this server's per-request cap of "
                                      f"{self.max_iters} expert forwards")
        if self.min_threshold is not None and threshold is not None and threshold < self.min_threshold:
            raise InvalidRequestError(f"threshold {threshold} is below this server's lower bound of "
                                      f"{self.min_threshold}")


SERVING_CAPS = RequestCaps(max_iters=100, min_threshold=1e-4)  # the server's defaults (scripts/serve_policy.py)


def _show(key: tuple) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in key) or "the defaults"


@dataclasses.dataclass
class _Session:
    rng: jax.Array
    prev_actions: np.ndarray | None = None  # robot-space absolute actions of the previous chunk [H, d]
    prompt: Any = None
    state: np.ndarray | None = None  # normalized model state of the previous request
    replied_at: float | None = None  # time.monotonic() when the previous chunk was returned
    # reply → next request inside episodes, the last 8 (kept across episodes: the session's pace, so the first
    # requests of an episode already have it and a short episode's end is seen)
    gaps: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Request:
    """One observation on its way through the stages."""

    session: Any
    settings: DecoderSettings
    decode: Any  # the decoder's resolved settings (``Decoder.Settings``)
    knobs: dict  # the traced arguments of the compiled decode (``Decoder.traced``)
    compiled: tuple  # its compiled-in settings (``Policy.compiled_key``)
    inputs: dict  # model inputs of one observation (unbatched)
    raw_state: np.ndarray
    prompt: Any
    init: np.ndarray | None = None  # [H, action_dim] solver start (``initial_chunk``)
    warm: bool = False
    new_episode: str | None = None  # what marked a new episode ("prompt", "gap", "state"), if anything
    prefix: tuple[np.ndarray, np.ndarray] | None = None  # real-time chunking: ([H, action_dim] model space, W [H])
    prefix_rows: int = 0  # d, the committed rows of ``prefix``


@dataclasses.dataclass
class Decoded:
    actions: np.ndarray  # [H, action_dim] model space
    iterations: int
    residual: float
    converged: bool
    batch_size: int
    decode_ms: float
    vjps: int = 0


class Policy:
    def __init__(self, model_config: Pi0Config, params: Any, *, input_transforms=(), output_transforms=(),
                 action_transforms=(), settings: DecoderSettings | None = None, metadata: dict | None = None,
                 seed: int = 0, caps: RequestCaps | None = None, episodes: EpisodeDetection | None = None,
                 state_key: Sequence[str] = ("state",), max_model_action: float | None = None):
        """``input_transforms``: robot inputs → Normalize → model inputs; ``output_transforms``: Unnormalize → robot
        outputs; ``action_transforms``: the action part of the inputs (delta, normalize, pad) used to bring a previous
        robot-space chunk back into model space for warm starts. ``caps`` bound every request's resolved settings
        (the defaults included); ``episodes`` (default ``EpisodeDetection()``) detects new episodes; ``state_key``
        is the key path of the raw robot state in an observation (the robot's ``RobotSpec.state_key``);
        ``max_model_action``: a chunk whose decoded rows (not the client's committed ones) have a larger normalized
        (model-space) magnitude is refused like a non-finite one (set when the actions are normalized)."""
        self.config = model_config
        self.params = params
        self.settings = settings or DecoderSettings()
        self.metadata = dict(metadata or {})
        self.episodes = episodes or EpisodeDetection()
        # The composed transforms (public: analysis code runs them on observations and chunks of its own).
        self.state_key = tuple(state_key)
        self.max_model_action = max_model_action
        self.input_transform = _t.compose(input_transforms)
        self.output_transform = _t.compose(output_transforms)
        self.action_transform = _t.compose(action_transforms)
        self.decoder = make_decoder(model_config)
        self._seed_key = jax.random.key(seed)
        self._sessions: dict[Any, _Session] = {}
        self._lock = threading.Lock()
        self._decode_cache: dict[tuple, Any] = {}
        self._warm_keys: set[tuple] | None = None  # after ``warm_up(refuse_cold=True)``: the compiled settings
        self.set_caps(caps or RequestCaps())

    def state_of(self, obs: dict) -> np.ndarray:
        """The raw robot state of an observation (float32; empty where it has none)."""
        node: Any = obs
        for part in self.state_key:
            node = node.get(part) if isinstance(node, dict) else None
        return np.zeros(0, np.float32) if node is None else np.asarray(node, np.float32)

    def set_caps(self, caps: RequestCaps) -> None:
        """Bounds every later request; ``ValueError`` if the policy's own defaults break them."""
        try:
            caps.check(self.decoder.resolve(self.settings))
        except InvalidRequestError as e:
            raise ValueError(f"the policy's default decoder settings break its caps: {e}") from None
        self.caps = caps

    # -------------------------------------------------------------------------------------------- state
    def reset(self, session: Any = None) -> None:
        """Episode reset: drops the session's warm-start chunk and episode tracking (its RNG stream continues)."""
        with self._lock:
            sess = self._sessions.get(session)
            if sess is not None:
                self._sessions[session] = _Session(rng=sess.rng, gaps=sess.gaps)

    def close(self, session: Any) -> None:
        """Forgets the session entirely (its connection closed)."""
        with self._lock:
            self._sessions.pop(session, None)

    def _session(self, session: Any) -> _Session:
        with self._lock:
            sess = self._sessions.get(session)
            if sess is None:
                key = self._seed_key if session is None else jax.random.fold_in(
                    self._seed_key, zlib.crc32(str(session).encode()) & 0x7FFFFFFF)
                sess = self._sessions[session] = _Session(rng=key)
            return sess

    def serving_metadata(self) -> dict:
        """What the policy assumes about its clients, for the server's metadata frame."""
        return {"executed_actions_per_chunk": self.settings.executed,
                "warm_start": self.settings.warm_start if self.decoder.warm_starts else "off",
                "new_episode_detection": self.episodes.describe(), "action_horizon": self.config.action_horizon,
                "realtime": {"prefix_method": self.decoder.prefix_method, "request_keys": [COMMITTED_KEY, OVERLAP_KEY],
                             "max_delay": self.max_delay, "prefix_trained": self.decoder.prefix_trained}}

    @property
    def max_delay(self) -> int:
        """The most committed rows a request may carry: the decoder's training ``max_delay`` for a checkpoint
        trained with committed prefixes, else H − 1 (the inference-time methods take any d that leaves a free row)."""
        return self.decoder.prefix_trained or self.config.action_horizon - 1

    # -------------------------------------------------------------------------------------------- stages
    def prepare(self, obs: dict, session: Any = None) -> Request:
        """Stage 1: decoder settings and model inputs of one observation."""
        obs = dict(obs)
        settings = self.settings.updated(obs.pop(SETTINGS_KEY, None))
        ds = self.decoder.resolve(settings)
        knobs = self.decoder.traced(ds)
        self.caps.check(ds)
        key = self.compiled_key(ds)
        if self._warm_keys is not None and key not in self._warm_keys:
            raise InvalidRequestError(
                f"decoder settings {_show(key)} are not compiled on this server (compiled at warm-up: "
                f"{', '.join(sorted(_show(k) for k in self._warm_keys))}); a first use would make every client wait "
                "for a compile: the server's operator can add them at start-up (serve_policy.py --warm-variants)")
        committed, overlap = obs.pop(COMMITTED_KEY, None), obs.pop(OVERLAP_KEY, None)
        prompt = obs.get("prompt")
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing state is refused just below
            raw_state = self.state_of(obs)
            inputs = self.input_transform(obs)
        if not np.all(np.isfinite(inputs["state"])):
            raise InvalidRequestError("the state normalises to non-finite values (it overflows float32); expected "
                                      "a state in the robot's range")
        req = Request(session, settings, ds, knobs, key, inputs, raw_state, prompt)
        if committed is not None:
            req.prefix, req.prefix_rows = self._prefix(committed, overlap, raw_state)
        elif overlap is not None:
            raise InvalidRequestError(f"{OVERLAP_KEY} needs {COMMITTED_KEY} (the rows executing during inference)")
        return req

    def _prefix(self, committed, overlap, raw_state) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        """The committed rows and the overlap (robot units) → model space through the warm start's action transforms,
        padded to ``[H, action_dim]``, with their weights ``W [H]``."""
        cfg = self.config
        dim, h = cfg.real_action_dim or cfg.action_dim, cfg.action_horizon
        rows = []
        for key, value in ((COMMITTED_KEY, committed), (OVERLAP_KEY, overlap)):
            if value is None:
                rows.append(np.zeros((0, dim), np.float32))
                continue
            arr = np.asarray(value)
            if arr.ndim != 2 or arr.shape[1] != dim or arr.dtype.kind not in "fiu":
                raise InvalidRequestError(f"{key} must be a [rows, {dim}] array of numbers (robot units), got "
                                          f"{arr.dtype} {arr.shape}")
            with np.errstate(over="ignore"):
                arr = arr.astype(np.float32)
            if not np.all(np.isfinite(arr)):
                raise InvalidRequestError(f"{key} holds non-finite values")
            rows.append(arr)
        d, m = len(rows[0]), len(rows[1])
        if self.decoder.prefix_trained and d > self.decoder.prefix_trained:
            raise InvalidRequestError(f"{COMMITTED_KEY} has {d} rows, but this checkpoint was trained with at most "
                                      f"{self.decoder.prefix_trained} committed rows (decoder max_delay); send at most "
                                      f"that many (the metadata frame's realtime.max_delay)")
        if d < 1 or d + m > h - 1:
            raise InvalidRequestError(f"{COMMITTED_KEY} ({d} rows) + {OVERLAP_KEY} ({m} rows) must leave at least one "
                                      f"free row of the {h}-step chunk (1 <= d, d + m <= {h - 1})")
        with np.errstate(over="ignore", invalid="ignore"):
            model = self.action_transform({"state": raw_state, "actions": np.concatenate(rows)})["actions"]
        model = np.asarray(model, np.float32)
        if not np.all(np.isfinite(model)):
            raise InvalidRequestError(f"{COMMITTED_KEY}/{OVERLAP_KEY} normalise to non-finite values; expected actions "
                                      "in the robot's range")
        actions = np.zeros((h, cfg.action_dim), np.float32)
        actions[: d + m, : model.shape[-1]] = model
        return (actions, prefix_weights(h, d, m)), d

    def initial_chunk(self, req: Request) -> Request:
        """Stage 2: new-episode detection, then the solver's start ``[H, action_dim]`` (noise or warm start)."""
        cfg = self.config
        sess = self._session(req.session)
        now = time.monotonic()
        req.new_episode = self.episodes.reason(prev_prompt=sess.prompt, prompt=req.prompt, prev_state=sess.state,
                                               state=np.asarray(req.inputs["state"]), prev_time=sess.replied_at,
                                               now=now, recent_gaps=sess.gaps)
        if req.new_episode is not None:
            sess.prev_actions = None
            req.prefix, req.prefix_rows = None, 0  # a committed prefix never crosses an episode boundary
        elif sess.replied_at is not None:
            sess.gaps = [*sess.gaps[-7:], now - sess.replied_at]
        with self._lock:
            sess.rng, rng = jax.random.split(sess.rng)
        noise = jax.random.normal(rng, (1, cfg.action_horizon, cfg.action_dim))
        req.warm = self.decoder.warm_starts and req.settings.warm_start != "off" and sess.prev_actions is not None
        init = noise
        if req.warm:
            prev = self.action_transform({"state": req.raw_state, "actions": sess.prev_actions})["actions"]
            prev = jnp.asarray(prev, jnp.float32)[None]  # already padded to action_dim by the action transforms
            # The previous chunk was re-expressed for the new state; the shift by the executed actions is on time.
            init = warm_start_init(prev, req.settings.executed, noise, req.settings.warm_start,
                                   req.settings.max_reuse)
        req.init = np.asarray(init)[0]
        return req

    def decode(self, requests: Sequence[Request]) -> list[Decoded]:
        """Stage 3: decode every request; requests with equal settings share one batched call."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.compiled, r.prefix is not None, *((k, v.item()) for k, v in sorted(r.knobs.items())))
            groups.setdefault(key, []).append(i)
        out: list[Decoded | None] = [None] * len(requests)
        for idx in groups.values():
            for i, d in zip(idx, self._decode_group([requests[i] for i in idx]), strict=True):
                out[i] = d
        return out

    def _decode_group(self, reqs: list[Request]) -> list[Decoded]:
        n = len(reqs)
        size = padded_batch_size(n)
        padded = reqs + [reqs[0]] * (size - n)
        batch = {k: jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *[r.inputs[k] for r in padded])
                 for k in _MODEL_KEYS if k in reqs[0].inputs}
        init = np.stack([r.init for r in padded])
        prefix = None
        if reqs[0].prefix is not None:
            st = reqs[0].settings
            prefix = Prefix(actions=np.stack([r.prefix[0] for r in padded]),
                            weights=np.stack([r.prefix[1] for r in padded]),
                            max_guidance=np.full((size,), st.rtc_guidance, np.float32),
                            pull=np.full((size,), st.inpaint_pull, np.float32))
        t0 = time.perf_counter()
        out = self.compiled_decode(reqs[0].compiled, prefix is not None)(
            self.params, Observation.from_dict(batch), jax.random.key(0), init, reqs[0].knobs, prefix)
        actions, iters, residual, converged, vjps = jax.device_get(out)
        ms = (time.perf_counter() - t0) * 1e3
        return [Decoded(np.asarray(actions[i]), int(iters[i]), float(residual[i]), bool(converged[i]), n, ms,
                        int(vjps[i])) for i in range(n)]

    def compiled_key(self, ds: Any) -> tuple:
        """The compiled-in part of a decoder's resolved settings (``Decoder.compiled_fields``) as ``((name, value),
        ...)``: one compiled decode per distinct key."""
        return tuple((f, getattr(ds, f)) for f in self.decoder.compiled_fields)

    def compiled_decode(self, key: tuple = (), with_prefix: bool = False):
        """The jitted ``(params, obs, rng, init, knobs, prefix) -> (actions, iterations, residual, converged, vjps)``
        of one compiled key (``compiled_key``: e.g. EqM's solver variant), with or without a real-time prefix (cached;
        one compilation per batch size); every other setting, the delay included, is a traced argument."""
        fn = self._decode_cache.get((key, with_prefix))
        if fn is None:
            dec = self.decoder

            @jax.jit
            def fn(params, obs, rng, init, knobs, prefix=None):
                ds = dec.Settings(**dict(key), **knobs)
                actions, stats = dec.decode(params, obs, rng, init=init, settings=ds, prefix=prefix)
                vjps = stats.vjps if stats.vjps is not None else jnp.zeros_like(stats.iterations)
                return actions, stats.iterations, stats.residual, stats.converged, vjps

            self._decode_cache[(key, with_prefix)] = fn
        return fn

    def robot_actions(self, req: Request, decoded: Decoded) -> dict:
        """Stage 4: robot-space actions and the reply; updates the session's warm-start and episode state."""
        sess = self._session(req.session)
        outputs = self.output_transform({"state": req.inputs["state"], "actions": decoded.actions, "raw_state": req.raw_state})
        actions = np.asarray(outputs["actions"])
        if not np.all(np.isfinite(actions)):
            sess.prev_actions = None
            raise InvalidRequestError(f"the policy produced {int(np.sum(~np.isfinite(actions)))} non-finite action "
                                      "value(s) for this observation; nothing is returned and this session's warm "
                                      "start is cleared")
        real = self.config.real_action_dim or self.config.action_dim
        free = np.asarray(decoded.actions)[req.prefix_rows:, :real]  # committed rows are the client's own actions
        peak = float(np.max(np.abs(free), initial=0.0))
        if self.max_model_action is not None and peak > self.max_model_action:
            sess.prev_actions = None
            raise InvalidRequestError(f"the policy produced a chunk {peak:.3g} normalized units from the training "
                                      f"data's center (the bound is {self.max_model_action:g}); nothing is returned "
                                      "and this session's warm start is cleared")
        sess.prev_actions = actions.copy() if self.decoder.warm_starts else None
        sess.prompt, sess.state, sess.replied_at = req.prompt, np.asarray(req.inputs["state"]), time.monotonic()
        return {
            "actions": actions,
            "policy_timing": {"infer_ms": decoded.decode_ms, "batch_size": decoded.batch_size},
            "solver": {"iterations": decoded.iterations, "final_residual": decoded.residual,
                       "converged": decoded.converged, "warm_started": bool(req.warm),
                       "new_episode": req.new_episode or "", "decoder": self.config.decoder.kind,
                       "prefix_rows": req.prefix_rows,
                       "prefix_method": self.decoder.prefix_method if req.prefix_rows else "", "vjps": decoded.vjps},
        }

    # -------------------------------------------------------------------------------------------- infer
    def infer(self, obs: dict, session: Any = None) -> dict:
        req = self.initial_chunk(self.prepare(obs, session))
        return self.robot_actions(req, self.decode([req])[0])

    def infer_batch(self, items: Sequence[tuple[dict, Any]]) -> list[dict | Exception]:
        """``infer`` for ``(obs, session)`` pairs of distinct sessions, decoded together. An error in one request's
        own stages (a bad request, a non-finite chunk) is its result and does not affect the others."""
        results: list[dict | Exception | None] = [None] * len(items)
        ready: list[tuple[int, Request]] = []
        for i, (obs, session) in enumerate(items):
            try:
                ready.append((i, self.initial_chunk(self.prepare(obs, session))))
            except Exception as e:  # noqa: BLE001 - this request's own result; the server tells the two kinds apart
                results[i] = e
        if ready:
            for (i, req), dec in zip(ready, self.decode([r for _, r in ready]), strict=True):
                try:
                    results[i] = self.robot_actions(req, dec)
                except InvalidRequestError as e:
                    results[i] = e
        return results

    def warm_up(self, obs: dict, batch_sizes: Sequence[int] = (1,), also: Sequence[dict] = (),
                refuse_cold: bool = False) -> None:
        """Compiles the default decode for each batch size on ``obs``, without and with a real-time committed prefix
        (one row of the first reply; the delay is data, so this serves every d), so that neither a robot's first
        request nor its first asynchronous one waits for a compile; then the same for each map of decoder-setting
        overrides in ``also`` (e.g. ``{"variant": "bb"}``). With ``refuse_cold`` a later request whose compiled-in
        settings (``compiled_key``) were not compiled here is refused (``InvalidRequestError``) instead of compiling
        while every other client waits. Sessions used here are forgotten."""
        keys = {self.compiled_key(self.decoder.resolve(self.settings.updated(o))) for o in ({}, *also)}
        for overrides in ({}, *also):
            self._warm_up_one({**obs, SETTINGS_KEY: overrides} if overrides else obs, batch_sizes)
        self._warm_keys = keys if refuse_cold else None

    def _warm_up_one(self, obs: dict, batch_sizes: Sequence[int]) -> None:
        for n in batch_sizes:
            items = [(obs, f"__warm_up_{i}") for i in range(n)]
            replies = self.infer_batch(items)
            for r in replies:
                if isinstance(r, Exception):
                    raise r
            prefixed = [({**o, COMMITTED_KEY: np.asarray(r["actions"])[:1]}, s)
                        for (o, s), r in zip(items, replies, strict=True)]
            for r in self.infer_batch(prefixed):
                if isinstance(r, Exception):
                    raise r
            for _, s in items:
                self.close(s)
