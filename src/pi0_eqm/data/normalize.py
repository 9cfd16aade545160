"""Normalization statistics in openpi's format (``norm_stats.json``) and the z-score / quantile transforms.

Differences from openpi, all compatible with its files:

* :class:`RunningStats` accumulates mean/variance in float64 with Chan's parallel update (exact, no
  ``E[x²] − E[x]²`` cancellation); quantiles use openpi's 5000-bin per-dimension histograms re-binned when min/max
  grow, but counts of old bins are never dropped when re-binning.
* :func:`save_norm_stats` is atomic (temp file in the same directory, fsync, ``os.replace``).
* Near-constant dimensions (openpi issue #814: ``std`` or ``q99 − q01`` ≈ 0 blow normalized values up) are clamped
  to a minimum scale with a warning, both when computing stats and when normalizing with foreign stats.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import dataclasses
import json
from pathlib import Path
import warnings

import numpy as np
from tqdm.auto import tqdm

from pi0_eqm.atomic import atomic_write_bytes

NORM_STATS_FILE = "norm_stats.json"
NUM_QUANTILE_BINS = 5000
MIN_SCALE = 1e-3  # smallest std (and half quantile range) used to normalize; see openpi #814
_EPS = 1e-6  # openpi's epsilon in the denominators


@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self):
        for name in ("mean", "std", "q01", "q99"):
            value = getattr(self, name)
            if value is None:
                if name in ("mean", "std"):
                    raise ValueError(f"NormStats.{name} is required")
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"NormStats.{name} must be a non-empty 1-D vector, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"NormStats.{name} has non-finite values: {arr.tolist()}")
            object.__setattr__(self, name, arr)
        dim = self.mean.shape[0]
        for name in ("std", "q01", "q99"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != dim:
                raise ValueError(f"NormStats.{name} has {value.shape[0]} dims but mean has {dim}")
        if np.any(self.std < 0):
            raise ValueError(f"NormStats.std must be >= 0, got {self.std.tolist()}")
        if (self.q01 is None) != (self.q99 is None):
            raise ValueError("NormStats.q01 and q99 must be given together")
        if self.q01 is not None and np.any(self.q01 > self.q99):
            raise ValueError(f"NormStats.q01 must be <= q99; q01={self.q01.tolist()} q99={self.q99.tolist()}")

    def to_json(self) -> dict:
        out = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        out["q01"] = None if self.q01 is None else self.q01.tolist()
        out["q99"] = None if self.q99 is None else self.q99.tolist()
        return out

    def clamped(self, min_scale: float = MIN_SCALE, *, name: str = "") -> NormStats:
        """Stats whose std and half quantile range are at least ``min_scale`` (warns about the clamped dims)."""
        narrow = self.std < min_scale
        q01, q99 = self.q01, self.q99
        if q01 is not None:
            small_range = q99 - q01 < 2 * min_scale
            mid = (q99 + q01) / 2
            q01, q99 = np.where(small_range, mid - min_scale, q01), np.where(small_range, mid + min_scale, q99)
            narrow |= small_range
        if not narrow.any():
            return self
        dims = np.flatnonzero(narrow)
        warnings.warn(
            f"norm stats{' ' + name if name else ''}: dims {dims.tolist()} are near-constant (std "
            f"{self.std[dims].tolist()}); clamping their scale to {min_scale} so normalized values stay bounded "
            "(openpi issue #814)",
            stacklevel=3,
        )
        std = np.maximum(self.std, min_scale)
        return NormStats(mean=self.mean, std=std, q01=q01, q99=q99)


class RunningStats:
    """Streaming per-dimension mean, std and 1%/99% quantiles of vectors (openpi's algorithm, see module doc)."""

    def __init__(self, num_quantile_bins: int = NUM_QUANTILE_BINS):
        self._bins = int(num_quantile_bins)
        self._count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._hist: np.ndarray | None = None  # [D, bins]
        self._lo: np.ndarray | None = None  # histogram range per dim
        self._hi: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self._count

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of vectors ``[..., D]`` (all leading axes are flattened)."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim == 0:
            raise ValueError("RunningStats.update needs vectors [..., D], got a scalar")
        batch = batch.reshape(-1, batch.shape[-1])
        n, dim = batch.shape
        if n == 0:
            return
        if not np.all(np.isfinite(batch)):
            raise ValueError("RunningStats.update got NaN or infinite values")
        bmin, bmax = batch.min(axis=0), batch.max(axis=0)
        if self._count == 0:
            self._mean, self._m2 = np.zeros(dim), np.zeros(dim)
            self._min, self._max = bmin, bmax
            self._hist = np.zeros((dim, self._bins))
            # openpi pads the first range by 1e-10; scale it so it survives float64 rounding for large values.
            pad = 1e-10 + 1e-12 * np.maximum(np.abs(bmin), np.abs(bmax))
            self._lo, self._hi = bmin - pad, bmax + pad
        else:
            if dim != self._mean.shape[0]:
                raise ValueError(f"RunningStats got vectors of dim {dim}, expected {self._mean.shape[0]}")
            new_min, new_max = np.minimum(self._min, bmin), np.maximum(self._max, bmax)
            if np.any(new_min < self._min) or np.any(new_max > self._max):
                self._min, self._max = new_min, new_max
                self._rebin(np.minimum(new_min, self._lo), np.maximum(new_max, self._hi))
        # Chan et al. parallel update of mean and sum of squared deviations.
        bmean = batch.mean(axis=0)
        bm2 = ((batch - bmean) ** 2).sum(axis=0)
        total = self._count + n
        delta = bmean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + bm2 + delta**2 * (self._count * n / total)
        self._count = total
        self._hist += self._histogram(batch)

    def _bin_index(self, values: np.ndarray) -> np.ndarray:
        """values [N, D] -> bin indices [N, D] in the current per-dim ranges."""
        width = (self._hi - self._lo) / self._bins
        width = np.where(width > 0, width, 1.0)
        idx = np.floor((values - self._lo) / width).astype(np.int64)
        return np.clip(idx, 0, self._bins - 1)

    def _histogram(self, batch: np.ndarray) -> np.ndarray:
        idx = self._bin_index(batch) + np.arange(batch.shape[1]) * self._bins
        return np.bincount(idx.ravel(), minlength=batch.shape[1] * self._bins).reshape(batch.shape[1], self._bins)

    def _rebin(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Move old counts into bins over the grown range ``[lo, hi]`` (each old bin goes where its left edge falls)."""
        old_edges = self._lo[:, None] + (self._hi - self._lo)[:, None] * np.arange(self._bins)[None, :] / self._bins
        self._lo, self._hi = lo, hi
        idx = self._bin_index(old_edges.T).T + (np.arange(len(lo)) * self._bins)[:, None]
        hist = np.bincount(idx.ravel(), weights=self._hist.ravel(), minlength=self._hist.size)
        self._hist = hist.reshape(self._hist.shape)

    def get_statistics(self) -> NormStats:
        if self._count < 2:
            raise ValueError(f"cannot compute statistics from {self._count} vectors; need at least 2")
        std = np.sqrt(np.maximum(self._m2 / self._count, 0.0))
        cumsum = np.cumsum(self._hist, axis=1)
        q = []
        for quantile in (0.01, 0.99):
            idx = (cumsum < quantile * self._count).sum(axis=1)  # = searchsorted(cumsum, target, "left")
            q.append(self._lo + (self._hi - self._lo) * idx / self._bins)
        return NormStats(mean=self._mean.copy(), std=std, q01=q[0], q99=q[1])


def compute_norm_stats(
    samples: Iterable[Mapping],
    keys: Iterable[str] = ("state", "actions"),
    *,
    max_frames: int | None = None,
    min_scale: float = MIN_SCALE,
    buffer_rows: int = 16384,
) -> dict[str, NormStats]:
    """Norm stats of ``keys`` over ``samples`` (dicts of arrays; images are never touched).

    For chunked samples (with ``action_is_pad``) only the non-padded actions count. At most ``max_frames`` samples
    are read. Near-constant dims are clamped to ``min_scale`` with a warning.
    """
    keys = tuple(keys)
    stats = {k: RunningStats() for k in keys}
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    rows = dict.fromkeys(keys, 0)

    def flush(key: str) -> None:
        if buffers[key]:
            stats[key].update(np.concatenate(buffers[key]))
            buffers[key], rows[key] = [], 0

    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)
    bar = tqdm(samples, desc="Computing norm stats", total=total, unit="frame")
    for n, sample in enumerate(bar):
        if max_frames is not None and n >= max_frames:
            break
        for key in keys:
            if key not in sample:
                raise KeyError(f"sample {n} has no key {key!r}; available keys: {sorted(sample)}")
            x = np.asarray(sample[key], dtype=np.float64)
            if key == "actions" and "action_is_pad" in sample:
                x = x[~np.asarray(sample["action_is_pad"], dtype=bool)]
            x = x.reshape(-1, x.shape[-1] if x.ndim else 1)
            buffers[key].append(x)
            rows[key] += x.shape[0]
            if rows[key] >= buffer_rows:
                flush(key)
    bar.close()
    out = {}
    for key in keys:
        flush(key)
        out[key] = stats[key].get_statistics().clamped(min_scale, name=key)
    return out


def save_norm_stats(directory: str | Path, norm_stats: Mapping[str, NormStats]) -> Path:
    """Atomically write ``directory/norm_stats.json`` in openpi's format; returns the file path."""
    if not norm_stats:
        raise ValueError("save_norm_stats got no statistics")
    path = Path(directory) / NORM_STATS_FILE
    atomic_write_bytes(path, norm_stats_bytes(norm_stats))
    return path


def norm_stats_bytes(norm_stats: Mapping[str, NormStats]) -> bytes:
    """The exact bytes :func:`save_norm_stats` writes for ``norm_stats`` (openpi's format)."""
    for key, value in norm_stats.items():
        if not isinstance(value, NormStats):
            raise TypeError(f"norm_stats[{key!r}] is a {type(value).__name__}; expected NormStats")
    payload = {"norm_stats": {k: v.to_json() for k, v in norm_stats.items()}}
    return json.dumps(payload, indent=2).encode()


def load_norm_stats(directory: str | Path) -> dict[str, NormStats]:
    """Read ``directory/norm_stats.json`` (openpi format) with validation."""
    path = Path(directory) / NORM_STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"norm stats not found: {path}. Compute them with pi0_eqm.data.normalize.compute_norm_stats and "
            "save_norm_stats, or copy the norm_stats.json of the checkpoint's assets/<asset_id>/ directory there."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file may be truncated") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not text ({e.reason} at byte {e.start}); the file is damaged: compute the norm "
                         "stats again or copy them from the checkpoint's assets") from e
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        raise ValueError(f'{path}: expected {{"norm_stats": {{key: {{mean, std, q01, q99}}}}}}, got top-level keys {list(data) if isinstance(data, dict) else type(data).__name__}')
    out = {}
    for key, value in data["norm_stats"].items():
        if not isinstance(value, dict) or "mean" not in value or "std" not in value:
            raise ValueError(f"{path}: norm_stats[{key!r}] must be an object with 'mean' and 'std' lists")
        try:
            out[key] = NormStats(mean=value["mean"], std=value["std"], q01=value.get("q01"), q99=value.get("q99"))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: norm_stats[{key!r}] is invalid: {e}") from e
    return out


def _fit(stat: np.ndarray, dim: int, pad: float) -> np.ndarray:
    """openpi semantics: slice stats to x's last dim, or pad them with ``pad`` when x is wider."""
    if stat.shape[-1] >= dim:
        return stat[..., :dim]
    return np.concatenate([stat, np.full(dim - stat.shape[-1], pad)])


def normalize(x: np.ndarray, stats: NormStats, *, use_quantiles: bool = False, min_scale: float = MIN_SCALE) -> np.ndarray:
    """z-score ``(x − mean)/(std + 1e-6)`` or quantile ``(x − q01)/(q99 − q01 + 1e-6)·2 − 1`` over the last axis."""
    x = np.asarray(x)
    stats = stats.clamped(min_scale)
    dim = x.shape[-1]
    if use_quantiles:
        if stats.q01 is None:
            raise ValueError("quantile normalization needs q01/q99 in the norm stats")
        q01, q99 = _fit(stats.q01, dim, -1.0), _fit(stats.q99, dim, 1.0)
        out = (x - q01) / (q99 - q01 + _EPS) * 2.0 - 1.0
    else:
        out = (x - _fit(stats.mean, dim, 0.0)) / (_fit(stats.std, dim, 1.0) + _EPS)
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def unnormalize(x: np.ndarray, stats: NormStats, *, use_quantiles: bool = False, min_scale: float = MIN_SCALE) -> np.ndarray:
    """Inverse of :func:`normalize`; extra dims beyond the stats pass through (quantile) or use (0, 1) (z-score)."""
    x = np.asarray(x)
    stats = stats.clamped(min_scale)
    dim = x.shape[-1]
    if use_quantiles:
        if stats.q01 is None:
            raise ValueError("quantile unnormalization needs q01/q99 in the norm stats")
        d = min(stats.q01.shape[-1], dim)
        q01, q99 = stats.q01[:d], stats.q99[:d]
        head = (x[..., :d] + 1.0) / 2.0 * (q99 - q01 + _EPS) + q01
        out = np.concatenate([head, x[..., d:]], axis=-1) if d < dim else head
    else:
        out = x * (_fit(stats.std, dim, 1.0) + _EPS) + _fit(stats.mean, dim, 0.0)
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def normalize_dict(data: Mapping, norm_stats: Mapping[str, NormStats], *, use_quantiles: bool = False, strict: bool = False) -> dict:
    """Normalize the keys of ``data`` that have stats (openpi ``Normalize``: absent keys skipped unless ``strict``)."""
    return _apply_dict(data, norm_stats, normalize, use_quantiles, strict)


def unnormalize_dict(data: Mapping, norm_stats: Mapping[str, NormStats], *, use_quantiles: bool = False, strict: bool = True) -> dict:
    """Unnormalize the keys of ``data`` that have stats (openpi ``Unnormalize``: strict by default)."""
    return _apply_dict(data, norm_stats, unnormalize, use_quantiles, strict)


def _apply_dict(data, norm_stats, fn, use_quantiles, strict) -> dict:
    out = dict(data)
    for key, stats in norm_stats.items():
        if key not in out:
            if strict:
                raise KeyError(f"norm stats have key {key!r} but the data has only {sorted(out)}")
            continue
        out[key] = fn(out[key], stats, use_quantiles=use_quantiles)
    return out
