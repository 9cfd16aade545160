"""EqM solver on known fields: sign convention, residual stopping, per-sample freezing, cap, warm start, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.decoders.config import SolverConfig
from pi0_eqm.decoders.eqm import eqm_weight
from pi0_eqm.decoders.solver import normalized_residual
from pi0_eqm.decoders.solver import solve
from pi0_eqm.decoders.warm_start import warm_start_init

H, D, D_REAL = 8, 6, 4
DIM_MASK = jnp.arange(D) < D_REAL


def ideal_field(target, lam=4.0, a=0.8):
    """The ideal EqM field around one datum A* in openpi's sign (points from data toward noise): λ/(1−a)·(A − A*)."""
    return lambda x: lam / (1 - a) * (x - target)


@pytest.fixture
def problem():
    target = jax.random.normal(jax.random.key(0), (4, H, D)) * (DIM_MASK.astype(jnp.float32))
    noise = jax.random.normal(jax.random.key(1), (4, H, D))
    return target, noise


@pytest.mark.parametrize("variant", ["nesterov", "eqm_nag", "gd"])
def test_solver_descends_to_the_data(problem, variant):
    target, noise = problem
    cfg = SolverConfig(variant=variant, threshold=1e-4, max_iters=600)
    res = solve(ideal_field(target), noise, cfg, DIM_MASK)
    assert bool(res.converged.all())
    np.testing.assert_allclose(np.asarray(res.actions), np.asarray(target), atol=1e-4)
    # The residual is the real-dim RMS of the field at the returned point, below ε.
    assert float(res.residual.max()) < 1e-4


def test_ascent_sign_would_diverge(problem):
    """Pin the sign: the field points away from the data, so following +f moves away from A*."""
    target, noise = problem
    f = ideal_field(target)
    x = noise + 0.003 * f(noise)
    assert float(jnp.linalg.norm(x - target)) > float(jnp.linalg.norm(noise - target))


def test_nesterov_is_faster_than_gd(problem):
    target, noise = problem
    iters = {}
    for variant in ("nesterov", "eqm_nag", "gd"):
        res = solve(ideal_field(target), noise, SolverConfig(variant=variant, threshold=1e-2), DIM_MASK)
        iters[variant] = float(res.iterations.mean())
    # eqm.md §6.4: standard NAG behaves like GD with step ≈ η/(1−μ); EqM-NAG ≈ GD.
    assert iters["nesterov"] < 0.8 * iters["gd"]
    assert abs(iters["eqm_nag"] - iters["gd"]) <= 3


def test_iterations_decrease_as_threshold_grows(problem):
    target, noise = problem
    counts = []
    for eps in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        res = solve(ideal_field(target), noise, SolverConfig(threshold=eps), DIM_MASK)
        counts.append(float(res.iterations.mean()))
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), counts


def test_cap_is_respected_and_never_threshold(problem):
    target, noise = problem
    res = solve(ideal_field(target), noise, SolverConfig(threshold=1e-6, max_iters=17), DIM_MASK)
    assert res.iterations.tolist() == [17] * 4
    assert not bool(res.converged.any())
    res = solve(ideal_field(target), noise, SolverConfig(threshold=0.0, max_iters=40), DIM_MASK)
    assert res.iterations.tolist() == [40] * 4  # threshold <= 0: never stops early


def test_batch_elements_stop_independently(problem):
    target, noise = problem
    # Sample 0 starts at its root, sample 1 close, samples 2-3 from noise.
    init = noise.at[0].set(target[0]).at[1].set(target[1] + 0.01)
    cfg = SolverConfig(threshold=1e-3, max_iters=300)
    res = solve(ideal_field(target), init, cfg, DIM_MASK, record=True)
    it = res.iterations.tolist()
    assert it[0] == 1  # converged at the first residual
    assert it[0] < it[1] < min(it[2], it[3])
    # Each sample alone takes exactly as many iterations as in the batch, and ends at the same point.
    for i in range(4):
        single = solve(ideal_field(target[i : i + 1]), init[i : i + 1], cfg, DIM_MASK)
        assert int(single.iterations[0]) == it[i]
        np.testing.assert_allclose(np.asarray(single.actions[0]), np.asarray(res.actions[i]), atol=1e-6)
    # Frozen samples do not move after they stop; residual trajectory is NaN after the stop.
    traj = np.asarray(res.iterates)
    assert np.all(traj[it[0] :, 0] == traj[-1, 0])
    assert np.isnan(np.asarray(res.residuals)[it[0] :, 0]).all()
    assert not np.isnan(np.asarray(res.residuals)[: it[3], 3]).any()


def test_residual_excludes_padded_dims():
    f = jnp.zeros((1, H, D)).at[..., D_REAL:].set(100.0).at[..., :D_REAL].set(2.0)
    assert float(normalized_residual(f, DIM_MASK)[0]) == pytest.approx(2.0)
    assert float(normalized_residual(f, None)[0]) > 50
    cfg_all = SolverConfig(residual_dims="all", threshold=1.0, max_iters=3)
    res = solve(lambda x: f, jnp.zeros((1, H, D)), cfg_all, DIM_MASK)
    assert float(res.residual[0]) > 50


def test_record_matches_default_path(problem):
    target, noise = problem
    cfg = SolverConfig(threshold=1e-3)
    plain = solve(ideal_field(target), noise, cfg, DIM_MASK)
    rec = solve(ideal_field(target), noise, cfg, DIM_MASK, record=True)
    np.testing.assert_array_equal(np.asarray(plain.actions), np.asarray(rec.actions))
    np.testing.assert_array_equal(np.asarray(plain.iterations), np.asarray(rec.iterations))
    assert rec.iterates.shape == (cfg.max_iters + 1, 4, H, D)
    np.testing.assert_array_equal(np.asarray(rec.iterates[0]), np.asarray(noise))
    # Recorded residuals are the residuals of the recorded lookaheads.
    k = 5
    r = normalized_residual(ideal_field(target)(rec.lookaheads[k]), DIM_MASK)
    np.testing.assert_allclose(np.asarray(r), np.asarray(rec.residuals[k]), rtol=1e-5)


def test_dynamic_settings_share_one_compilation(problem):
    target, noise = problem
    cfg = SolverConfig()
    fn = jax.jit(lambda eps, k: solve(ideal_field(target), noise, cfg, DIM_MASK, threshold=eps, max_iters=k).iterations)
    a = fn(1e-1, 300)
    b = fn(1e-3, 300)
    c = fn(1e-3, 20)
    assert float(a.mean()) < float(b.mean())
    assert c.tolist() == [20] * 4
    assert fn._cache_size() == 1


def test_bad_solver_config():
    with pytest.raises(ValueError, match="variant"):
        SolverConfig(variant="adam")
    with pytest.raises(ValueError, match="momentum"):
        SolverConfig(momentum=1.5)


def test_eqm_weight():
    g = jnp.array([0.0, 0.5, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(np.asarray(eqm_weight(g, 4.0, 0.8)), [4.0, 4.0, 4.0, 2.0, 0.0], atol=1e-5)


# ----------------------------------------------------------------------------------------------- warm start
def test_warm_start_aligned_and_paper_rules():
    prev = jnp.arange(H, dtype=jnp.float32)[None, :, None] * jnp.ones((2, H, D))
    noise = -jnp.ones((2, H, D))
    init = warm_start_init(prev, jnp.array([2, 5]), noise, "aligned")
    assert init[0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, -1, -1]
    assert init[1, :, 0].tolist() == [5, 6, 7, -1, -1, -1, -1, -1]
    init = warm_start_init(prev, 2, noise, "aligned", max_reuse=3)
    assert init[0, :, 0].tolist() == [2, 3, 4, -1, -1, -1, -1, -1]
    init = warm_start_init(prev, 2, noise, "paper_half")
    assert init[0, :, 0].tolist() == [4, 5, 6, 7, -1, -1, -1, -1]
    assert (warm_start_init(prev, 2, noise, "off") == noise).all()
    assert (warm_start_init(None, 2, noise, "aligned") == noise).all()
    with pytest.raises(ValueError, match="warm start mode"):
        warm_start_init(prev, 2, noise, "half")


def test_aligned_warm_start_needs_fewer_iterations():
    """A converged previous chunk, shifted by the executed actions, starts the solver close to the new root."""
    # A smooth "trajectory" datum whose next chunk is the previous one shifted by s.
    s = 3
    t = jnp.arange(H + s, dtype=jnp.float32)
    traj = jnp.stack([jnp.sin(0.3 * t + i) for i in range(D)], axis=-1) * DIM_MASK
    prev_target, new_target = traj[None, :H], traj[None, s : s + H]
    cfg = SolverConfig(threshold=1e-2)
    prev = solve(ideal_field(prev_target), jax.random.normal(jax.random.key(0), (1, H, D)), cfg, DIM_MASK)
    assert bool(prev.converged.all())
    noise = jax.random.normal(jax.random.key(1), (1, H, D))
    iters = {}
    for mode in ("off", "paper_half", "aligned"):
        init = warm_start_init(prev.actions, s, noise, mode)
        iters[mode] = int(solve(ideal_field(new_target), init, cfg, DIM_MASK).iterations[0])
    assert iters["aligned"] < iters["off"]
    assert iters["aligned"] <= iters["paper_half"]
