"""Deterministic, checkpointable, multi-host data loading on grain.

Pipeline (grain ``MapDataset``; every step is a pure function of the element index)::

    source (len + getitem, e.g. ChunkedDataset)
      -> shuffle(seed)            global permutation, reshuffled every epoch (seed + epoch)
      -> repeat(num_epochs)       None = forever
      -> map(transform) / random_map(random_transform, seed)   seeded by the global element index
      -> shard: of each global batch of batch_size * shard_count consecutive elements, shard s takes the
         block [s * batch_size, (s + 1) * batch_size)
      -> threads prefetch -> batch(batch_size, drop_remainder) -> dict of stacked numpy arrays

Because sharding cuts one global stream into consecutive blocks, the hosts' shards are disjoint and, per epoch,
cover the data, and the concatenation of the shards' ``k``-th batches (in shard order) is the ``k``-th batch of a
single loader with the global batch size: the global batch sequence, its order and its augmentations do not
depend on the host count. The iterator state is a small JSON-serializable dict;
``set_state`` on a fresh iterator resumes with exactly the batches the old one would have produced next.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import sys
from typing import Any

import grain
import numpy as np

_STATE_FORMAT = "pi0_eqm.data.loader/1"


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch dict: arrays stacked on a new axis 0, strings into ``<U`` arrays."""
    first = samples[0]
    out: dict[str, Any] = {}
    for key in first:
        try:
            values = [s[key] for s in samples]
        except KeyError:
            raise KeyError(f"collate: key {key!r} is missing from some samples of the batch") from None
        if isinstance(first[key], Mapping):
            out[key] = collate(values)
        elif isinstance(first[key], str):
            out[key] = np.asarray(values, dtype=np.str_)
        else:
            arrays = [np.asarray(v) for v in values]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise ValueError(f"collate: key {key!r} has different shapes within the batch: {sorted(shapes)}")
            stacked = np.stack(arrays)
            if stacked.dtype == object:
                raise TypeError(f"collate: key {key!r} produced an object array; samples must hold numeric arrays or str")
            out[key] = stacked
    if len(samples) > 1 and any(set(s) != set(first) for s in samples):
        raise KeyError(f"collate: samples of one batch have different keys; first sample has {sorted(first)}")
    return out


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True
    shard_index: int = 0
    shard_count: int = 1
    even_shards: bool = True  # finite epochs: drop the tail so every shard has the same length
    num_threads: int = 2
    prefetch_buffer_size: int | None = None  # default: 2 batches

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None (forever) or >= 1, got {self.num_epochs}")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got shard_index={self.shard_index}, shard_count={self.shard_count}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")


class DataLoader:
    """Batches of ``source[i]`` samples (see the module docstring); iterate it to get a :class:`LoaderIterator`.

    ``transform(sample) -> sample`` runs per sample (e.g. tokenization); ``random_transform(sample, rng)`` gets a
    ``np.random.Generator`` seeded from ``seed`` and the element index, so augmentations are reproducible on resume.
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        transform: Callable[[dict], dict] | None = None,
        random_transform: Callable[[dict, np.random.Generator], dict] | None = None,
        shard_index: int = 0,
        shard_count: int = 1,
        even_shards: bool = True,
        num_threads: int = 2,
        prefetch_buffer_size: int | None = None,
        batch_fn: Callable[[Sequence[dict]], dict] = collate,
    ):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise TypeError(f"DataLoader source must support len() and [index] (e.g. ChunkedDataset), got {type(source).__name__}")
        if len(source) == 0:
            raise ValueError("DataLoader source is empty")
        self.config = LoaderConfig(
            batch_size=int(batch_size), seed=int(seed), shuffle=shuffle, num_epochs=num_epochs,
            drop_remainder=drop_remainder, shard_index=int(shard_index), shard_count=int(shard_count),
            even_shards=even_shards, num_threads=int(num_threads), prefetch_buffer_size=prefetch_buffer_size,
        )  # fmt: skip
        self.source = source
        self._transform, self._random_transform, self._batch_fn = transform, random_transform, batch_fn
        self.num_samples = len(source)
        self._dataset = self._build()

    def _build(self):

        c = self.config
        ds = grain.MapDataset.source(self.source)
        if c.shuffle:
            ds = ds.shuffle(seed=c.seed)
        ds = ds.repeat(c.num_epochs)
        if self._transform is not None:
            ds = ds.map(self._transform)
        if self._random_transform is not None:
            ds = ds.random_map(self._random_transform, seed=c.seed)
        if c.shard_count > 1:
            ds = self._shard(ds)
        if c.num_epochs is not None and len(ds) < c.batch_size and c.drop_remainder:
            raise ValueError(f"this shard has {len(ds)} samples, fewer than batch_size={c.batch_size}: no full batch")
        prefetch = c.prefetch_buffer_size if c.prefetch_buffer_size is not None else 2 * c.batch_size
        read = grain.ReadOptions(num_threads=c.num_threads, prefetch_buffer_size=prefetch if c.num_threads else 0)
        return ds.to_iter_dataset(read).batch(c.batch_size, drop_remainder=c.drop_remainder, batch_fn=self._batch_fn)

    def _shard(self, ds):
        c = self.config
        n = self.samples_per_shard()
        size, offset = c.batch_size * c.shard_count, c.shard_index * c.batch_size
        return grain.MapDataset.range(sys.maxsize if n is None else n).map(
            lambda j: ds[j // c.batch_size * size + offset + j % c.batch_size])

    def samples_per_shard(self) -> int | None:
        """Samples this shard sees in total (None when repeating forever)."""
        if self.config.num_epochs is None:
            return None
        c, total = self.config, self.num_samples * self.config.num_epochs
        size = c.batch_size * c.shard_count
        full = total // size * c.batch_size

        def tail(shard: int) -> int:  # its part of the last, partial global batch
            return min(max(total % size - shard * c.batch_size, 0), c.batch_size)

        return full + tail(c.shard_count - 1 if c.even_shards else c.shard_index)

    def __len__(self) -> int:
        n = self.samples_per_shard()
        if n is None:
            raise TypeError("an infinite DataLoader (num_epochs=None) has no length")
        return n // self.config.batch_size if self.config.drop_remainder else -(-n // self.config.batch_size)

    def fingerprint(self) -> dict:
        """The settings a saved iterator state depends on."""
        c = self.config
        return {
            "num_samples": self.num_samples, "batch_size": c.batch_size, "seed": c.seed, "shuffle": c.shuffle,
            "num_epochs": c.num_epochs, "drop_remainder": c.drop_remainder, "shard_index": c.shard_index,
            "shard_count": c.shard_count, "even_shards": c.even_shards,
        }  # fmt: skip

    def state_problems(self, state: Any) -> list[str]:
        """Why ``state`` cannot resume this loader (empty = it can): wrong format or types, settings or data that
        differ from this loader's (length, batch size, seed, sharding...), or a position inconsistent with its
        batch count."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            return [f"not a DataLoader state (expected format {_STATE_FORMAT!r}): {str(state)[:200]}"]
        problems = []
        batches, saved, inner = state.get("batches"), state.get("fingerprint"), state.get("grain")
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 0:
            problems.append(f"'batches' must be a non-negative int, got {batches!r}")
        if not isinstance(saved, Mapping):
            problems.append(f"'fingerprint' must be a dict, got {saved!r}")
        else:
            diffs = {k: (saved.get(k), v) for k, v in self.fingerprint().items() if saved.get(k) != v}
            if diffs:
                detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
                problems.append(f"its settings or data changed ({detail})")
        next_index = inner.get("next_index") if isinstance(inner, Mapping) else None
        if not isinstance(next_index, int) or isinstance(next_index, bool) or next_index < 0:
            problems.append(f"'grain' must hold a non-negative int 'next_index', got {inner!r}")
        elif not problems and self.config.num_epochs is None and self.config.drop_remainder \
                and next_index != batches * self.config.batch_size:
            problems.append(f"position next_index={next_index} does not match {batches} batches of "
                            f"{self.config.batch_size} (expected {batches * self.config.batch_size})")
        return problems

    def __iter__(self) -> LoaderIterator:
        return LoaderIterator(self)


class LoaderIterator:
    """Iterator over batches with ``get_state()`` / ``set_state()`` for exact resumption."""

    def __init__(self, loader: DataLoader):
        self._loader = loader
        self._it = iter(loader._dataset)
        self._batches = 0

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        self._batches += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serializable position of the iterator (after the last batch returned)."""
        return {
            "format": _STATE_FORMAT,
            "batches": self._batches,
            "fingerprint": self._loader.fingerprint(),
            "grain": self._it.get_state(),
        }

    def set_state(self, state: Mapping) -> None:
        """Continue from ``state`` (from :meth:`get_state` of a loader with the same settings and data)."""
        problems = self._loader.state_problems(state)
        if problems:
            raise ValueError(f"cannot resume the data loader: {'; '.join(problems)}")
        self._it.set_state(state["grain"])
        self._batches = int(state["batches"])
