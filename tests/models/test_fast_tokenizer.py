"""Tests for the FAST (DCT + BPE) action tokenizer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.fft

from pi0_eqm.models.fast import FastTokenizer
from pi0_eqm.models.fast import quantized_dct

H, D, SCALE = 16, 4, 10.0


def smooth_chunks(n: int, seed: int = 0) -> np.ndarray:
    """Sums of a few low-frequency sinusoids + small noise, normalised to ~[-1, 1]; shape [n, H, D]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, H)[None, :, None, None]
    freq = rng.uniform(0.1, 1.5, (n, 1, D, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, D, 3))
    amp = rng.uniform(0.2, 1.0, (n, 1, D, 3))
    x = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1) + 0.01 * rng.standard_normal((n, H, D))
    return x / np.abs(x).max(axis=1, keepdims=True)


def reference(x: np.ndarray, scale: float = SCALE) -> np.ndarray:
    q = np.rint(scipy.fft.dct(x, axis=0, norm="ortho") * scale)
    return scipy.fft.idct(q / scale, axis=0, norm="ortho")


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return smooth_chunks(300, seed=0)


@pytest.fixture(scope="module")
def fast(train) -> FastTokenizer:
    return FastTokenizer.fit(train, scale=SCALE, vocab_size=256)


def test_round_trip_error(fast):
    test = smooth_chunks(50, seed=1)
    max_errs, rms_errs, n_clipped_chunks = [], [], 0
    for x in test:
        tokens, n_clipped = fast.encode_with_info(x)
        assert all(0 <= t < fast.vocab_size for t in tokens)
        y, valid = fast.decode_with_validity(tokens)
        assert valid and y.shape == (H, D)
        if n_clipped:  # coefficient outside the range seen at fit time: exactness does not apply
            n_clipped_chunks += 1
            continue
        np.testing.assert_allclose(y, reference(x), atol=1e-9)
        max_errs.append(np.abs(y - x).max())
        rms_errs.append(np.sqrt(np.mean((y - x) ** 2)))
    print(f"max abs err {max(max_errs):.4f}, mean rms err {np.mean(rms_errs):.4f}, {n_clipped_chunks} clipped chunks")
    assert n_clipped_chunks <= 5
    assert max(max_errs) <= 0.5 / SCALE * np.sqrt(H)
    assert max(rms_errs) < 0.5 / SCALE


def test_compression(fast):
    assert H + D <= fast.vocab_size <= 256
    counts = [len(t) for t in fast.encode_batch(smooth_chunks(50, seed=2))]
    print(f"mean tokens {np.mean(counts):.1f} vs {H * D} coefficients (ratio {H * D / np.mean(counts):.2f}x)")
    assert np.mean(counts) < H * D


def test_encode_batch_matches_encode(fast):
    xs = smooth_chunks(5, seed=3)
    assert fast.encode_batch(xs) == [fast.encode(x) for x in xs]


def test_fit_accepts_iterable_and_reports_real_vocab(train):
    tok = FastTokenizer.fit(list(train[:20]), scale=SCALE, vocab_size=100_000)
    assert tok.vocab_size < 100_000  # few merges possible on 20 chunks
    assert tok.vocab_size == tok.tokenizer.get_vocab_size()


def test_save_load_round_trip(fast, tmp_path):
    out = tmp_path / "assets" / "fast"
    fast.save(out)
    fast.save(out)  # overwriting an existing saved tokenizer works
    assert sorted(os.listdir(out)) == ["fast_config.json", "tokenizer.json"]
    assert os.listdir(tmp_path / "assets") == ["fast"]  # no temporary leftovers
    cfg = json.loads((out / "fast_config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["vocab_size"] == fast.vocab_size
    loaded = FastTokenizer.load(out, action_horizon=H, action_dim=D)
    xs = smooth_chunks(10, seed=4)
    assert loaded.encode_batch(xs) == fast.encode_batch(xs)
    assert loaded.config() == fast.config()
    np.testing.assert_array_equal(loaded.decode(fast.encode(xs[0])), fast.decode(fast.encode(xs[0])))


def test_failed_save_leaves_previous_copy_intact(fast, tmp_path, monkeypatch):
    out = tmp_path / "fast"
    fast.save(out)
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(FastTokenizer, "config", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        fast.save(out)
    assert os.listdir(tmp_path) == ["fast"]  # no half-written temp directory left behind
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


@pytest.mark.parametrize(
    "tokens",
    [[], [0], [10**9], [10**400], [-1], [1.5], [float("nan")], ["a"], [[1, 2], [3]], "garbage", None],
    ids=["empty", "short", "huge", "overflow", "negative", "float", "nan", "str", "ragged", "string", "none"],
)
def test_garbage_tokens_decode_invalid(fast, tokens):
    y, valid = fast.decode_with_validity(tokens)
    assert y.shape == (H, D) and np.all(np.isfinite(y))
    assert not valid


def test_garbage_tokens_wrong_length_and_oov(fast):
    good = fast.encode(smooth_chunks(1, seed=5)[0])
    for bad in (good + good, good[:-1], good + [fast.vocab_size], np.array(good + [-3])):
        y, valid = fast.decode_with_validity(bad)
        assert y.shape == (H, D) and not valid
    chunks, valid = fast.decode_batch([good, []])
    assert chunks.shape == (2, H, D) and valid.tolist() == [True, False]


def test_clipping_is_counted(fast):
    x = smooth_chunks(1, seed=6)[0] * 100.0  # far outside the fitted coefficient range
    before = fast.total_clipped
    tokens, n_clipped = fast.encode_with_info(x)
    assert n_clipped > 0 and fast.total_clipped == before + n_clipped
    y, valid = fast.decode_with_validity(tokens)
    assert valid and y.shape == (H, D)
    q = quantized_dct(y, SCALE)
    assert q.min() >= fast.min_token and q.max() <= fast.max_token


def test_fit_alphabet_too_large():
    with pytest.raises(ValueError, match="raise vocab_size or lower scale"):
        FastTokenizer.fit(smooth_chunks(20), scale=1000.0, vocab_size=64)


def test_encode_shape_mismatch(fast):
    with pytest.raises(ValueError, match=r"got \(8, 4\), expected \(16, 4\)"):
        fast.encode(np.zeros((8, D)))
    with pytest.raises(ValueError, match="got"):
        fast.encode(np.zeros((H, D + 1)))


def test_load_errors(fast, tmp_path):
    with pytest.raises(FileNotFoundError, match="compute_norm_stats.py"):
        FastTokenizer.load(tmp_path / "does_not_exist")
    d = tmp_path / "fast"
    fast.save(d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        FastTokenizer.load(d)
    fast.save(d)
    with pytest.raises(ValueError, match="action_horizon=16, expected 10"):
        FastTokenizer.load(d, action_horizon=10)
    cfg = json.loads((d / "fast_config.json").read_text())
    for broken in ("{not json", json.dumps({**cfg, "format_version": 2}), json.dumps({**cfg, "vocab_size": 3})):
        (d / "fast_config.json").write_text(broken)
        with pytest.raises(ValueError):
            FastTokenizer.load(d)
    (d / "fast_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "scale"}))
    with pytest.raises(ValueError, match="scale"):
        FastTokenizer.load(d)


def test_special_characters_round_trip(tmp_path):
    # Build chunks from integer DCT coefficients so the shifted symbols hit chr(0), \n, \r, space, ...
    rng = np.random.default_rng(7)
    motif = np.array([0, 10, 13, 32, 9, 0, 32, 32, 10, 13, 27, 1], np.int64)
    shifted = rng.integers(0, 40, (60, H * D))
    shifted[:, : motif.size] = motif  # repeated motif -> merges made of control chars / whitespace
    shifted[1::2, -motif.size :] = motif
    q = shifted - 20  # coefficients in [-20, 19]
    chunks = scipy.fft.idct(q.reshape(-1, H, D) / SCALE, axis=1, norm="ortho")
    np.testing.assert_array_equal(quantized_dct(chunks, SCALE).reshape(-1, H * D), q)
    tok = FastTokenizer.fit(chunks, scale=SCALE, vocab_size=128)
    assert tok.min_token == -20 and tok.max_token == 19
    tok.save(tmp_path / "t")
    loaded = FastTokenizer.load(tmp_path / "t")
    merged = [p for p in (loaded.tokenizer.id_to_token(i) for i in range(loaded.vocab_size)) if len(p) > 1]
    assert any(set(p) & {"\x00", "\n", "\r", " "} for p in merged)
    for x, row in zip(chunks, shifted, strict=True):
        tokens = loaded.encode(x)
        assert tokens == tok.encode(x)
        assert len(tokens) < H * D
        y, valid = loaded.decode_with_validity(tokens)
        assert valid
        np.testing.assert_array_equal(quantized_dct(y, SCALE).reshape(-1) + 20, row)
        np.testing.assert_allclose(y, x, atol=1e-9)
        # the library's own decoder reproduces the exact symbol string too (no inserted spaces)
        assert loaded.tokenizer.decode(tokens) == "".join(map(chr, row))
