"""Real-time chunking through the Policy and the server on a real trained LIBERO checkpoint (delta actions): the
committed rows come back as sent (EqM clamps them in model space; robot space to float32 round-off), one compiled
decode serves every delay, a prefix never crosses an episode boundary, bad prefixes are error frames, and the
metadata frame declares what the checkpoint supports."""

import dataclasses
import time

import numpy as np
import pytest

from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.robots import LIBERO
from pi0_eqm.serving.client import WebsocketClientPolicy
from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY
from pi0_eqm.serving.realtime import AsyncChunkBroker
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.training.params_io import restore_params
from tests.policies.conftest import libero_obs


@pytest.fixture(scope="module")
def policy(trained_libero):
    cfg, step_dir = trained_libero
    pol = create_trained_policy(cfg, step_dir, settings=DecoderSettings(executed=4))
    pol.episodes = EpisodeDetection(state_jump=None, gap_s=None, gap_factor=None)
    return pol


def test_committed_rows_come_back_as_sent_and_one_compile_serves_every_delay(policy):
    rng = np.random.default_rng(0)
    obs = libero_obs(rng)
    first = policy.infer(dict(obs))["actions"]  # robot units, absolute (delta undone)
    for d in (1, 2, 3):
        committed = first[4:4 + d]
        out = policy.infer({**obs, COMMITTED_KEY: committed, OVERLAP_KEY: first[4 + d:]})
        np.testing.assert_allclose(out["actions"][:d], committed, atol=1e-5)  # float32 normalize/delta round trip
        assert out["solver"]["prefix_rows"] == d and out["solver"]["prefix_method"] == "inpaint"
    assert policy._decode_cache[((("variant", "nesterov"),), True)]._cache_size() == 1  # the delay is data, not a compile


def test_model_space_prefix_is_the_warm_start_transform(policy):
    rng = np.random.default_rng(1)
    obs = libero_obs(rng)
    committed = rng.uniform(-1, 1, (2, 7)).astype(np.float32)
    req = policy.prepare({**obs, COMMITTED_KEY: committed})
    expected = policy.action_transform({"state": req.raw_state, "actions": committed})["actions"]
    np.testing.assert_array_equal(req.prefix[0][:2, : expected.shape[-1]], expected)
    np.testing.assert_array_equal(req.prefix[1][:2], [1.0, 1.0])
    assert req.prefix_rows == 2 and not req.prefix[1][2:].any()


@pytest.mark.parametrize("extra, message", [
    ({COMMITTED_KEY: np.zeros((2, 6), np.float32)}, "[rows, 7]"),
    ({COMMITTED_KEY: np.zeros((0, 7), np.float32)}, "free row"),
    ({COMMITTED_KEY: np.zeros((5, 7), np.float32), OVERLAP_KEY: np.zeros((10, 7), np.float32)}, "free row"),
    ({COMMITTED_KEY: np.full((2, 7), np.nan, np.float32)}, "non-finite"),
    ({OVERLAP_KEY: np.zeros((2, 7), np.float32)}, "needs committed_actions"),
])
def test_bad_prefixes_are_clear_errors(policy, extra, message):
    obs = libero_obs(np.random.default_rng(2))
    with pytest.raises(InvalidRequestError) as e:
        policy.infer({**obs, **extra})
    assert message in str(e.value)


def test_a_prefix_never_crosses_an_episode_boundary(policy):
    rng = np.random.default_rng(3)
    obs = libero_obs(rng)
    policy.infer(dict(obs), session="s")
    out = policy.infer({**obs, "prompt": "another task", COMMITTED_KEY: np.zeros((2, 7), np.float32)}, session="s")
    assert out["solver"]["new_episode"] == "prompt" and out["solver"]["prefix_rows"] == 0


def test_server_validates_and_serves_prefixes(policy):
    server = PolicyServer(policy, host="127.0.0.1", port=0, schema=LIBERO.schema(), metadata=policy.serving_metadata())
    port = server.start()
    try:
        with WebsocketClientPolicy(port=port) as client:
            meta = client.get_server_metadata()
            assert meta["realtime"]["prefix_method"] == "inpaint" and meta["realtime"]["max_delay"] >= 1
            obs = libero_obs(np.random.default_rng(4))
            chunk = client.infer(dict(obs))["actions"]
            with pytest.raises(RuntimeError, match="committed_actions"):
                client.infer({**obs, COMMITTED_KEY: np.zeros((2, 3), np.float32)})  # schema: wrong width
            with pytest.raises(RuntimeError, match="committed_actions"):
                client.infer({**obs, COMMITTED_KEY: np.full((2, 7), np.inf, np.float32)})
            out = client.infer({**obs, COMMITTED_KEY: chunk[4:6]})  # the connection keeps serving
            np.testing.assert_allclose(out["actions"][:2], chunk[4:6], atol=1e-5)
    finally:
        server.stop()


def test_a_prefix_trained_checkpoint_declares_and_enforces_its_max_delay(trained_libero):
    """The same params served as a flow decoder trained with committed prefixes of up to 3 rows (the parameter tree is
    π₀'s either way): the metadata frame says so, 3 committed rows come back as sent with no VJPs, 4 are an error
    frame naming the limit, and the async broker sends at most the declared rows."""
    cfg, step_dir = trained_libero
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=FlowConfig(max_delay=3)))
    pol = policy_from_params(cfg, restore_params(step_dir / "params"),
                             load_norm_stats(step_dir / "assets" / cfg.data.asset_id))
    pol.episodes = EpisodeDetection(state_jump=None, gap_s=None, gap_factor=None)
    assert pol.serving_metadata()["realtime"] == {"prefix_method": "rtc_trained", "max_delay": 3,
                                                  "prefix_trained": 3,
                                                  "request_keys": [COMMITTED_KEY, OVERLAP_KEY]}
    server = PolicyServer(pol, host="127.0.0.1", port=0, schema=LIBERO.schema(), metadata=pol.serving_metadata())
    port = server.start()
    try:
        with WebsocketClientPolicy(port=port) as client:
            obs = libero_obs(np.random.default_rng(6))
            chunk = client.infer(dict(obs))["actions"]
            out = client.infer({**obs, COMMITTED_KEY: chunk[4:7], OVERLAP_KEY: chunk[7:9]})
            np.testing.assert_allclose(out["actions"][:3], chunk[4:7], atol=1e-5)
            assert out["solver"]["prefix_method"] == "rtc_trained" and out["solver"]["vjps"] == 0
            with pytest.raises(RuntimeError, match="trained with at most 3 committed rows"):
                client.infer({**obs, COMMITTED_KEY: chunk[4:8]})
            broker = AsyncChunkBroker(client, execute=4, expected_delay=6)
            assert broker.max_committed == 3  # read from the metadata frame
            for _ in range(len(chunk) - 1):  # chunk 1 is requested at row 4 with min(6, 3) committed rows
                broker.infer(dict(obs))
                if len(broker.records) == 2:
                    break
                time.sleep(0.3)
            broker.close()
            assert not broker.errors and [r.committed_sent for r in broker.records] == [0, 3]
    finally:
        server.stop()


def test_warm_up_compiles_the_prefix_decode_too(trained_libero):
    """A robot's first asynchronous request (the first with committed rows) must not wait for a compile."""
    cfg, step_dir = trained_libero
    pol = create_trained_policy(cfg, step_dir, settings=DecoderSettings(executed=4))
    key = pol.compiled_key(pol.decoder.resolve(pol.settings))
    assert pol.compiled_decode(key, True)._cache_size() == 0
    pol.warm_up(libero_obs(np.random.default_rng(7)), batch_sizes=(1,))
    assert pol.compiled_decode(key, False)._cache_size() == 1
    assert pol.compiled_decode(key, True)._cache_size() == 1


def test_a_variant_not_compiled_at_warm_up_is_refused_not_compiled(trained_libero):
    """A first use of another solver variant used to compile while every session waited: after a refusing warm-up
    only the warmed variants decode, each with and without a prefix, and the others get a clear error, no compile."""
    cfg, step_dir = trained_libero
    pol = create_trained_policy(cfg, step_dir)
    obs = libero_obs(np.random.default_rng(7))
    pol.warm_up(obs, batch_sizes=(1,), also=[{"variant": "bb"}], refuse_cold=True)
    for variant in ("nesterov", "bb"):
        key = (("variant", variant),)
        assert [pol.compiled_decode(key, p)._cache_size() for p in (False, True)] == [1, 1]
        assert pol.infer({**obs, "decoder_settings": {"variant": variant}}, session=variant)["actions"].shape[0] == cfg.model.action_horizon
    with pytest.raises(InvalidRequestError, match=r"variant='gd' are not compiled on this server \(compiled at "
                                                  r"warm-up: variant='bb', variant='nesterov'\)"):
        pol.infer({**obs, "decoder_settings": {"variant": "gd"}}, session="gd")
    assert pol.compiled_decode((("variant", "gd"),), False)._cache_size() == 0
