"""FAST action tokenizer (Pertsch et al. 2025, "FAST: Efficient Action Tokenization for VLA Models").

A normalised action chunk ``float [H, D]`` is turned into discrete tokens by

1. a per-dimension DCT over time (``scipy.fft.dct(axis=0, norm="ortho")``),
2. scaling by ``scale`` and rounding to integers,
3. flattening time-major (all dims' lowest frequency first, ``[H * D]``),
4. shifting by ``-min_token`` (clipping to the fitted range) and mapping each integer ``i`` to the character ``chr(i)``,
5. byte-pair encoding that string with a BPE trained by HuggingFace ``tokenizers`` (no normaliser, no pre-tokeniser:
   every integer is exactly one base symbol of the alphabet ``chr(0) .. chr(max_token - min_token)``).

Decoding inverts the steps; a token sequence that does not decode to exactly ``H * D`` coefficients (a model can emit
garbage) is padded with zero coefficients / truncated and reported as invalid instead of raising.

This is a plain numpy/Python class (not jitted); use it in the data pipeline and at inference time on the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import trainers

from pi0_eqm.atomic import atomic_directory

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "fast_config.json"
_CONFIG_KEYS = ("scale", "min_token", "max_token", "action_horizon", "action_dim", "vocab_size", "format_version")
_MAX_ALPHABET = 0xD800  # chr() of surrogate code points cannot be passed to the Rust library


def quantized_dct(chunks: np.ndarray, scale: float) -> np.ndarray:
    """``rint(dct(chunks, axis=-2, norm="ortho") * scale)`` as int64; works for ``[H, D]`` and ``[N, H, D]``."""
    coeff = scipy.fft.dct(np.asarray(chunks, np.float64), axis=-2, norm="ortho")
    return np.rint(coeff * scale).astype(np.int64)


def dequantized_idct(q: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`quantized_dct` (up to rounding): ``idct(q / scale, axis=-2, norm="ortho")``."""
    return scipy.fft.idct(np.asarray(q, np.float64) / scale, axis=-2, norm="ortho")


class FastTokenizer:
    """DCT + BPE action tokenizer for chunks of shape ``[action_horizon, action_dim]``.

    Create with :meth:`fit` (from training chunks) or :meth:`load` (from a directory written by :meth:`save`).
    Token ids lie in ``[0, vocab_size)``.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        scale: float,
        min_token: int,
        max_token: int,
        action_horizon: int,
        action_dim: int,
    ):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if max_token < min_token:
            raise ValueError(f"max_token ({max_token}) must be >= min_token ({min_token})")
        if action_horizon < 1 or action_dim < 1:
            raise ValueError(f"action_horizon and action_dim must be >= 1, got {action_horizon}, {action_dim}")
        self.scale = float(scale)
        self.min_token = int(min_token)
        self.max_token = int(max_token)
        self.action_horizon = int(action_horizon)
        self.action_dim = int(action_dim)
        self._tok = tokenizer
        # Decode by concatenating pieces ourselves: exact, never inserts spaces, and lets us reject unknown ids
        # (Tokenizer.decode silently drops them).
        self._pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        alphabet_size = self.max_token - self.min_token + 1
        for i, piece in enumerate(self._pieces):
            if not piece or any(ord(c) >= alphabet_size for c in piece):
                raise ValueError(
                    f"token {i} ({piece!r}) is not made of alphabet chars chr(0)..chr({alphabet_size - 1})"
                )
        vocab = tokenizer.get_vocab()
        missing = [i for i in range(alphabet_size) if chr(i) not in vocab]
        if missing:
            raise ValueError(f"BPE vocab lacks {len(missing)} base symbols of the alphabet (e.g. chr({missing[0]}))")
        self.total_clipped = 0  # coefficients clipped to [min_token, max_token] by encode() so far

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """The real vocabulary size (may be smaller than requested at fit time when few merges were possible)."""
        return len(self._pieces)

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        return self._tok

    def __repr__(self) -> str:
        return (
            f"FastTokenizer(H={self.action_horizon}, D={self.action_dim}, scale={self.scale}, "
            f"range=[{self.min_token}, {self.max_token}], vocab_size={self.vocab_size})"
        )

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        chunks: np.ndarray | Iterable[np.ndarray],
        *,
        scale: float = 10.0,
        vocab_size: int = 1024,
        min_frequency: int = 2,
        max_token_length: int = 64,
    ) -> FastTokenizer:
        """Fit the coefficient range and train the BPE on normalised chunks ``[N, H, D]`` (or an iterable of ``[H, D]``)."""
        data = np.asarray(chunks if isinstance(chunks, np.ndarray) else list(chunks), np.float64)
        if data.ndim != 3 or data.shape[0] == 0:
            raise ValueError(f"fit expects chunks of shape [N, H, D] with N >= 1, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("fit: chunks contain NaN/inf")
        _, horizon, dim = data.shape
        q = quantized_dct(data, scale).reshape(data.shape[0], horizon * dim)
        min_token, max_token = int(q.min()), int(q.max())
        alphabet_size = max_token - min_token + 1
        if alphabet_size > vocab_size or alphabet_size > _MAX_ALPHABET:
            raise ValueError(
                f"the quantised DCT coefficients span [{min_token}, {max_token}], i.e. an alphabet of {alphabet_size} "
                f"symbols, which exceeds vocab_size={vocab_size}; raise vocab_size or lower scale (now {scale})"
            )
        tok = tokenizers.Tokenizer(models.BPE())
        tok.decoder = decoders.Fuse()  # concatenate pieces without spaces (the default decoder joins with " ")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=[chr(i) for i in range(alphabet_size)],
            special_tokens=[],
            show_progress=False,
            max_token_length=max_token_length,
        )
        strings = ["".join(map(chr, row)) for row in (q - min_token).tolist()]
        tok.train_from_iterator(strings, trainer=trainer, length=len(strings))
        out = cls(tok, scale=scale, min_token=min_token, max_token=max_token, action_horizon=horizon, action_dim=dim)
        logger.info("fitted %r on %d chunks", out, len(strings))
        return out

    # ------------------------------------------------------------------ encoding
    def _to_string(self, chunk: np.ndarray) -> tuple[str, int]:
        chunk = np.asarray(chunk, np.float64)
        expected = (self.action_horizon, self.action_dim)
        if chunk.shape != expected:
            raise ValueError(f"action chunk shape mismatch: got {chunk.shape}, expected {expected} (H, D)")
        if not np.all(np.isfinite(chunk)):
            raise ValueError("action chunk contains NaN/inf")
        shifted = quantized_dct(chunk, self.scale).reshape(-1) - self.min_token
        hi = self.max_token - self.min_token
        n_clipped = int(np.count_nonzero((shifted < 0) | (shifted > hi)))
        self.total_clipped += n_clipped
        return "".join(map(chr, np.clip(shifted, 0, hi).tolist())), n_clipped

    def encode_with_info(self, chunk: np.ndarray) -> tuple[list[int], int]:
        """Encode one chunk ``[H, D]``; returns ``(token ids, number of coefficients clipped to the fitted range)``."""
        s, n_clipped = self._to_string(chunk)
        return self._tok.encode(s).ids, n_clipped

    def encode(self, chunk: np.ndarray) -> list[int]:
        """Encode one normalised chunk ``[H, D]`` into a list of token ids in ``[0, vocab_size)``."""
        return self.encode_with_info(chunk)[0]

    def encode_batch(self, chunks: np.ndarray | Sequence[np.ndarray]) -> list[list[int]]:
        """Encode ``[B, H, D]`` chunks; returns one token list per chunk."""
        strings = [self._to_string(c)[0] for c in chunks]
        return [e.ids for e in self._tok.encode_batch(strings)]

    # ------------------------------------------------------------------ decoding
    def decode_with_validity(self, tokens: Iterable[int] | np.ndarray) -> tuple[np.ndarray, bool]:
        """Decode tokens to a chunk ``float [H, D]``; never raises on garbage.

        The flag is False if any id is outside ``[0, vocab_size)`` (such ids are skipped) or the tokens do not expand
        to exactly ``H * D`` coefficients (padded with zero coefficients / truncated).
        """
        valid = True
        try:
            flat = np.asarray(tokens).reshape(-1).tolist()
        except (TypeError, ValueError):  # ragged / non-array input
            flat, valid = [], False
        pieces = []
        for t in flat:
            if (isinstance(t, int) or (isinstance(t, float) and t.is_integer())) and 0 <= int(t) < len(self._pieces):
                pieces.append(self._pieces[int(t)])
            else:
                valid = False
        codes = np.fromiter(map(ord, "".join(pieces)), np.int64)
        n = self.action_horizon * self.action_dim
        if codes.size != n:
            valid = False
            codes = np.concatenate([codes[:n] + self.min_token, np.zeros(max(0, n - codes.size), np.int64)])
        else:
            codes = codes + self.min_token
        chunk = dequantized_idct(codes.reshape(self.action_horizon, self.action_dim), self.scale)
        return chunk, valid

    def decode(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        """Decode tokens to a chunk ``float [H, D]`` (see :meth:`decode_with_validity`)."""
        return self.decode_with_validity(tokens)[0]

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Decode several token lists; returns ``(chunks [B, H, D], valid bool [B])``."""
        out = [self.decode_with_validity(t) for t in batch]
        chunks = np.stack([c for c, _ in out]) if out else np.zeros((0, self.action_horizon, self.action_dim))
        return chunks, np.array([v for _, v in out], bool)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "min_token": self.min_token,
            "max_token": self.max_token,
            "action_horizon": self.action_horizon,
            "action_dim": self.action_dim,
            "vocab_size": self.vocab_size,
            "format_version": FORMAT_VERSION,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` + ``fast_config.json`` atomically (temp sibling dir, then rename into place)."""
        target = Path(directory).absolute()
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"cannot save FAST tokenizer: {target} exists and is not a directory")
        with atomic_directory(target, overwrite=True) as tmp:  # fsynced before it is renamed
            (tmp / TOKENIZER_FILE).write_text(self._tok.to_str(pretty=True), encoding="utf-8")
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config()), encoding="utf-8")
        return target

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, action_horizon: int | None = None, action_dim: int | None = None
    ) -> FastTokenizer:
        """Load a tokenizer written by :meth:`save`; optionally check it matches the expected (H, D)."""
        directory = Path(directory)
        hint = "fit it with `uv run scripts/compute_norm_stats.py <config>`"
        for name in (CONFIG_FILE, TOKENIZER_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"FAST tokenizer file {directory / name} not found; {hint}")
        try:
            cfg = json.loads((directory / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"malformed {directory / CONFIG_FILE}: {e}") from e
        if not isinstance(cfg, dict) or any(k not in cfg for k in _CONFIG_KEYS):
            raise ValueError(f"{directory / CONFIG_FILE} must be a JSON object with keys {list(_CONFIG_KEYS)}")
        if cfg["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_FILE}: unsupported format_version {cfg['format_version']!r}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as e:  # the Rust library raises a bare Exception on parse errors
            raise ValueError(f"malformed {directory / TOKENIZER_FILE}: {e}") from e
        try:
            out = cls(
                tok,
                scale=float(cfg["scale"]),
                min_token=int(cfg["min_token"]),
                max_token=int(cfg["max_token"]),
                action_horizon=int(cfg["action_horizon"]),
                action_dim=int(cfg["action_dim"]),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid FAST tokenizer in {directory}: {e}") from e
        if out.vocab_size != cfg["vocab_size"]:
            raise ValueError(f"{directory}: config vocab_size {cfg['vocab_size']} != tokenizer's {out.vocab_size}")
        expected = {"action_horizon": (action_horizon, out.action_horizon), "action_dim": (action_dim, out.action_dim)}
        for name, (want, got) in expected.items():
            if want is not None and want != got:
                raise ValueError(f"FAST tokenizer in {directory} has {name}={got}, expected {want}; refit it. {hint}")
        return out
