"""π₀.5 through the real LIBERO pipeline: quantile norm stats → discrete-state prompts → train → export → serve."""

import dataclasses

import numpy as np
import pytest

from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.training import loop
from pi0_eqm.training.config import get_config
from pi0_eqm.training.export import export_checkpoint
from pi0_eqm.training.norm_stats import compute_for_config
from tests.policies.conftest import libero_obs
from tests.policies.conftest import make_libero_dataset


@pytest.mark.slow
@pytest.mark.parametrize("decoder", [FlowConfig(), EqmConfig()], ids=["flow", "eqm"])
def test_pi05_libero_trains_exports_and_serves(tmp_path, decoder):
    base = get_config("debug_libero")
    ds = make_libero_dataset(tmp_path / "data")
    model = model_config("pi05_tiny", decoder, real_action_dim=7, max_token_len=40)
    cfg = dataclasses.replace(base, name="debug_pi05_libero", model=model,
                              data=dataclasses.replace(base.data, path=str(ds), use_quantile_norm=True,
                                                       extra_delta_transform=False),
                              num_train_steps=2, save_interval=2, checkpoint_base_dir=str(tmp_path / "ckpt"),
                              assets_base_dir=str(tmp_path / "assets"), async_checkpoint=False)
    compute_for_config(cfg)
    data_cfg = cfg.data.create(cfg.model, cfg.assets_dir)
    stats = data_cfg.norm_stats["state"]
    assert stats.q01 is not None and stats.q99 is not None
    loop.train(cfg, progress=False)
    export_checkpoint(cfg.checkpoint_dir, tmp_path / "export")
    for where in (cfg.checkpoint_dir, tmp_path / "export"):
        policy = create_trained_policy(None, where)
        assert policy.decoder.kind == decoder.kind
        obs = libero_obs(np.random.default_rng(0), size=48)
        out = policy.infer(obs)
        assert out["actions"].shape == (model.action_horizon, 7) and np.isfinite(out["actions"]).all()
