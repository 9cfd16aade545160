"""Policy: transforms + decoder + per-session warm start, on a real (tiny) LIBERO-config checkpoint written to disk."""

import shutil

import jax
import numpy as np
import pytest

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.data.pipeline import NormStatsMismatchError
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.training.config import get_config
from pi0_eqm.training.export import export_checkpoint
from pi0_eqm.training.params_io import restore_params
from pi0_eqm.training.params_io import save_params
from tests.policies.conftest import libero_obs

NESTEROV = (("variant", "nesterov"),)  # the compiled key (Policy.compiled_key) of the default solver variant


def test_policy_infers_libero_actions_and_warm_starts(trained_libero):
    cfg, step_dir = trained_libero
    assert (step_dir / "assets" / "physical-intelligence/libero" / "norm_stats.json").is_file()
    settings = DecoderSettings(threshold=1e-2, max_iters=40, executed=2, warm_start="aligned")
    policy = create_trained_policy(cfg, step_dir, settings=settings)
    policy.episodes = EpisodeDetection(state_jump=None)  # the random states below would each look like a reset
    rng = np.random.default_rng(0)
    out = policy.infer(libero_obs(rng), session="a")
    assert out["actions"].shape == (cfg.model.action_horizon, 7)
    assert np.all(np.isfinite(out["actions"]))
    assert out["solver"]["warm_started"] is False and 1 <= out["solver"]["iterations"] <= 40
    out2 = policy.infer(libero_obs(rng), session="a")
    assert out2["solver"]["warm_started"] is True
    # Another session is independent, and a reset drops the warm-start state.
    assert policy.infer(libero_obs(rng), session="b")["solver"]["warm_started"] is False
    policy.reset("a")
    assert policy.infer(libero_obs(rng), session="a")["solver"]["warm_started"] is False
    # Per-request settings.
    out3 = policy.infer({**libero_obs(rng), "decoder_settings": {"max_iters": 3, "warm_start": "off"}}, session="c")
    assert out3["solver"]["iterations"] == 3
    with pytest.raises(InvalidRequestError, match="unknown decoder settings"):
        policy.infer({**libero_obs(rng), "decoder_settings": {"epsilon": 1}})
    with pytest.raises(InvalidRequestError, match="variant"):
        policy.infer({**libero_obs(rng), "decoder_settings": {"variant": "adam"}})


def test_default_settings_decode_cold_at_ten_forwards(trained_libero):
    """The defaults chosen by the decoder study: no warm start, η 0.03, μ 0.3, no guard, at most 10 expert forwards."""
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    rng = np.random.default_rng(5)
    outs = [policy.infer(libero_obs(rng), session="d") for _ in range(2)]
    assert [o["solver"]["warm_started"] for o in outs] == [False, False]
    assert all(1 <= o["solver"]["iterations"] <= 10 for o in outs)
    ds = policy.decoder.resolve(DecoderSettings())
    assert (ds.step_size, ds.momentum, ds.max_iters, ds.threshold, ds.guard) == (0.03, 0.3, 10, 1e-2, False)


def test_one_compiled_decode_serves_every_solver_setting(trained_libero):
    """ε, the cap, η, μ and the guard reach the solver as traced values: many different settings, one compilation;
    a new variant compiles once more. Presets fill what a request leaves unset."""
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(executed=2))
    rng = np.random.default_rng(3)
    requests = [{"max_iters": 3, "warm_start": "off"}, {"max_iters": 7, "threshold": 0.0},
                {"step_size": 0.01, "momentum": 0.0, "max_iters": 4}, {"threshold": 1e-4, "guard": False},
                {"step_size": 0.2, "momentum": 0.9, "max_iters": 5}, {"preset": "paper", "max_iters": 6}]
    iters = [policy.infer({**libero_obs(rng), "decoder_settings": r}, session="s")["solver"]["iterations"]
             for r in requests]
    assert iters[0] == 3 and iters[1] == 7 and iters[2] == 4 and iters[4] <= 5 and iters[5] <= 6
    assert list(policy._decode_cache) == [(NESTEROV, False)]
    assert policy._decode_cache[(NESTEROV, False)]._cache_size() == 1
    out = policy.infer({**libero_obs(rng), "decoder_settings": {"preset": "bb", "max_iters": 4}}, session="s")
    assert 1 <= out["solver"]["iterations"] <= 4
    assert sorted(policy._decode_cache) == [((("variant", "bb"),), False), (NESTEROV, False)]
    # The preset's values are what ran: the paper preset's cap applies when the request gives none.
    resolved = policy.decoder.resolve(DecoderSettings(preset="paper"))
    assert (resolved.step_size, resolved.momentum, resolved.max_iters, resolved.guard) == (0.003, 0.3, 300, False)
    resolved = policy.decoder.resolve(DecoderSettings(preset="paper", step_size=0.01))
    assert resolved.step_size == 0.01 and resolved.max_iters == 300


@pytest.mark.parametrize("bad, message", [
    ({"step_size": 0}, r"step_size \(η\) must be > 0"),
    ({"step_size": -0.1}, r"step_size \(η\) must be > 0"),
    ({"momentum": 1.0}, r"momentum \(μ\) must be in \[0, 1\)"),
    ({"momentum": -0.5}, r"momentum \(μ\) must be in \[0, 1\)"),
    ({"variant": "adam"}, "solver variant must be one of"),
    ({"preset": "fast"}, r"solver preset must be one of \[.action., .paper., .bb.\], got 'fast'"),
    ({"guard": "yes"}, "guard must be true or false"),
    ({"max_iters": 0}, "max_iters must be an int"),
])
def test_wrong_solver_settings_are_clear_errors(trained_libero, bad, message):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    with pytest.raises(InvalidRequestError, match=message):
        policy.infer({**libero_obs(np.random.default_rng(4)), "decoder_settings": bad})
    with pytest.raises(ValueError, match=message):
        DecoderSettings(**bad)


def test_delta_actions_round_trip_through_policy_outputs(trained_libero):
    """With extra_delta_transform, outputs are absolute: zero model output → actions equal state (dims 0-5) + mean."""
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir)
    obs = libero_obs(np.random.default_rng(1))
    outputs = policy.output_transform({"state": policy.input_transform(dict(obs))["state"],
                               "actions": np.zeros((cfg.model.action_horizon, 32), np.float32)})
    stats = __import__("pi0_eqm.data.normalize", fromlist=["x"]).load_norm_stats(
        step_dir / "assets" / "physical-intelligence/libero")
    expected = stats["actions"].mean[:6] + obs["observation/state"][:6]
    np.testing.assert_allclose(outputs["actions"][0, :6], expected, rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="params"):
        create_trained_policy(get_config("debug_libero"), tmp_path)


def test_flow_policy_from_params_runs():
    cfg = get_config("debug")  # toy data: no robot transforms; feed model-ready inputs
    params = cfg.model.init(jax.random.key(0))
    policy = policy_from_params(cfg, params, None)
    from pi0_eqm.training.toy_data import ToySource

    sample = ToySource(cfg.model, 1)[0]
    out = policy.infer({k: v for k, v in sample.items() if k not in ("actions", "action_is_pad")})
    assert out["actions"].shape == (cfg.model.action_horizon, cfg.model.action_dim)
    assert out["solver"]["decoder"] == "flow" and out["solver"]["iterations"] == 10


def test_norm_stats_of_another_width_are_refused_naming_the_file(trained_libero, tmp_path):
    """A checkpoint whose norm stats do not have the robot's dims is refused, never served with sliced or padded
    stats (openpi would slice them silently). An export (a training step's own record would refuse any edit)."""
    cfg, step_dir = trained_libero
    copy = export_checkpoint(step_dir, tmp_path / "export")
    stats_dir = copy / "assets" / "physical-intelligence/libero"
    stats = load_norm_stats(stats_dir)
    wide = NormStats(mean=np.zeros(10), std=np.ones(10), q01=-np.ones(10), q99=np.ones(10))
    save_norm_stats(stats_dir, {**stats, "actions": wide})
    with pytest.raises(NormStatsMismatchError, match=r"libero/norm_stats\.json: .*'actions' has 10 dims, the "
                                                     r"robot's actions has 7"):
        create_trained_policy(cfg, copy)


def test_a_chunk_far_outside_the_training_range_is_refused(trained_libero):
    """A reply is never 1e30: a chunk more than 10^4 normalized units from the data's center is an error, and the
    same policy with its own params answers."""
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(max_iters=3))
    obs = libero_obs(np.random.default_rng(0))
    assert np.all(np.isfinite(policy.infer(obs, session="ok")["actions"]))
    proj = policy.params["action_out_proj"]
    policy.params = {**policy.params, "action_out_proj": jax.tree.map(lambda x: x * 1e8, proj)}
    with pytest.raises(InvalidRequestError, match="normalized units from the training data's center"):
        policy.infer(obs, session="big")


def test_a_step_whose_params_are_not_its_own_is_refused(trained_libero, tmp_path):
    """Serving and export check the params they read against the step's own checksums, as resume does: a step
    whose params/ was replaced (here by slightly different params) is refused by name, never served as that step."""
    cfg, step_dir = trained_libero
    copy = tmp_path / "4"
    shutil.copytree(step_dir, copy)
    params = restore_params(copy / "params", restore_type=np.ndarray)
    shutil.rmtree(copy / "params")
    save_params(copy / "params", jax.tree.map(lambda x: x * np.float32(1.001), params))
    with pytest.raises(ValueError, match=r"not the ones that step saved: params/params/.*checksum mismatch"):
        create_trained_policy(cfg, copy)
    with pytest.raises(ValueError, match="not the ones that step saved"):
        export_checkpoint(copy, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
    create_trained_policy(cfg, step_dir)  # the intact step serves


def test_a_step_under_another_number_or_with_edited_norm_stats_is_refused(trained_libero, tmp_path):
    """The step's integrity record names its step number and the digests of the assets it ships: serving and export
    refuse step 4's files copied as step 9, and a norm-stats copy edited in place (it still parses), naming each."""
    cfg, step_dir = trained_libero
    renumbered = tmp_path / "9"
    shutil.copytree(step_dir, renumbered)
    with pytest.raises(ValueError, match="saved as step 4, but its directory is step 9"):
        create_trained_policy(cfg, renumbered)
    edited = tmp_path / "4"
    shutil.copytree(step_dir, edited)
    f = edited / "assets" / "physical-intelligence/libero" / "norm_stats.json"
    f.write_text(f.read_text().replace("0", "1", 1))
    load_norm_stats(f.parent)  # still valid norm stats, only not the ones trained with
    for act in (lambda: create_trained_policy(cfg, edited), lambda: export_checkpoint(edited, tmp_path / "out")):
        with pytest.raises(ValueError, match="libero/norm_stats.json: differs from the file saved with this step"):
            act()
    assert not (tmp_path / "out").exists()
