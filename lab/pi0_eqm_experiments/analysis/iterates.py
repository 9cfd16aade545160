"""Inspecting EqM solver trajectories of a trained :class:`~pi0_eqm.policies.policy.Policy`.

Used by ``notebooks/solver_iterates.ipynb`` and ``lab/scripts/solver_figures.py``. Everything here is a pure function of
its arguments (the only cache is ``jax.jit``'s compilation cache):

* :func:`policy_model_inputs` — a robot observation dict → the batched model :class:`Observation` (the policy's own
  input transforms, as ``Policy.infer`` applies them);
* :func:`warm_start_from` — the solver's initial iterate from the previous robot-space chunk, exactly as
  ``Policy.infer`` builds it (robot → model space, aligned shift by the executed actions, fresh noise after it);
* :func:`record_solve` — one solve with trajectory recording → :class:`SolveRecord` (iterates in model space and in
  robot space, lookaheads, residuals);
* :func:`stop_points`, :func:`returned_chunk` — where a threshold ε would have stopped that trajectory and what it
  would have returned;
* :func:`per_dim_convergence`, :func:`distance_to` — distance of each iterate to the final iterate (per action
  dimension) or to a reference chunk (e.g. the expert's);
* :func:`expert_chunk` — the scripted expert's next ``H`` actions from the state reached by a given action history;
* :func:`closed_loop_records` — the policy driving a Meta-World env, with a cold and a warm recorded solve (same
  noise) at every replanning point and the expert's next actions from each reached state;
* :func:`solve_statistics`, :func:`paired_savings` — iterations to ε over many records, cold vs warm;
* :func:`policy_with_settings` — the same policy (params, transforms) with other ``DecoderSettings`` (e.g. another ε).

The solver run by :func:`record_solve` defaults to ``threshold=0`` (never stop early) so the whole trajectory up to
``max_iters`` is recorded. Stopping at ε only freezes a sample, it does not change the iterates before the stop, so
:func:`stop_points` on that full trajectory gives exactly the iteration at which a solve with threshold ε would have
stopped, and :func:`returned_chunk` the chunk it would have returned (the lookahead Ã_k that the residual certifies).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.data import transforms as _t
from pi0_eqm.decoders.eqm import EqmDecodeSettings
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.models.observation import Observation

# Default recording settings: never stop early, so every threshold can be evaluated on one trajectory.
FULL_TRAJECTORY = EqmDecodeSettings(threshold=0.0, max_iters=60)


@dataclasses.dataclass(frozen=True)
class SolveRecord:
    """One recorded solve of one observation (numpy arrays, no batch dimension).

    ``k`` indexes solver iterations: ``iterates[0]`` is the initial chunk ``A_0``, ``iterates[k]`` is ``A_k``;
    ``residuals[k] = r_k = RMS f(Ã_k)`` is the residual at the lookahead ``lookaheads[k] = Ã_k`` evaluated by
    iteration ``k`` (so stopping at ``k`` costs ``k + 1`` field evaluations). ``residuals`` is NaN after the sample
    stopped (only with a threshold > 0). Model space: normalized and padded to the model's action dim; robot space:
    the policy's output transforms applied (unnormalized, cut to the robot's action dim).
    """

    iterates: np.ndarray  # [K+1, H, D] model space
    lookaheads: np.ndarray  # [K, H, D] model space
    residuals: np.ndarray  # [K]
    robot_iterates: np.ndarray  # [K+1, H, d] robot space
    robot_lookaheads: np.ndarray  # [K, H, d] robot space
    actions: np.ndarray  # [H, d] the chunk the solver returned (robot space)
    iterations: int  # field evaluations spent
    residual: float  # last residual
    converged: bool  # r_k < ε was reached (always False with threshold 0)
    init: np.ndarray  # [H, D] model-space initial iterate (= iterates[0])

    @property
    def num_iters(self) -> int:
        """Number of recorded iterations K (the length of ``residuals``)."""
        return int(self.residuals.shape[0])


# ------------------------------------------------------------------------------------------------ model inputs
def policy_model_inputs(policy, obs: Mapping[str, Any]) -> tuple[Observation, dict]:
    """Applies ``policy``'s input transforms to one robot observation and batches it (batch size 1).

    Returns ``(Observation, transformed inputs)``; the transformed dict (unbatched) carries the normalized ``state``
    the output transforms need.
    """
    inputs = policy.input_transform(dict(obs))
    batched = jax.tree.map(lambda x: np.asarray(x)[None], inputs)
    return Observation.from_dict(batched), inputs


def to_robot(policy, obs: Mapping[str, Any], model_actions: np.ndarray, inputs: dict | None = None) -> np.ndarray:
    """Model-space chunks ``[..., H, D]`` → robot-space chunks ``[..., H, d]`` via the policy's output transforms."""
    if inputs is None:
        _, inputs = policy_model_inputs(policy, obs)
    model_actions = np.asarray(model_actions, np.float32)
    lead = model_actions.shape[:-2]
    flat = model_actions.reshape((-1, *model_actions.shape[-2:]))
    raw_state = policy.state_of(obs)
    out = [np.asarray(policy.output_transform({"state": inputs["state"], "actions": a, "raw_state": raw_state})["actions"])
           for a in flat]
    return np.stack(out).reshape((*lead, *out[0].shape))


def to_model(policy, obs: Mapping[str, Any], robot_actions: np.ndarray) -> np.ndarray:
    """A robot-space chunk ``[H, d]`` → model space ``[H, D]`` (the policy's action transforms: delta, normalize,
    pad), re-expressed relative to ``obs``'s state as the policy does for warm starts."""
    model = policy.action_transform({"state": policy.state_of(obs), "actions": np.asarray(robot_actions, np.float32)})["actions"]
    return _t.pad_to_dim(np.asarray(model, np.float32), policy.config.action_dim)


def warm_start_from(policy, obs: Mapping[str, Any], prev_actions: np.ndarray, executed: int, noise: np.ndarray,
                    mode: str = "aligned", max_reuse: int | None = None) -> np.ndarray:
    """The initial iterate ``[H, D]`` ``Policy.infer`` would use for ``obs`` after executing ``executed`` actions of
    the previous robot-space chunk ``prev_actions [H, d]``; ``noise [H, D]`` fills what is not reused."""
    prev_model = to_model(policy, obs, prev_actions)
    init = warm_start_init(jnp.asarray(prev_model)[None], executed, jnp.asarray(noise, jnp.float32)[None], mode,
                           max_reuse)
    return np.asarray(init[0])


def policy_with_settings(policy, settings):
    """A new :class:`Policy` sharing ``policy``'s params and transforms but with other ``DecoderSettings`` (e.g. another
    ε for a closed-loop comparison) and fresh session state; nothing is reloaded."""
    from pi0_eqm.policies.policy import Policy

    return Policy(policy.config, policy.params, input_transforms=(policy.input_transform,),
                  output_transforms=(policy.output_transform,), action_transforms=(policy.action_transform,),
                  settings=settings, metadata=policy.metadata, state_key=policy.state_key)


def noise_chunk(policy, seed: int | jax.Array) -> np.ndarray:
    """Standard-normal model-space chunk ``[H, D]`` (a cold start) from an int seed or a JAX key."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    cfg = policy.config
    return np.asarray(jax.random.normal(key, (cfg.action_horizon, cfg.action_dim)), np.float32)


# ------------------------------------------------------------------------------------------------ recording
@functools.partial(jax.jit, static_argnames=("decoder", "settings"))
def _decode_recorded(params, obs, rng, init, *, decoder, settings):
    actions, stats = decoder.decode(params, obs, rng, init=init, settings=settings, record=True)
    return actions, stats


def record_solve(policy, obs: Mapping[str, Any], *, init: np.ndarray | None = None, seed: int = 0,
                 settings: EqmDecodeSettings = FULL_TRAJECTORY) -> SolveRecord:
    """Runs the policy's EqM solver on one robot observation with trajectory recording.

    ``init [H, D]`` (model space) is the initial iterate, e.g. :func:`noise_chunk` (cold) or :func:`warm_start_from`
    (warm); default: noise from ``seed``. ``settings`` override the config's solver settings; the default records the
    full ``max_iters = 60`` trajectory (the default solver reaches ε = 1e-3 well inside it) without stopping early. Unlike ``Policy.infer`` this keeps no session state.
    """
    if policy.decoder.kind != "eqm":
        raise TypeError("record_solve needs an EqM policy (the flow decoder has no solver trajectory)")
    model_obs, inputs = policy_model_inputs(policy, obs)
    if init is None:
        init = noise_chunk(policy, seed)
    init = np.asarray(init, np.float32)
    cfg = policy.config
    if init.shape != (cfg.action_horizon, cfg.action_dim):
        raise ValueError(f"init must have shape {(cfg.action_horizon, cfg.action_dim)}, got {init.shape}")
    actions, stats = _decode_recorded(policy.params, model_obs, jax.random.key(seed), jnp.asarray(init)[None],
                                      decoder=policy.decoder, settings=settings)
    actions, stats = jax.device_get((actions, stats))
    iterations = int(stats.iterations[0])
    # The buffers are sized by the config's cap; keep the iterations that ran.
    k = iterations
    iterates = np.asarray(stats.iterates[: k + 1, 0])
    lookaheads = np.asarray(stats.lookaheads[:k, 0])
    residuals = np.asarray(stats.residuals[:k, 0])
    return SolveRecord(
        iterates=iterates,
        lookaheads=lookaheads,
        residuals=residuals,
        robot_iterates=to_robot(policy, obs, iterates, inputs),
        robot_lookaheads=to_robot(policy, obs, lookaheads, inputs),
        actions=to_robot(policy, obs, np.asarray(actions[0]), inputs),
        iterations=iterations,
        residual=float(stats.residual[0]),
        converged=bool(stats.converged[0]),
        init=init,
    )


# ------------------------------------------------------------------------------------------------ analysis
def stop_points(residuals: np.ndarray, thresholds: Iterable[float]) -> dict[float, int | None]:
    """``{ε: k}``: the first iteration ``k`` with ``r_k < ε`` (the solver would spend ``k + 1`` field evaluations
    and return ``Ã_k``), or ``None`` if the recorded residuals never go below ε. NaN entries never trigger."""
    r = np.asarray(residuals, np.float64)
    if r.ndim != 1:
        raise ValueError(f"residuals must be 1-D [K], got shape {r.shape}")
    out: dict[float, int | None] = {}
    for eps in thresholds:
        with np.errstate(invalid="ignore"):
            hit = np.flatnonzero(r < eps)
        out[float(eps)] = int(hit[0]) if hit.size else None
    return out


def returned_chunk(record: SolveRecord, eps: float, *, robot: bool = True, cap: int | None = None) -> np.ndarray:
    """The chunk a solve with threshold ``eps`` (and at most ``cap`` field evaluations) would have returned: ``Ã_k``
    at the stop point, or ``A_cap`` (the last recorded iterate without ``cap``) if ``eps`` is not reached in time."""
    k = stop_points(record.residuals, [eps])[float(eps)]
    last = record.num_iters if cap is None else min(cap, record.num_iters)
    if k is None or k >= last:
        return (record.robot_iterates if robot else record.iterates)[last]
    return (record.robot_lookaheads if robot else record.lookaheads)[k]


def per_dim_convergence(iterates: np.ndarray, final: np.ndarray | None = None) -> np.ndarray:
    """RMS over the horizon of ``A_k − A_final`` per action dimension: ``iterates [K+1, H, D] → [K+1, D]``.

    ``final`` defaults to the last iterate (so the last row is 0)."""
    it = np.asarray(iterates, np.float64)
    if it.ndim != 3:
        raise ValueError(f"iterates must be [K+1, H, D], got shape {it.shape}")
    ref = it[-1] if final is None else np.asarray(final, np.float64)
    return np.sqrt(np.mean(np.square(it - ref[None]), axis=1))


def distance_to(iterates: np.ndarray, reference: np.ndarray, dims: Sequence[int] | None = None,
                clip: tuple[float, float] | None = None) -> np.ndarray:
    """RMS distance of each iterate ``[K+1, H, d]`` to ``reference [H, d]`` over the horizon and ``dims`` → ``[K+1]``.

    If ``reference`` is shorter than the horizon (an expert rollout that ended), only its steps are compared. ``clip``
    clips both first (e.g. ``(-1, 1)``: what a Meta-World env actually executes)."""
    it = np.asarray(iterates, np.float64)
    ref = np.asarray(reference, np.float64)
    if clip is not None:
        it, ref = np.clip(it, *clip), np.clip(ref, *clip)
    h = min(it.shape[1], ref.shape[0])
    diff = it[:, :h] - ref[None, :h]
    if dims is not None:
        diff = diff[..., list(dims)]
    return np.sqrt(np.mean(np.square(diff), axis=(1, 2)))


# ------------------------------------------------------------------------------------------------ simulator
def expert_chunk(env, episode: int, history: Sequence[np.ndarray], horizon: int) -> np.ndarray:
    """The scripted expert's next ``horizon`` actions ``[h, d]`` (``h <= horizon`` if the episode ends first).

    ``env`` is a scratch :class:`~pi0_eqm.envs.metaworld.MetaWorldEnv` of the same task and seed as the one being
    analysed (its state is overwritten): episode ``episode`` is reset, ``history`` (the actions executed so far) is
    replayed without rendering — MuJoCo is deterministic, so this reproduces the analysed state — and the expert is
    rolled forward from there, each action computed from the state it actually reaches.
    """
    from pi0_eqm.envs.metaworld import ScriptedExpert

    expert = ScriptedExpert(env.task)
    env.reset(episode)
    if len(history) + horizon > env.max_steps:
        raise ValueError(f"history ({len(history)}) + horizon ({horizon}) exceeds the env's max_steps {env.max_steps}")
    for a in history:
        env.step(np.asarray(a), render=False)
    out = []
    for _ in range(horizon):
        a = expert.action(env.raw_obs)
        out.append(a)
        env.step(a, render=False)
    return np.stack(out).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Replan:
    """One replanning point of :func:`closed_loop_records`."""

    step: int  # env steps executed before this observation
    obs: dict  # the observation the solver saw
    history: np.ndarray  # [step, d] actions executed before it
    cold: SolveRecord  # solve from fresh noise
    warm: SolveRecord | None  # solve from the aligned warm start (same noise after the reused part); None at step 0
    executed: np.ndarray  # [<= replan_every, d] the actions then executed
    expert: np.ndarray | None  # [<= H, d] the expert's next actions from this state (if a scratch env was given)


def closed_loop_records(policy, env, episode: int, *, replan_every: int, num_chunks: int, eps: float = 1e-2,
                        seed: int = 0, warm_mode: str = "aligned", scratch_env=None,
                        settings: EqmDecodeSettings = FULL_TRAJECTORY, cap: int | None = None) -> list[Replan]:
    """Runs the policy closed loop for up to ``num_chunks`` chunks of episode ``episode``, recording at every
    replanning point a cold solve and (after the first chunk) a warm-started solve from the *same* noise, as
    ``Policy.infer`` would build it. The chunk executed is what the deployed policy would execute: the warm solve's
    (the cold one's for the first chunk) chunk returned at threshold ``eps`` within ``cap`` forwards (default: the
    policy's solver cap); its first ``replan_every`` actions are
    stepped in ``env``. With ``scratch_env`` (same task and seed) the expert's next ``H`` actions are recorded too.
    """
    horizon = policy.config.action_horizon
    if cap is None:
        cap = policy.decoder.resolve(policy.settings).max_iters
    if not 1 <= replan_every <= horizon:
        raise ValueError(f"replan_every must be in [1, {horizon}], got {replan_every}")
    obs = env.reset(episode)
    history: list[np.ndarray] = []
    prev: np.ndarray | None = None
    out: list[Replan] = []
    for i in range(num_chunks):
        noise = noise_chunk(policy, seed * 100_003 + i)
        cold = record_solve(policy, obs, init=noise, seed=seed, settings=settings)
        warm = None
        if prev is not None and warm_mode != "off":
            init = warm_start_from(policy, obs, prev, replan_every, noise, warm_mode)
            warm = record_solve(policy, obs, init=init, seed=seed, settings=settings)
        chunk = returned_chunk(warm if warm is not None else cold, eps, cap=cap)
        expert = None
        if scratch_env is not None:
            h = min(horizon, env.max_steps - len(history))
            expert = expert_chunk(scratch_env, episode, history, h) if h > 0 else None
        executed = []
        for j, a in enumerate(chunk[:replan_every]):
            step_obs, _, done = env.step(a, render=j == replan_every - 1)
            executed.append(np.asarray(a, np.float32))
            if done:
                break
        out.append(Replan(step=len(history), obs=obs, history=np.asarray(history, np.float32).reshape(-1, chunk.shape[-1]),
                          cold=cold, warm=warm, executed=np.stack(executed), expert=expert))
        history.extend(executed)
        prev = chunk
        if env.done:
            break
        if step_obs is None:
            step_obs = env.observation()
        obs = step_obs
    return out


def solve_statistics(records: Mapping[str, Sequence[SolveRecord]], thresholds: Sequence[float]) -> dict:
    """``{name: {ε: {"mean_iters", "reached"}}}`` over lists of records (e.g. ``{"cold": [...], "warm": [...]}``):
    mean field evaluations to reach ε (``k + 1``; records that never reach ε count as their full budget) and the
    fraction of records that reached it."""
    out: dict[str, dict[float, dict[str, float]]] = {}
    for name, recs in records.items():
        out[name] = {}
        for eps in thresholds:
            ks = [stop_points(r.residuals, [eps])[float(eps)] for r in recs]
            iters = [r.num_iters if k is None else k + 1 for r, k in zip(recs, ks, strict=True)]
            out[name][float(eps)] = {"mean_iters": float(np.mean(iters)) if iters else float("nan"),
                                    "reached": float(np.mean([k is not None for k in ks])) if ks else float("nan")}
    return out


def paired_savings(pairs: Sequence[tuple[SolveRecord, SolveRecord]], thresholds: Sequence[float]) -> dict:
    """``{ε: {"n", "mean_saved", "relative"}}`` over (cold, warm) pairs of the same observation and noise where both
    reached ε: mean iterations saved by the warm start (cold − warm) and that saving relative to the cold count."""
    out: dict[float, dict[str, float]] = {}
    for eps in thresholds:
        saved, cold_iters = [], []
        for cold, warm in pairs:
            kc = stop_points(cold.residuals, [eps])[float(eps)]
            kw = stop_points(warm.residuals, [eps])[float(eps)]
            if kc is not None and kw is not None:
                saved.append(kc - kw)
                cold_iters.append(kc + 1)
        out[float(eps)] = {"n": len(saved),
                           "mean_saved": float(np.mean(saved)) if saved else float("nan"),
                           "relative": float(np.sum(saved) / np.sum(cold_iters)) if saved else float("nan")}
    return out
