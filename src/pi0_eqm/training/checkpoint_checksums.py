"""Per-array checksums of a checkpoint step, and the finiteness of its float arrays.

At save, :func:`array_record` computes for every array leaf of the ``params`` and ``train_state`` items two 32-bit
sums of its raw bits (on device, jitted): ``sum(bits)`` and ``sum(bits * (2 i + 1))`` modulo 2**32 over the
flattened element index ``i``. The second changes under any single-bit flip (the weight is odd) and under
swapped elements; both are integer sums, so they are exact and independent of how the array is sharded. The
record (``{"format": 1, "step": N, "arrays": {"<item>/<path>": {"sum", "weighted", "dtype", "shape"}}, "assets":
{"<path under assets/>": sha256}}``) is saved as the step's ``integrity`` JSON item, committed with the arrays:
``step`` is the step number it was saved as and ``assets`` the SHA-256 of every file the step ships under
``assets/`` (norm stats, tokenizer files). At restore, :func:`verify` recomputes the sums of the arrays read back
and lists every array whose sums differ, and every float array holding a NaN or an infinity. Records written before
``step`` and ``assets`` existed have neither; nothing is compared for them.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 1
_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _bits(x: jax.Array) -> jax.Array:
    """The raw bits of ``x`` as a flat uint32 vector (one entry per 1/2/4 bytes; 8-byte elements give two)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    return jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32).ravel()


def _one(x: jax.Array) -> jax.Array:
    """``[sum(bits), sum(bits * (2 i + 1)), all finite]`` (uint32, wrapping) of one array."""
    bits = _bits(x)
    weight = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32),
                      finite.astype(jnp.uint32)])


@functools.cache
def _jitted():
    return jax.jit(lambda leaves: [_one(x) for x in leaves])


def _flat(items: Mapping[str, Any]) -> dict[str, jax.Array]:
    out = {}
    for item, tree in items.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
                out["/".join([item, *(_key_str(k) for k in path)])] = leaf
    return out


def _sums(flat: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    names = list(flat)
    values = jax.device_get(_jitted()([jnp.asarray(flat[n]) for n in names]))
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def file_digest(data: bytes) -> str:
    """The SHA-256 (hex) the record keeps for a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def array_record(items: Mapping[str, Any], *, step: int | None = None,
                 assets: Mapping[str, str] | None = None) -> dict:
    """The integrity record of ``{item name: tree of arrays}``, the step number it is saved as and the digests of the
    step's asset files (``{path under assets/: file_digest}``); see the module docstring."""
    flat = _flat(items)
    arrays = {
        name: {"sum": int(v[0]), "weighted": int(v[1]), "dtype": str(flat[name].dtype),
               "shape": list(flat[name].shape)}
        for name, v in _sums(flat).items()
    }
    record = {"format": FORMAT, "arrays": arrays}
    if step is not None:
        record["step"] = int(step)
    if assets is not None:
        record["assets"] = dict(sorted(assets.items()))
    return record


def verify(items: Mapping[str, Any], record: Mapping | None) -> list[str]:
    """Problems of the restored ``{item name: tree}``: non-finite float arrays, and (when ``record`` is given)
    arrays whose checksums differ from the saved ones or that the record does not list. Arrays restored with a
    different dtype than they were saved with are not compared."""
    flat = _flat(items)
    sums = _sums(flat)
    problems = [f"{name}: holds NaN or infinite values" for name, v in sums.items() if not v[2]]
    if record is None:
        return problems
    if not isinstance(record, Mapping) or record.get("format") != FORMAT or not isinstance(record.get("arrays"), Mapping):
        return [*problems, "integrity record is not in the expected format"]
    saved = record["arrays"]
    for name, v in sums.items():
        entry = saved.get(name)
        if not isinstance(entry, Mapping):
            problems.append(f"{name}: not in the integrity record")
        elif entry.get("dtype") != str(flat[name].dtype):
            continue
        elif (entry.get("sum"), entry.get("weighted")) != (int(v[0]), int(v[1])):
            problems.append(f"{name}: checksum mismatch (the data read back differs from the data saved)")
    return problems
