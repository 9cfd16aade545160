"""EqM solver on known fields: sign convention, residual stopping, per-sample freezing, cap, warm start, variants,
the Barzilai–Borwein step, the step guard and traced settings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.decoders.eqm import eqm_weight
from pi0_eqm.decoders.solver import normalized_residual
from pi0_eqm.decoders.solver import solve
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.models.decoder_config import SOLVER_PRESETS
from pi0_eqm.models.decoder_config import SolverConfig
from pi0_eqm.models.decoder_config import solver_preset

H, D, D_REAL = 8, 6, 4
DIM_MASK = jnp.arange(D) < D_REAL


def ideal_field(target, lam=4.0, a=0.8):
    """The ideal EqM field around one datum A* in openpi's sign (points from data toward noise): λ/(1−a)·(A − A*)."""
    return lambda x: lam / (1 - a) * (x - target)


def paper(**kw) -> SolverConfig:
    """The EqM paper's slow setting (η 0.003, μ 0.3, ≤ 300): many iterations, so counts can be compared."""
    return dataclasses.replace(SOLVER_PRESETS["paper"], **kw)


@pytest.fixture
def problem():
    target = jax.random.normal(jax.random.key(0), (4, H, D)) * (DIM_MASK.astype(jnp.float32))
    noise = jax.random.normal(jax.random.key(1), (4, H, D))
    return target, noise


@pytest.mark.parametrize("variant", ["nesterov", "eqm_nag", "gd", "bb"])
def test_solver_descends_to_the_data(problem, variant):
    target, noise = problem
    cfg = paper(variant=variant, threshold=1e-4, max_iters=600)
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
        res = solve(ideal_field(target), noise, paper(variant=variant, threshold=1e-2), DIM_MASK)
        iters[variant] = float(res.iterations.mean())
    # standard NAG behaves like GD with step ≈ η/(1−μ) on a quadratic; EqM-NAG (steps from A) ≈ GD.
    assert iters["nesterov"] < 0.8 * iters["gd"]
    assert abs(iters["eqm_nag"] - iters["gd"]) <= 3


def test_iterations_decrease_as_threshold_grows(problem):
    target, noise = problem
    counts = []
    for eps in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        res = solve(ideal_field(target), noise, paper(threshold=eps), DIM_MASK)
        counts.append(float(res.iterations.mean()))
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), counts


def test_cap_is_respected_and_never_threshold(problem):
    target, noise = problem
    res = solve(ideal_field(target), noise, paper(threshold=1e-6, max_iters=17), DIM_MASK)
    assert res.iterations.tolist() == [17] * 4
    assert not bool(res.converged.any())
    res = solve(ideal_field(target), noise, paper(threshold=0.0, max_iters=40), DIM_MASK)
    assert res.iterations.tolist() == [40] * 4  # threshold <= 0: never stops early


@pytest.mark.parametrize("variant", ["nesterov", "bb"])
def test_batch_elements_stop_independently(problem, variant):
    target, noise = problem
    # Sample 0 starts at its root, sample 1 close, samples 2-3 from noise.
    init = noise.at[0].set(target[0]).at[1].set(target[1] + 0.01)
    cfg = paper(threshold=1e-3, max_iters=300, variant=variant)
    res = solve(ideal_field(target), init, cfg, DIM_MASK, record=True)
    it = res.iterations.tolist()
    assert it[0] == 1  # converged at the first residual
    assert it[0] < it[1] <= min(it[2], it[3])
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
    assert it[0] < it[1] < min(it[2], it[3]) or variant == "bb"  # BB may solve a linear field in 2 steps from anywhere


def test_residual_excludes_padded_dims():
    f = jnp.zeros((1, H, D)).at[..., D_REAL:].set(100.0).at[..., :D_REAL].set(2.0)
    assert float(normalized_residual(f, DIM_MASK)[0]) == pytest.approx(2.0)
    assert float(normalized_residual(f, None)[0]) > 50
    cfg_all = paper(residual_dims="all", threshold=1.0, max_iters=3)
    res = solve(lambda x: f, jnp.zeros((1, H, D)), cfg_all, DIM_MASK)
    assert float(res.residual[0]) > 50


def test_record_matches_default_path(problem):
    target, noise = problem
    cfg = paper(threshold=1e-3)
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
    """ε, the cap, η, μ and the guard are traced: one compilation serves every value."""
    target, noise = problem
    cfg = SolverConfig()

    def run(eps, k, eta, mu, guard):
        return solve(ideal_field(target), noise, cfg, DIM_MASK, threshold=eps, max_iters=k, step_size=eta,
                     momentum=mu, guard=guard).iterations

    fn = jax.jit(run)
    a = fn(1e-1, 300, 0.003, 0.3, False)
    b = fn(1e-3, 300, 0.003, 0.3, False)
    c = fn(1e-3, 20, 0.003, 0.3, True)
    d = fn(1e-3, 300, 0.05, 0.5, True)
    assert float(a.mean()) < float(b.mean())
    assert c.tolist() == [20] * 4
    assert float(d.mean()) < 0.2 * float(b.mean())  # a larger step on the same field: far fewer iterations
    assert fn._cache_size() == 1


# ----------------------------------------------------------------------------------------------- new solver
def test_action_defaults_on_the_ideal_field(problem):
    """The defaults (η 0.03, μ 0.3, ≤ 10 forwards, no guard) reach ε = 1e-2 on the ideal field λ/(1−a) = 20 (the
    trained model's λ_max is 22–25) within the budget, where the paper's step is still far from the root."""
    target, noise = problem
    res = solve(ideal_field(target), noise, SolverConfig(), DIM_MASK)
    assert bool(res.converged.all()) and int(res.iterations.max()) <= 10
    np.testing.assert_allclose(np.asarray(res.actions), np.asarray(target), atol=2e-2)
    slow = solve(ideal_field(target), noise, dataclasses.replace(solver_preset("paper"), max_iters=10), DIM_MASK)
    assert float(slow.residual.min()) > 100 * float(res.residual.max())


def test_bb_step_is_the_inverse_rayleigh_quotient_on_a_quadratic():
    """f(A) = Λ (A − A*) with a diagonal Λ (stiffness 1..50): after the first step α_0 = η, BB's step is
    sᵀs / sᵀΛs for s = −η f(A_0), computed per sample, clipped to [bb_min_step, bb_max_step]."""
    rng = np.random.default_rng(0)
    lam = np.linspace(1.0, 50.0, H * D).reshape(H, D).astype(np.float32)
    target = rng.normal(size=(3, H, D)).astype(np.float32)
    init = rng.normal(size=(3, H, D)).astype(np.float32)
    init[2] = target[2] + 1e-2 * (lam == lam.max())  # only the stiffest mode: α_1 = 1/50
    field = lambda x: jnp.asarray(lam) * (x - jnp.asarray(target))
    cfg = SolverConfig(variant="bb", step_size=0.01, threshold=0.0, max_iters=2, residual_dims="all")
    res = solve(field, jnp.asarray(init), cfg)
    s = -0.01 * lam * (init - target)
    expected = np.clip(np.sum(s * s, axis=(1, 2)) / np.sum(s * lam * s, axis=(1, 2)), 1e-3, 0.3)
    np.testing.assert_allclose(np.asarray(res.step), expected, rtol=1e-4)
    assert float(res.step[2]) == pytest.approx(1 / 50, rel=1e-4)
    # And BB solves the ill-conditioned quadratic far faster than GD at its largest stable step (η < 2/50).
    bb = solve(field, jnp.asarray(init), SolverConfig(variant="bb", threshold=1e-3, max_iters=500, residual_dims="all"))
    gd = solve(field, jnp.asarray(init), SolverConfig(variant="gd", step_size=0.039, threshold=1e-3, max_iters=500,
                                                      guard=False, residual_dims="all"))
    assert bool(bb.converged.all()) and bool(gd.converged.all())
    assert float(bb.iterations.mean()) < 0.5 * float(gd.iterations.mean())


def test_bb_steps_are_per_sample():
    """Two samples of different stiffness in one batch get their own BB step (1/λ on a scalar-stiffness field)."""
    lam = jnp.array([2.0, 40.0])[:, None, None]
    target = jnp.zeros((2, H, D))
    noise = jax.random.normal(jax.random.key(3), (2, H, D))
    res = solve(lambda x: lam * (x - target), noise, SolverConfig(variant="bb", threshold=0.0, max_iters=2))
    np.testing.assert_allclose(np.asarray(res.step), [0.3, 1 / 40], rtol=1e-4)  # 1/2 clipped to bb_max_step 0.3


def test_guard_rescues_a_step_too_large_for_the_field(problem):
    """η = 0.05 on a field of stiffness 100 (η·λ = 5 > 2) diverges without the guard; with it, each residual
    increase halves the sample's step until it is stable, at no extra forward."""
    target, noise = problem
    stiff = lambda x: 100.0 * (x - target)
    off = solve(stiff, noise, SolverConfig(guard=False, step_size=0.05, momentum=0.5, max_iters=40, threshold=1e-3),
                DIM_MASK)
    on = solve(stiff, noise, SolverConfig(guard=True, step_size=0.05, momentum=0.5, max_iters=40, threshold=1e-3),
               DIM_MASK)
    assert not bool(off.converged.any())
    assert not np.all(np.isfinite(np.asarray(off.residual))) or float(off.residual.min()) > 1e3
    assert bool(on.converged.all())
    assert np.all(np.asarray(on.step) < 2 / 100)  # shrunk below the stability limit
    np.testing.assert_allclose(np.asarray(on.actions), np.asarray(target), atol=1e-3)


def test_guard_is_inert_when_the_residual_falls(problem):
    """GD with η·λ < 1 on a linear field has a monotone residual: the guard never fires and changes nothing."""
    target, noise = problem
    kw = dict(variant="gd", step_size=0.02, threshold=1e-3, max_iters=100)
    on = solve(ideal_field(target), noise, SolverConfig(guard=True, **kw), DIM_MASK)
    off = solve(ideal_field(target), noise, SolverConfig(guard=False, **kw), DIM_MASK)
    np.testing.assert_array_equal(np.asarray(on.actions), np.asarray(off.actions))
    np.testing.assert_array_equal(np.asarray(on.iterations), np.asarray(off.iterations))
    np.testing.assert_allclose(np.asarray(on.step), 0.02)


def test_guard_costs_a_stable_momentum_run_little(problem):
    """Nesterov's residual oscillates on a stable step (η·λ = 0.4, μ = 0.5): the guard then halves η on each rise —
    the price of a rule that needs no forward beyond the step's — and still converges in ≤ 1.5× the iterations."""
    target, noise = problem
    kw = dict(step_size=0.02, momentum=0.5, threshold=1e-3, max_iters=300)
    on = solve(ideal_field(target), noise, SolverConfig(guard=True, **kw), DIM_MASK)
    off = solve(ideal_field(target), noise, SolverConfig(guard=False, **kw), DIM_MASK)
    assert bool(on.converged.all()) and bool(off.converged.all())
    assert int(on.iterations.max()) <= 1.5 * int(off.iterations.min())
    assert np.all(np.asarray(on.step) < 0.02)


def test_presets():
    assert solver_preset("action") == SolverConfig()
    p = solver_preset("paper")
    assert (p.variant, p.step_size, p.momentum, p.max_iters, p.guard) == ("nesterov", 0.003, 0.3, 300, False)
    assert solver_preset("bb").variant == "bb"
    with pytest.raises(ValueError, match="solver preset must be one of .*action.*got 'fast'"):
        solver_preset("fast")


def test_bad_solver_config():
    with pytest.raises(ValueError, match="variant"):
        SolverConfig(variant="adam")
    with pytest.raises(ValueError, match=r"momentum \(μ\) must be in \[0, 1\), got 1.5"):
        SolverConfig(momentum=1.5)
    with pytest.raises(ValueError, match=r"momentum \(μ\) must be in \[0, 1\), got 1"):
        SolverConfig(momentum=1.0)
    with pytest.raises(ValueError, match=r"step_size \(η\) must be > 0, got 0"):
        SolverConfig(step_size=0.0)
    with pytest.raises(ValueError, match="step_size must be a finite number"):
        SolverConfig(step_size=float("nan"))
    with pytest.raises(ValueError, match="max_iters"):
        SolverConfig(max_iters=0)
    with pytest.raises(ValueError, match="bb_min_step"):
        SolverConfig(bb_min_step=0.5, bb_max_step=0.1)


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
    cfg = paper(threshold=1e-2)
    prev = solve(ideal_field(prev_target), jax.random.normal(jax.random.key(0), (1, H, D)), cfg, DIM_MASK)
    assert bool(prev.converged.all())
    noise = jax.random.normal(jax.random.key(1), (1, H, D))
    iters = {}
    for mode in ("off", "paper_half", "aligned"):
        init = warm_start_init(prev.actions, s, noise, mode)
        iters[mode] = int(solve(ideal_field(new_target), init, cfg, DIM_MASK).iterations[0])
    assert iters["aligned"] < iters["off"]
    assert iters["aligned"] <= iters["paper_half"]
