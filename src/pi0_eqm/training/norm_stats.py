"""Compute a config's norm stats (openpi's ``compute_norm_stats.py``) from its dataset, without decoding images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.normalize import compute_norm_stats
from pi0_eqm.data.normalize import normalize_dict
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.models.fast import FastTokenizer
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.data_config import EpisodicDataConfig

logger = logging.getLogger(__name__)


def compute_for_config(config: TrainConfig, *, max_frames: int | None = None, seed: int | None = 0,
                       max_fast_chunks: int = 50_000) -> Path:
    """Writes ``<assets_dir>/<asset_id>/norm_stats.json`` (atomically) and returns its directory. With knowledge
    insulation it then fits the FAST tokenizer on the normalised chunks (``<asset_id>/fast_tokenizer/``)."""
    if not isinstance(config.data, EpisodicDataConfig):
        raise ValueError(f"config {config.name!r} uses {type(config.data).__name__}, which needs no norm stats")
    data_cfg = config.data.create(config.model, config.assets_dir, load_stats=False)  # (re)computing them
    chunked = ChunkedDataset(config.data.open_source(), config.model.action_horizon, images=False)
    transform = data_cfg.pipeline.statistics()
    placeholders = config.data.spec().stats_placeholders()  # the samples carry no images

    def samples():
        for s in chunked.low_dim_samples(seed=seed, max_frames=max_frames):
            out = transform({**placeholders, **s})
            yield {"state": out["state"], "actions": out["actions"], "action_is_pad": s["action_is_pad"]}

    stats = compute_norm_stats(samples(), keys=("state", "actions"), max_frames=max_frames)
    out_dir = config.assets_dir / config.data.asset_id
    save_norm_stats(out_dir, stats)
    logger.info("wrote %s", out_dir / "norm_stats.json")
    if config.model.ki is not None:
        fit_fast_tokenizer(config, stats, (s for s in samples() if not s["action_is_pad"].any()), out_dir,
                           max_chunks=max_fast_chunks)
    return out_dir


def fit_fast_tokenizer(config: TrainConfig, stats, samples, out_dir: Path, *, max_chunks: int = 50_000) -> Path:
    """Fits the FAST tokenizer (DCT + BPE) on normalised action chunks; writes ``<out_dir>/fast_tokenizer/``."""


    ki, real = config.model.ki, config.model.real_action_dim or config.model.action_dim
    chunks = []
    for s in samples:
        chunk = normalize_dict({"actions": s["actions"]}, {"actions": stats["actions"]},
                               use_quantiles=config.data.use_quantile_norm)["actions"]
        chunks.append(np.asarray(chunk, np.float32)[:, :real])
        if len(chunks) >= max_chunks:
            break
    if not chunks:
        raise ValueError(f"no full action chunks of horizon {config.model.action_horizon} in the dataset; cannot fit "
                         "the FAST tokenizer")
    tok = FastTokenizer.fit(np.stack(chunks), scale=ki.fast_scale, vocab_size=ki.fast_vocab_size)
    path = tok.save(out_dir / FAST_TOKENIZER_DIR)
    lengths = [len(t) + 2 for t in tok.encode_batch(np.stack(chunks[:2000]))]
    over = sum(n > ki.max_fast_tokens for n in lengths)
    logger.info("wrote %s (vocab %d, %d chunks; FAST length with markers: mean %.1f, max %d; %d/%d over "
                "ki.max_fast_tokens=%d)", path, tok.vocab_size, len(chunks), float(np.mean(lengths)), max(lengths),
                over, len(lengths), ki.max_fast_tokens)
    return path
