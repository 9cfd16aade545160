"""Helpers of the solver-iterate analysis: synthetic trajectories, and a real (randomly initialised) Meta-World-shaped
policy through its real transforms and solver."""

import dataclasses

import jax
import numpy as np
from pi0_eqm_experiments.analysis import iterates as it
import pytest

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.decoders.eqm import EqmDecodeSettings
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.decoders.solver import normalized_residual
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.training.config import get_config


def _record(residuals, iterates, lookaheads=None):
    """A SolveRecord from a synthetic trajectory (robot space = model space)."""
    residuals = np.asarray(residuals, np.float32)
    iterates = np.asarray(iterates, np.float32)
    lookaheads = iterates[1:] if lookaheads is None else np.asarray(lookaheads, np.float32)
    return it.SolveRecord(iterates=iterates, lookaheads=lookaheads, residuals=residuals, robot_iterates=iterates,
                          robot_lookaheads=lookaheads, actions=iterates[-1], iterations=len(residuals),
                          residual=float(residuals[-1]), converged=False, init=iterates[0])


# ------------------------------------------------------------------------------------------------ pure helpers
def test_stop_points_on_a_geometric_residual():
    r = 5.0 * 0.9 ** np.arange(100)  # r_k < ε ⇔ k > log(ε/5)/log(0.9)
    stops = it.stop_points(r, [10.0, 1.0, 1e-1, 1e-3, 1e-9])
    assert stops[10.0] == 0
    for eps in (1.0, 1e-1, 1e-3):
        k = stops[eps]
        assert r[k] < eps <= r[k - 1]
        assert k == int(np.floor(np.log(eps / 5.0) / np.log(0.9))) + 1
    assert stops[1e-9] is None


def test_stop_points_ignores_nan_and_needs_1d():
    r = np.array([3.0, 2.0, 0.5, np.nan, np.nan])
    assert it.stop_points(r, [1.0, 0.1]) == {1.0: 2, 0.1: None}
    with pytest.raises(ValueError, match="1-D"):
        it.stop_points(np.ones((3, 2)), [1.0])


def test_per_dim_convergence_of_a_known_linear_trajectory():
    k = np.arange(31)
    rng = np.random.default_rng(0)
    final = rng.normal(size=(8, 3))
    start = rng.normal(size=(8, 3))
    rates = np.array([0.5, 0.8, 0.95])  # each dim contracts at its own rate
    traj = final[None] + rates[None, None, :] ** k[:, None, None] * (start - final)[None]
    conv = it.per_dim_convergence(traj, final=final)
    expected = rates[None, :] ** k[:, None] * np.sqrt(np.mean((start - final) ** 2, axis=0))[None]
    np.testing.assert_allclose(conv, expected, rtol=1e-7, atol=1e-12)
    assert conv.shape == (31, 3)
    # Default reference: the last iterate (last row exactly zero).
    assert np.all(it.per_dim_convergence(traj)[-1] == 0)
    with pytest.raises(ValueError):
        it.per_dim_convergence(traj[0])


def test_distance_to_reference_handles_a_shorter_reference_and_dims():
    traj = np.zeros((3, 4, 2))
    traj[1] = 1.0
    traj[2, :, 0] = 2.0
    ref = np.zeros((2, 2))  # only the first 2 chunk steps are compared
    np.testing.assert_allclose(it.distance_to(traj, ref), [0.0, 1.0, np.sqrt(2.0)])
    np.testing.assert_allclose(it.distance_to(traj, ref, dims=[1]), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(it.distance_to(traj, ref, clip=(-1.5, 1.5)), [0.0, 1.0, np.sqrt(1.5**2 / 2 + 0)])


def test_returned_chunk_is_the_lookahead_at_the_stop_point():
    iterates = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 1), np.float32)
    looks = iterates[:5] + 0.5
    rec = _record([4.0, 3.0, 2.0, 1.0, 0.5], iterates, looks)
    np.testing.assert_array_equal(it.returned_chunk(rec, 2.5), looks[2])  # r_2 = 2 < 2.5
    np.testing.assert_array_equal(it.returned_chunk(rec, 0.1), iterates[-1])  # never reached: last iterate
    # With a cap of 2 forwards the solve ends before r_2 < 2.5 and returns A_2; a cap past the stop changes nothing.
    np.testing.assert_array_equal(it.returned_chunk(rec, 2.5, cap=2), iterates[2])
    np.testing.assert_array_equal(it.returned_chunk(rec, 2.5, cap=3), looks[2])
    np.testing.assert_array_equal(it.returned_chunk(rec, 0.1, cap=4), iterates[4])


def test_solve_statistics_counts_the_budget_for_unreached_thresholds():
    traj = np.zeros((11, 1, 1))
    fast = _record(np.geomspace(1.0, 1e-3, 10), traj)
    slow = _record(np.geomspace(1.0, 1e-1, 10), traj)
    stats = it.solve_statistics({"a": [fast, slow]}, [0.5, 1e-2])
    k_fast, k_slow = it.stop_points(fast.residuals, [0.5])[0.5], it.stop_points(slow.residuals, [0.5])[0.5]
    assert stats["a"][0.5] == {"mean_iters": (k_fast + k_slow + 2) / 2, "reached": 1.0}
    k = it.stop_points(fast.residuals, [1e-2])[1e-2]
    assert stats["a"][1e-2] == {"mean_iters": (k + 1 + 10) / 2, "reached": 0.5}


def test_paired_savings_uses_pairs_where_both_reached():
    traj = np.zeros((11, 1, 1))
    cold = _record([5, 4, 3, 2, 1, 0.5, 0.4, 0.3, 0.2, 0.1], traj)
    warm = _record([3, 2, 1, 0.5, 0.4, 0.3, 0.2, 0.2, 0.2, 0.2], traj)
    out = it.paired_savings([(cold, warm)], [2.5, 0.15])
    assert out[2.5] == {"n": 1, "mean_saved": 2.0, "relative": 2.0 / 4}  # cold stops at k=3, warm at k=1
    assert out[0.15]["n"] == 0 and np.isnan(out[0.15]["mean_saved"])


# ------------------------------------------------------------------------------------------------ real policy
def _metaworld_obs(rng, state=None):
    return {
        "observation/image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=4).astype(np.float32) if state is None else state,
        "prompt": "open the drawer",
    }


@pytest.fixture(scope="module")
def random_policy():
    """The real pi0_eqm_metaworld config and transforms with random params and made-up norm stats."""
    cfg = get_config("pi0_eqm_metaworld")
    params = cfg.model.init(jax.random.key(0))
    stats = {"state": NormStats(mean=np.full(4, 0.3), std=np.full(4, 0.2)),
             "actions": NormStats(mean=np.array([0.0, 0.1, -0.1, 0.0]), std=np.array([0.5, 0.5, 0.5, 0.9]))}
    return policy_from_params(cfg, params, stats, settings=DecoderSettings(executed=4))


SHORT = EqmDecodeSettings(threshold=0.0, max_iters=24)


def test_record_solve_shapes_and_robot_space(random_policy):
    pol = random_policy
    obs = _metaworld_obs(np.random.default_rng(0))
    h, d_model = pol.config.action_horizon, pol.config.action_dim
    rec = it.record_solve(pol, obs, seed=3, settings=SHORT)
    assert rec.iterates.shape == (25, h, d_model) and rec.lookaheads.shape == (24, h, d_model)
    assert rec.residuals.shape == (24,) and np.all(np.isfinite(rec.residuals)) and np.all(rec.residuals > 0)
    assert rec.robot_iterates.shape == (25, h, 4) and rec.actions.shape == (h, 4)
    assert rec.iterations == 24 and not rec.converged and rec.num_iters == 24
    np.testing.assert_array_equal(rec.iterates[0], it.noise_chunk(pol, 3))
    # Robot space = the policy's output transforms: unnormalize the 4 real dims.
    np.testing.assert_allclose(rec.robot_iterates[7], rec.iterates[7, :, :4] * np.array([0.5, 0.5, 0.5, 0.9])
                               + np.array([0.0, 0.1, -0.1, 0.0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.actions, rec.robot_iterates[-1], rtol=1e-6)
    # The recorded residual is the solver's normalized residual of the field at the lookahead (real dims only).
    model_obs, _ = it.policy_model_inputs(pol, obs)
    assert model_obs.state.shape == (1, d_model)
    f = pol.decoder.field_fn(pol.params, model_obs)(rec.lookaheads[5][None])
    r5 = normalized_residual(f, pol.config.action_dim_mask())
    np.testing.assert_allclose(float(r5[0]), rec.residuals[5], rtol=1e-4)


@pytest.fixture(scope="module")
def contracting_policy(random_policy):
    """The same policy with the network's field replaced by a contracting one, f(A) = 20·(A − s₀) (s₀: first normalized
    state entry), so residuals fall geometrically and thresholds are crossed inside a short budget."""
    pol = it.policy_with_settings(random_policy, DecoderSettings())
    pol.decoder.field_fn = lambda params, obs, prefix=None: (lambda a: 20.0 * (a - obs.state[:, None, :1]))
    return pol


def test_full_trajectory_predicts_what_a_thresholded_solve_returns(contracting_policy):
    """Stopping only freezes a sample, so stop_points/returned_chunk on the ε = 0 trajectory give exactly the
    iteration count and the chunk of a solve with threshold ε — the premise of the analysis."""
    pol = contracting_policy
    obs = _metaworld_obs(np.random.default_rng(1))
    # The paper's slow step (η 0.003, μ 0.3): the residual falls geometrically over many iterations.
    settings = EqmDecodeSettings(threshold=0.0, max_iters=60, step_size=0.003, momentum=0.3, guard=False)
    full = it.record_solve(pol, obs, seed=5, settings=settings)
    r = full.residuals
    assert np.all(np.diff(r[5:]) < 0)
    k_star = 30
    eps = float(np.sqrt(r[k_star] * r[k_star - 1]))  # between r_29 and r_30 (geometric mean: far from both)
    assert it.stop_points(r, [eps])[eps] == k_star
    stopped = it.record_solve(pol, obs, seed=5, settings=dataclasses.replace(settings, threshold=eps))
    assert stopped.converged and stopped.iterations == k_star + 1
    np.testing.assert_allclose(stopped.residuals, r[: k_star + 1], rtol=1e-5)
    np.testing.assert_allclose(stopped.actions, it.returned_chunk(full, eps), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stopped.actions, full.actions, atol=1e-3)  # stopping early did change the chunk
    # ... and it is what the policy's own (non-recording) decode returns from the same initial iterate.
    model_obs, _ = it.policy_model_inputs(pol, obs)
    ds = pol.decoder.resolve(DecoderSettings(preset="paper", threshold=eps, max_iters=60))
    decode = pol.compiled_decode(pol.compiled_key(ds))
    actions, iters, _, _, _ = decode(pol.params, model_obs, jax.random.key(0), full.init[None], pol.decoder.traced(ds))
    assert int(iters[0]) == k_star + 1
    np.testing.assert_allclose(it.to_robot(pol, obs, np.asarray(actions[0])), stopped.actions, rtol=1e-5, atol=1e-6)


def test_warm_start_from_shifts_the_previous_chunk_in_model_space(random_policy):
    pol = random_policy
    rng = np.random.default_rng(2)
    obs = _metaworld_obs(rng)
    h, d_model = pol.config.action_horizon, pol.config.action_dim
    prev_model = rng.normal(size=(h, d_model)).astype(np.float32)
    prev_robot = it.to_robot(pol, obs, prev_model)
    noise = it.noise_chunk(pol, 9)
    init = it.warm_start_from(pol, obs, prev_robot, 4, noise)
    np.testing.assert_allclose(init[: h - 4, :4], prev_model[4:, :4], rtol=1e-4, atol=1e-5)
    assert np.all(init[: h - 4, 4:] == 0)  # robot space has no padded dims: the policy re-pads with zeros
    np.testing.assert_array_equal(init[h - 4:], noise[h - 4:])
    rec = it.record_solve(pol, obs, init=init, settings=SHORT)
    np.testing.assert_array_equal(rec.iterates[0], init)
    with pytest.raises(ValueError, match="shape"):
        it.record_solve(pol, obs, init=init[:-1], settings=SHORT)


def test_policy_with_settings_shares_params(random_policy):
    pol = it.policy_with_settings(random_policy, DecoderSettings(threshold=0.0, max_iters=5))
    assert pol.params is random_policy.params and pol.settings.max_iters == 5
    out = pol.infer(_metaworld_obs(np.random.default_rng(3)))
    assert out["actions"].shape == (random_policy.config.action_horizon, 4) and out["solver"]["iterations"] == 5
