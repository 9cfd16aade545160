"""Prompt tokenizers: openpi's PaliGemma sentencepiece tokenizer and a byte-level tokenizer for tiny models.

All clean the prompt like openpi (strip, ``_`` and newlines → spaces), encode ``BOS + text + "\\n"``, right-pad with 0
to ``max_len`` and return ``(tokens int32 [max_len], mask bool [max_len])``; longer prompts are truncated with a
warning. Given the normalised ``state`` (π₀.5's discrete state input) they encode openpi's π₀.5 text instead,
``BOS + "Task: {prompt}, State: {bins};\\nAction: "`` with each state dim in one of 256 bins over [−1, 1].
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
import re
import zlib

import numpy as np
import sentencepiece

logger = logging.getLogger(__name__)

PALIGEMMA_TOKENIZER_ENV = "PI0_PALIGEMMA_TOKENIZER"


def clean_prompt(text: str) -> str:
    return text.strip().replace("_", " ").replace("\n", " ")


STATE_BINS = 256


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Bin index in ``[0, 255]`` of each normalised state dim (``digitize`` over 256 bins of [−1, 1], as openpi)."""
    return np.digitize(np.asarray(state), bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def pi05_prompt(prompt: str, state: np.ndarray) -> str:
    """openpi's π₀.5 prompt text with the discretised state."""
    bins = " ".join(map(str, discretize_state(state)))
    return f"Task: {clean_prompt(prompt)}, State: {bins};\nAction: "


_WARNED: set[tuple[str, int]] = set()


def _pad(ids: list[int], max_len: int, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    if len(ids) > max_len and (prompt, max_len) not in _WARNED:
        _WARNED.add((prompt, max_len))
        logger.warning("prompt %r is %d tokens long; truncating to max_len=%d", prompt, len(ids), max_len)
    ids = ids[:max_len]
    tokens = np.zeros((max_len,), np.int32)
    mask = np.zeros((max_len,), bool)
    tokens[: len(ids)] = ids
    mask[: len(ids)] = True
    return tokens, mask


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (0 = pad, 1 = BOS, 2 = unused); needs ``vocab_size >= 259``."""

    max_len: int = 48

    vocab_size_needed = 259

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        text = clean_prompt(prompt) + "\n" if state is None else pi05_prompt(prompt, state)
        ids = [1] + [b + 3 for b in text.encode("utf-8")]
        return _pad(ids, self.max_len, prompt)


@dataclasses.dataclass(frozen=True)
class WordHashTokenizer:
    """Lower-cased words hashed (CRC32) into ``[3, vocab_size)``; 0 = pad, 1 = BOS, 2 = newline. For tiny models with
    a small fixed instruction set: ~1 token per word instead of per byte."""

    max_len: int = 16
    vocab_size: int = 512

    vocab_size_needed = 64

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        text = clean_prompt(prompt) if state is None else pi05_prompt(prompt, state)
        words = re.findall(r"[a-z0-9]+|[^a-z0-9\s]", text.lower())
        ids = [1] + [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words] + ([2] if state is None else [])
        return _pad(ids, self.max_len, prompt)


@dataclasses.dataclass(frozen=True)
class PaligemmaTokenizer:
    """openpi's tokenizer: the PaliGemma sentencepiece model (``paligemma_tokenizer.model``, 257152 tokens).

    The model file is not downloaded at run time: pass ``model_path`` or set ``$PI0_PALIGEMMA_TOKENIZER``
    (openpi fetches it from ``gs://big_vision/paligemma_tokenizer.model``).
    """

    max_len: int = 48
    model_path: str | None = None

    vocab_size_needed = 257_152
    text_vocab_size = 256_000  # Gemma's text tokens; loc/seg tokens follow

    def _processor(self):

        path = self.model_path or os.environ.get(PALIGEMMA_TOKENIZER_ENV)
        if not path or not Path(path).is_file():
            raise FileNotFoundError(
                f"PaliGemma tokenizer model not found (model_path={self.model_path!r}, "
                f"${PALIGEMMA_TOKENIZER_ENV}={os.environ.get(PALIGEMMA_TOKENIZER_ENV)!r}). Download "
                "gs://big_vision/paligemma_tokenizer.model and pass its path."
            )
        return _load_sp(str(path))

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        sp = self._processor()
        if state is None:
            ids = sp.encode(clean_prompt(prompt), add_bos=True) + sp.encode("\n")
        else:
            ids = sp.encode(pi05_prompt(prompt, state), add_bos=True)
        return _pad(ids, self.max_len, prompt)


_SP_CACHE: dict[str, object] = {}


def _load_sp(path: str):

    if path not in _SP_CACHE:
        _SP_CACHE[path] = sentencepiece.SentencePieceProcessor(model_file=path)
    return _SP_CACHE[path]


Tokenizer = ByteTokenizer | WordHashTokenizer | PaligemmaTokenizer
