"""Simulator-backed helpers: the expert's next actions by replay, and closed-loop recording on a real env."""

import jax
import numpy as np
from pi0_eqm_experiments.analysis import iterates as it
import pytest

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.decoders.eqm import EqmDecodeSettings
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.training.config import get_config

pytestmark = pytest.mark.sim

mw = pytest.importorskip("pi0_eqm.envs.metaworld")
TASK = "drawer-open-v3"


def _expert_rollout(task, seed, episode, steps):
    with mw.MetaWorldEnv(task, seed=seed) as env:
        env.reset(episode)
        expert = mw.ScriptedExpert(task)
        actions = []
        for _ in range(steps):
            a = expert.action(env.raw_obs)
            actions.append(a)
            env.step(a, render=False)
    return np.stack(actions)


def test_expert_chunk_replays_the_history():
    ref = _expert_rollout(TASK, 7, 2, 12)
    with mw.MetaWorldEnv(TASK, seed=7) as scratch:
        np.testing.assert_array_equal(it.expert_chunk(scratch, 2, [], 5), ref[:5])
        # After replaying 4 executed actions the expert continues from the same state.
        np.testing.assert_allclose(it.expert_chunk(scratch, 2, ref[:4], 8), ref[4:12], atol=1e-6)
        # A different history leads elsewhere.
        other = it.expert_chunk(scratch, 2, np.zeros((4, 4), np.float32), 8)
        assert not np.allclose(other, ref[4:12])
        with pytest.raises(ValueError, match="max_steps"):
            it.expert_chunk(scratch, 2, np.zeros((scratch.max_steps - 2, 4)), 5)


def test_closed_loop_records_on_a_real_env():
    cfg = get_config("pi0_eqm_metaworld")
    stats = {"state": NormStats(mean=np.full(4, 0.3), std=np.full(4, 0.2)),
             "actions": NormStats(mean=np.zeros(4), std=np.full(4, 0.3))}
    policy = policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats)
    settings = EqmDecodeSettings(threshold=0.0, max_iters=16)
    with mw.MetaWorldEnv(TASK, seed=1000, max_steps=40) as env, mw.MetaWorldEnv(TASK, seed=1000, max_steps=40) as sc:
        reps = it.closed_loop_records(policy, env, 0, replan_every=6, num_chunks=3, eps=1e-2, scratch_env=sc,
                                      settings=settings)
    assert [r.step for r in reps] == [0, 6, 12]
    assert reps[0].warm is None and all(r.warm is not None for r in reps[1:])
    for prev, rep in zip(reps[:-1], reps[1:], strict=True):
        # The warm init reuses the previous executed chunk shifted by 6 (real dims, model space) and the cold
        # solve's noise after it.
        np.testing.assert_array_equal(rep.warm.init[10:], rep.cold.init[10:])
        prev_chunk = it.returned_chunk(prev.warm or prev.cold, 1e-2, cap=10)
        np.testing.assert_allclose(it.to_robot(policy, rep.obs, rep.warm.init[:10]), prev_chunk[6:], atol=1e-5)
        np.testing.assert_allclose(rep.history, np.concatenate([prev.history, prev.executed]))
    for rep in reps:
        assert rep.executed.shape == (6, 4) and rep.expert.shape == (16, 4)
        np.testing.assert_allclose(rep.executed, it.returned_chunk(rep.warm or rep.cold, 1e-2, cap=10)[:6])
        assert rep.cold.num_iters == 16  # recorded past the policy's 10-forward cap, executed at the cap
    # Expert chunks come from the state the policy actually reached.
    with mw.MetaWorldEnv(TASK, seed=1000, max_steps=40) as sc:
        np.testing.assert_allclose(reps[2].expert, it.expert_chunk(sc, 0, reps[2].history, 16))
