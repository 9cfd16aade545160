"""Policy stages, per-session RNG, caps, non-finite guards, new-episode detection and batched decoding, on a real
(tiny) LIBERO-config checkpoint written to disk."""

import time

import jax
import numpy as np
import pytest

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy import RequestCaps
from pi0_eqm.policies.policy_config import create_trained_policy
from tests.policies.conftest import libero_obs

WARM = DecoderSettings(max_iters=8, executed=2, warm_start="aligned")
NO_DETECTION = EpisodeDetection(prompt_change=False, gap_s=None, state_jump=None)


def obs_seq(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = libero_obs(rng)
    out = []
    for i in range(n):  # a smooth trajectory: the state moves a little per request
        o = dict(base)
        o["observation/state"] = (base["observation/state"] + 0.01 * i).astype(np.float32)
        out.append(o)
    return out


def test_stages_compose_to_infer(trained_libero):
    cfg, step_dir = trained_libero
    a = create_trained_policy(cfg, step_dir, settings=WARM)
    b = create_trained_policy(cfg, step_dir, settings=WARM)
    for o in obs_seq(0, 3):
        req = b.initial_chunk(b.prepare(o, "s"))
        assert req.init.shape == (cfg.model.action_horizon, cfg.model.action_dim)
        staged = b.robot_actions(req, b.decode([req])[0])
        direct = a.infer(o, session="s")
        np.testing.assert_array_equal(staged["actions"], direct["actions"])
        assert staged["solver"]["warm_started"] == direct["solver"]["warm_started"]


def test_session_rng_does_not_depend_on_other_sessions(trained_libero):
    cfg, step_dir = trained_libero
    obs = obs_seq(1, 3)
    alone = create_trained_policy(cfg, step_dir)
    mixed = create_trained_policy(cfg, step_dir)
    ref = [alone.infer(o, session="a")["actions"] for o in obs]
    got = []
    for o in obs:
        mixed.infer(o, session="b")  # other traffic in between
        got.append(mixed.infer(o, session="a")["actions"])
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(r, g)
    assert not np.allclose(mixed.infer(obs[0], session="c")["actions"], ref[0])  # another session, other noise


def test_batched_results_equal_unbatched_per_session(trained_libero):
    """Three sessions decoded together (batch padded to 4) give each session what it gets alone: same noise stream,
    same warm starts, same iterations; actions equal to float32 round-off."""
    cfg, step_dir = trained_libero
    sessions = {f"s{i}": obs_seq(10 + i, 3) for i in range(3)}
    single = create_trained_policy(cfg, step_dir, settings=WARM)
    batched = create_trained_policy(cfg, step_dir, settings=WARM)
    single.episodes = batched.episodes = NO_DETECTION
    for step in range(3):
        outs = batched.infer_batch([(seq[step], s) for s, seq in sessions.items()])
        for (s, seq), out in zip(sessions.items(), outs, strict=True):
            ref = single.infer(seq[step], session=s)
            assert out["policy_timing"]["batch_size"] == 3 and ref["policy_timing"]["batch_size"] == 1
            assert out["solver"]["warm_started"] == ref["solver"]["warm_started"] == (step > 0)
            assert out["solver"]["iterations"] == ref["solver"]["iterations"]
            np.testing.assert_allclose(out["actions"], ref["actions"], rtol=1e-4, atol=1e-5)
    # One compiled decode per batch size used (1 and the padded 4), every setting traced.
    key = ((("variant", "nesterov"),), False)  # (Policy.compiled_key of the default variant, no prefix)
    assert list(batched._decode_cache) == [key] and batched._decode_cache[key]._cache_size() == 1
    assert single._decode_cache[key]._cache_size() == 1
    outs = batched.infer_batch([(sessions["s0"][0], "x"), (sessions["s1"][0], "y")])
    assert batched._decode_cache[key]._cache_size() == 2


def test_batch_with_mixed_settings_and_a_bad_request(trained_libero):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    o = obs_seq(2, 1)[0]
    outs = policy.infer_batch([({**o, "decoder_settings": {"max_iters": 3, "threshold": 0.0}}, "a"),
                               ({**o, "decoder_settings": {"max_iters": 5, "threshold": 0.0}}, "b"),
                               ({**o, "decoder_settings": {"executed": 10**12}}, "c"), (o, "d")])
    assert outs[0]["solver"]["iterations"] == 3 and outs[1]["solver"]["iterations"] == 5
    assert isinstance(outs[2], InvalidRequestError) and "executed must be an int" in str(outs[2])
    assert outs[3]["actions"].shape == (cfg.model.action_horizon, 7)


@pytest.mark.parametrize("bad, message", [
    ({"executed": 10**12}, "executed must be an int in"),
    ({"max_reuse": "foo"}, "max_reuse must be an int in"),
    ({"threshold": np.arange(3.0)}, "expected one value, got an array of shape"),
    ({"max_iters": [1, 2]}, "expected one value, got a list"),
])
def test_client_mistakes_in_settings_are_invalid_requests(trained_libero, bad, message):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    with pytest.raises(InvalidRequestError, match=message):
        policy.infer({**obs_seq(3, 1)[0], "decoder_settings": bad})


def test_request_caps_bound_the_budget(trained_libero):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    policy.set_caps(RequestCaps(max_iters=20, min_threshold=1e-4))
    o = obs_seq(4, 1)[0]
    with pytest.raises(InvalidRequestError, match="max_iters 10000 is above this server's per-request cap of 20"):
        policy.infer({**o, "decoder_settings": {"max_iters": 10_000}})
    with pytest.raises(InvalidRequestError, match="max_iters 300 is above"):  # the preset's cap counts too
        policy.infer({**o, "decoder_settings": {"preset": "paper"}})
    with pytest.raises(InvalidRequestError, match="threshold 0.0 is below this server's lower bound of 0.0001"):
        policy.infer({**o, "decoder_settings": {"threshold": 0.0}})
    assert policy.infer({**o, "decoder_settings": {"max_iters": 20}})["solver"]["iterations"] <= 20
    with pytest.raises(ValueError, match="default decoder settings break its caps"):
        create_trained_policy(cfg, step_dir, settings=DecoderSettings(max_iters=50)).set_caps(RequestCaps(20))


def test_huge_state_and_non_finite_chunks_never_reach_the_client_or_the_warm_start(trained_libero):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=WARM)
    o = obs_seq(5, 1)[0]
    with pytest.raises(InvalidRequestError, match="normalises to non-finite"):
        policy.infer({**o, "observation/state": np.full(8, 1e300)}, session="s")  # no schema in front
    out = policy.infer(o, session="s")
    assert np.all(np.isfinite(out["actions"])) and out["solver"]["warm_started"] is False
    good = policy.params
    policy.params = jax.tree.map(lambda x: x * np.nan, good)  # a model that returns NaN
    with pytest.raises(InvalidRequestError, match="non-finite action value"):
        policy.infer(o, session="s")
    assert policy._sessions["s"].prev_actions is None  # the NaN chunk did not become the warm start
    policy.params = good
    out = policy.infer(o, session="s")
    assert np.all(np.isfinite(out["actions"])) and out["solver"]["warm_started"] is False


def test_new_episode_detection(trained_libero):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=WARM)
    policy.episodes = EpisodeDetection(gap_s=0.5, gap_factor=None, state_jump=3.0)
    seq = obs_seq(6, 3)
    solver = lambda o: policy.infer(o, session="s")["solver"]  # noqa: E731
    assert solver(seq[0])["new_episode"] == ""
    assert solver(seq[1])["warm_started"] is True  # a small step: same episode
    s = solver({**seq[2], "prompt": "another task"})
    assert s["new_episode"] == "prompt" and s["warm_started"] is False
    jumped = {**seq[2], "prompt": "another task", "observation/state": seq[2]["observation/state"] + 50.0}
    s = solver(jumped)
    assert s["new_episode"] == "state" and s["warm_started"] is False
    assert solver(jumped)["warm_started"] is True
    time.sleep(0.6)
    s = solver(jumped)
    assert s["new_episode"] == "gap" and s["warm_started"] is False
    meta = policy.serving_metadata()
    assert meta["executed_actions_per_chunk"] == 2 and meta["warm_start"] == "aligned"
    assert meta["new_episode_detection"] == {"prompt_change": True, "gap_s": 0.5, "gap_factor": None,
                                             "gap_min_s": 0.25, "state_jump": 3.0}


def test_gap_relative_to_the_sessions_own_pace():
    """A gap counts when it is far longer than this session's usual one (the LIBERO loop's reset: 7-16x), so the
    detection does not depend on how fast the machine steps the simulator."""
    d = EpisodeDetection()
    common = {"prev_prompt": "p", "prompt": "p", "prev_state": None, "state": np.zeros(8), "prev_time": 0.0}
    assert d.reason(**common, now=0.8, recent_gaps=[0.6, 0.55, 0.6]) is None  # 1.4x the usual
    assert d.reason(**common, now=4.1, recent_gaps=[0.6, 0.55, 0.6]) == "gap"  # 7x
    assert d.reason(**common, now=4.1, recent_gaps=[0.6, 0.55]) is None  # too few gaps known, under gap_s
    assert d.reason(**common, now=0.2, recent_gaps=[0.01] * 5) is None  # back-to-back clients: under gap_min_s
    assert d.reason(**common, now=10.5, recent_gaps=[]) == "gap"  # the absolute bound
    assert d.reason(**{**common, "prompt": "q"}, now=0.1) == "prompt"


def test_short_episodes_are_seen_at_a_fast_machines_pace(trained_libero, monkeypatch):
    """A fast machine: steps 20 ms apart, resets 0.5 s. The session's pace carries over episodes, so the start after
    an episode of 1 or 2 requests is a "gap" (it was missed: each episode began with no known gaps, and 0.5 s is
    under the 10 s absolute bound). The clock is the policy's ``time.monotonic``, driven here."""
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(max_iters=2))
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    seen = []
    obs = obs_seq(11, 1)[0]
    for length in (5, 1, 2, 3):
        for step in range(length):
            clock[0] += 0.02 if step else 0.5  # a step, or an environment reset
            seen.append(policy.infer(obs, session="fast")["solver"]["new_episode"])
    starts = [i for i, s in enumerate(seen) if s]
    assert starts == [5, 6, 8] and {seen[i] for i in starts} == {"gap"}, seen  # the first episode's start: no history
    # an explicit reset keeps the pace as well
    policy.reset("fast")
    clock[0] += 0.5
    assert policy.infer(obs, session="fast")["solver"]["new_episode"] == ""  # the reset said it
    clock[0] += 0.5
    assert policy.infer(obs, session="fast")["solver"]["new_episode"] == "gap"
