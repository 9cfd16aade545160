"""From a train config to model-ready batches: ``create_data_loader`` and ``split_batch`` (openpi's
``training/data_loader.py``)."""

from __future__ import annotations

import numpy as np

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.loader import DataLoader
from pi0_eqm.data.validation import validate_dataset
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.models.observation import Observation
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.data_config import ToyDataConfig
from pi0_eqm.training.toy_data import ToySource


def create_data_loader(config: TrainConfig, data_cfg, *, shard_index: int, shard_count: int) -> DataLoader:
    """This process's loader of model-ready batches (``split_batch`` makes them the step's arguments): the toy source,
    or the config's dataset chunked to the action horizon, validated against the robot, through the training
    pipeline (openpi's ``create_data_loader``). Refuses a batch size the processes do not divide, and a dataset
    without its norm stats (or FAST tokenizer, with knowledge insulation)."""
    if config.batch_size % shard_count:
        raise ValueError(f"global batch size {config.batch_size} is not divisible by {shard_count} processes")
    local_batch = config.batch_size // shard_count
    if isinstance(config.data, ToyDataConfig):
        source = ToySource(config.model, config.data.num_samples, seed=config.seed)
        transform = data_cfg.pipeline.training() if data_cfg.pipeline.model.inputs else None
    else:
        source = ChunkedDataset(config.data.open_source(), config.model.action_horizon)
        spec = config.data.spec()
        validate_dataset(source, state_dim=spec.state_dim, action_dim=spec.action_dim,
                         image_keys=[c.sample_key for c in spec.cameras if c.lerobot_feature is not None],
                         where=f"dataset {config.data.resolved_path()}")
        if data_cfg.norm_stats is None:
            raise FileNotFoundError(
                f"no norm stats for asset {data_cfg.asset_id!r} under {config.assets_dir}; run "
                f"`uv run scripts/compute_norm_stats.py {config.name}` first"
            )
        if config.model.ki is not None and data_cfg.fast_tokenizer is None:
            raise FileNotFoundError(
                f"config {config.name!r} trains with knowledge insulation but has no FAST tokenizer under "
                f"{config.assets_dir / data_cfg.asset_id / FAST_TOKENIZER_DIR}; run "
                f"`uv run scripts/compute_norm_stats.py {config.name}` first (it fits one after the norm stats)"
            )
        transform = data_cfg.pipeline.training(passthrough=("action_is_pad",))
    return DataLoader(source, batch_size=local_batch, seed=config.seed, shuffle=True, transform=transform,
                      shard_index=shard_index, shard_count=shard_count, num_threads=config.num_workers)


def split_batch(batch: dict) -> tuple[Observation, np.ndarray, np.ndarray]:
    """A loader batch → ``(Observation, actions float32, action_is_pad bool)``."""
    obs = Observation.from_dict({k: batch[k] for k in
                                 ("image", "image_mask", "state", "tokenized_prompt", "tokenized_prompt_mask",
                                  "fast_tokens", "fast_mask")
                                 if k in batch})
    return obs, np.asarray(batch["actions"], np.float32), np.asarray(batch["action_is_pad"], bool)
