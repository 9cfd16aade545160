"""Knowledge insulation (π₀.5-KI recipe): the backbone learns next-token prediction on FAST action tokens while the
action expert (flow or EqM) learns continuous actions against *stop-gradient* backbone keys/values.

Prefix during KI training (the expert never sees the FAST part)::

    [images … | prompt … | <begin> f₁ f₂ … fₙ <end> pad …]
     bidirectional        causal among themselves, invisible to the expert

Token ids: the FAST BPE vocabulary is mapped onto the tail of the LM vocabulary as openpi's pi0-FAST does
(``lm_id = vocab_size − 1 − skip_tokens − fast_id``); the two markers live in the skipped tail
(``<begin> = vocab_size − 1``, ``<end> = vocab_size − 2``). Text tokenizers must stay below ``text_vocab_size``.
For PaliGemma (vocab 257 152, skip 128, FAST vocab 1024) the text part is Gemma's 256 000 tokens.

At inference nothing changes: the prefix is images + prompt and the expert decodes as usual.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

FAST_TOKENIZER_DIR = "fast_tokenizer"  # under assets/<asset_id>/, beside norm_stats.json


@dataclasses.dataclass(frozen=True)
class KIConfig:
    """Knowledge-insulation options (``Pi0Config.ki``; ``None`` = plain π₀ training).

    ``loss_weight``: weight of the FAST cross-entropy relative to the decoder loss. ``stop_gradient``: the expert reads
    stop-gradient backbone K/V (the KI recipe; ``False`` = plain joint training with an auxiliary FAST loss, for
    ablations). ``max_fast_tokens``: FAST slots in the prefix including both markers (longer sequences are truncated
    and counted). ``fast_vocab_size`` / ``fast_scale``: BPE vocabulary and DCT scale used when fitting the tokenizer.
    ``skip_tokens``: LM-vocab tail left to special tokens (openpi: 128 for PaliGemma); must be ≥ 2 for the markers.
    """

    loss_weight: float = 1.0
    stop_gradient: bool = True
    max_fast_tokens: int = 128
    fast_vocab_size: int = 1024
    fast_scale: float = 10.0
    skip_tokens: int = 128

    def __post_init__(self):
        if not self.loss_weight >= 0:
            raise ValueError(f"ki.loss_weight must be >= 0, got {self.loss_weight}")
        if self.max_fast_tokens < 3:
            raise ValueError(f"ki.max_fast_tokens must be >= 3 (two markers + one token), got {self.max_fast_tokens}")
        if self.fast_vocab_size < 2:
            raise ValueError(f"ki.fast_vocab_size must be >= 2, got {self.fast_vocab_size}")
        if self.skip_tokens < 2:
            raise ValueError(f"ki.skip_tokens must be >= 2 (the <begin>/<end> markers live there), got "
                             f"{self.skip_tokens}")
        if not self.fast_scale > 0:
            raise ValueError(f"ki.fast_scale must be > 0, got {self.fast_scale}")


@dataclasses.dataclass(frozen=True)
class FastTokenLayout:
    """Where FAST tokens and the two markers sit in the LM vocabulary."""

    vocab_size: int
    fast_vocab_size: int
    skip_tokens: int

    @classmethod
    def of(cls, vocab_size: int, ki: KIConfig) -> FastTokenLayout:
        layout = cls(vocab_size, ki.fast_vocab_size, ki.skip_tokens)
        if layout.text_vocab_size < 3:
            raise ValueError(
                f"vocab_size {vocab_size} leaves no room for text: FAST needs {ki.fast_vocab_size} + "
                f"{ki.skip_tokens} skipped ids; raise vocab_size or lower ki.fast_vocab_size"
            )
        return layout

    @property
    def text_vocab_size(self) -> int:
        return self.vocab_size - self.skip_tokens - self.fast_vocab_size

    @property
    def begin_id(self) -> int:
        return self.vocab_size - 1

    @property
    def end_id(self) -> int:
        return self.vocab_size - 2

    def to_lm(self, fast_ids) -> np.ndarray:
        fast_ids = np.asarray(fast_ids, np.int64)
        if fast_ids.size and (fast_ids.min() < 0 or fast_ids.max() >= self.fast_vocab_size):
            raise ValueError(f"FAST ids must be in [0, {self.fast_vocab_size}), got range "
                             f"[{fast_ids.min()}, {fast_ids.max()}]")
        return (self.vocab_size - 1 - self.skip_tokens - fast_ids).astype(np.int32)

    def from_lm(self, lm_ids) -> np.ndarray:
        """LM ids → FAST ids; ids outside the FAST range become −1 (the decoder treats them as invalid)."""
        fast = self.vocab_size - 1 - self.skip_tokens - np.asarray(lm_ids, np.int64)
        return np.where((fast >= 0) & (fast < self.fast_vocab_size), fast, -1)

    def sequence(self, fast_ids, max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """``<begin> ids <end>`` padded to ``max_len`` → ``(int32 tokens, bool mask, truncated)``."""
        seq = np.concatenate([[self.begin_id], self.to_lm(fast_ids), [self.end_id]]).astype(np.int32)
        truncated = len(seq) > max_len
        seq = seq[:max_len]
        tokens = np.zeros((max_len,), np.int32)
        mask = np.zeros((max_len,), bool)
        tokens[: len(seq)] = seq
        mask[: len(seq)] = True
        return tokens, mask, truncated


@dataclasses.dataclass
class TokenizeFastActions:
    """Data transform: normalised ``actions [H, ≥D]`` → ``fast_tokens int32 [L]`` + ``fast_mask bool [L]``.

    Uses the first ``tokenizer.action_dim`` dims (the real robot dims, before padding). Samples without actions
    (inference) pass through untouched. Truncations are counted in ``truncated`` and logged once.
    """

    tokenizer: object  # pi0_eqm.models.fast.FastTokenizer
    layout: FastTokenLayout
    max_len: int
    truncated: int = 0

    def __call__(self, data: dict) -> dict:
        if "actions" not in data:
            return data
        actions = np.asarray(data["actions"], np.float32)
        d = self.tokenizer.action_dim
        if actions.ndim != 2 or actions.shape[-1] < d:
            raise ValueError(f"FAST tokenizer expects actions [H, >= {d}], got shape {actions.shape}")
        ids = self.tokenizer.encode(actions[:, :d])
        tokens, mask, truncated = self.layout.sequence(ids, self.max_len)
        if truncated:
            if not self.truncated:
                logger.warning("FAST sequence of %d tokens truncated to ki.max_fast_tokens=%d (raise it to keep whole "
                               "chunks)", len(ids) + 2, self.max_len)
            self.truncated += 1
        return {**data, "fast_tokens": tokens, "fast_mask": mask}
