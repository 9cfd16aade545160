"""Build a ``Policy`` from a train config and a checkpoint directory (params + the checkpoint's own norm stats)."""

from __future__ import annotations

import logging
from pathlib import Path

from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.policy import Policy
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.params_io import restore_params

logger = logging.getLogger(__name__)


def policy_from_params(config: TrainConfig, params, norm_stats, *, settings: DecoderSettings | None = None,
                       default_prompt: str | None = None) -> Policy:
    pipeline = config.data.create(config.model, config.assets_dir).pipeline.with_norm_stats(norm_stats)
    return Policy(config.model, params, input_transforms=(pipeline.inference_inputs(default_prompt),),
                  output_transforms=(pipeline.inference_outputs(),),
                  action_transforms=(pipeline.warm_start_actions(config.model.action_dim),), settings=settings,
                  metadata=config.policy_metadata)


def create_trained_policy(config: TrainConfig, checkpoint_dir: str | Path, *, settings: DecoderSettings | None = None,
                          default_prompt: str | None = None) -> Policy:
    """``checkpoint_dir`` is a step directory (``<run>/<step>``) or an exported directory with ``params/`` and
    ``assets/<asset_id>/norm_stats.json``. Norm stats come from the checkpoint, not from the config's assets dir."""

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "params").exists():
        raise FileNotFoundError(f"{checkpoint_dir} has no params/ directory; pass a step directory of a training run "
                                "(e.g. checkpoints/<config>/<exp>/<step>) or an exported checkpoint")
    params = restore_params(checkpoint_dir / "params")
    norm_stats = None
    asset_id = config.data.asset_id
    if asset_id is not None:
        stats_dir = checkpoint_dir / "assets" / asset_id
        if not (stats_dir / "norm_stats.json").is_file():
            raise FileNotFoundError(f"norm stats missing: expected {stats_dir / 'norm_stats.json'}")
        norm_stats = load_norm_stats(stats_dir)
    return policy_from_params(config, params, norm_stats, settings=settings, default_prompt=default_prompt)
