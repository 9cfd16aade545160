"""Params-only checkpoints in openpi's layout: ``<dir>/params`` holding ``{"params": <pure dict>}`` (OCDBT).

``restore_params`` reads openpi checkpoints (with or without trailing ``value`` keys from nnx training states);
``save_params`` writes one atomically. Used by the weight loaders, the policy and the exporter.
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import os
from pathlib import Path
import shutil
from typing import Any

from etils import epath
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from pi0_eqm.atomic import publish_dir
from pi0_eqm.atomic import sibling
from pi0_eqm.errors import CheckpointReadError
from pi0_eqm.errors import one_line

PARAMS_ITEM = "params"


def _item_metadata_tree(item_dir: Path):
    return ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir)).tree


@contextlib.contextmanager
def _reading(path: Path):
    """Reports a failed read of the checkpoint at ``path`` (TensorStore raises ``ValueError`` for damaged, truncated
    or missing files) as a :class:`CheckpointReadError` naming it; a permission error stays a ``PermissionError``."""
    try:
        yield
    except PermissionError as e:
        raise PermissionError(f"cannot read the params checkpoint {path}: permission denied ({one_line(e)}); give "
                              "this user read access to it and run the same command again") from e
    except (ValueError, OSError) as e:
        raise CheckpointReadError(f"cannot read the params checkpoint {path}: {one_line(e)}. Its files are damaged "
                                  "or incomplete: export the step again, or use another step or export") from e


def _default_sharding() -> jax.sharding.Sharding:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("x",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _resolve_params_dir(path: str | os.PathLike) -> Path:
    if str(path).startswith(("gs://", "s3://", "http://", "https://")):
        raise FileNotFoundError(
            f"remote checkpoint paths are not supported at run time ({path}); copy it to local disk first, e.g. "
            f"`gsutil -m cp -r {path} <local_dir>`, and pass the local path"
        )
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"params checkpoint not found: {path}")
    if not (path / "_METADATA").is_file() and (path / PARAMS_ITEM / "_METADATA").is_file():
        path = path / PARAMS_ITEM  # given the checkpoint (or step) directory instead of its params/
    if not (path / "_METADATA").is_file():
        raise FileNotFoundError(
            f"{path} is not an orbax params checkpoint (no _METADATA); expected an openpi-style '<checkpoint>/params' "
            "directory"
        )
    return path


def _strip_value_suffix(flat: dict[tuple, Any]) -> dict[tuple, Any]:
    if flat and all(k[-1] == "value" for k in flat):
        return {k[:-1]: v for k, v in flat.items()}
    return flat


def restore_params(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    sharding: jax.sharding.Sharding | Mapping | None = None,
    restore_type: type = jax.Array,
) -> dict:
    """Read an openpi ``<checkpoint>/params`` directory into a nested pure dict (openpi's ``restore_params``).

    Trailing ``value`` keys (openpi nnx training checkpoints) are stripped. ``dtype`` casts every leaf.
    ``sharding`` is one sharding for all leaves or a nested dict of shardings (paths without ``value``); default
    replicated. ``restore_type=np.ndarray`` gives host numpy arrays (sharding ignored).
    """
    path = _resolve_params_dir(path)
    with _reading(path):
        tree = _item_metadata_tree(path)
    if not isinstance(tree, Mapping) or PARAMS_ITEM not in tree:
        keys = list(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(
            f"{path} does not hold an openpi params checkpoint: expected top-level key 'params', got {keys}"
        )
    flat_meta = flax.traverse_util.flatten_dict(tree[PARAMS_ITEM])
    strip = bool(flat_meta) and all(k[-1] == "value" for k in flat_meta)

    if restore_type is np.ndarray:
        flat_args = {k: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype) for k in flat_meta}
    else:
        if isinstance(sharding, Mapping):
            flat_sharding = flax.traverse_util.flatten_dict(sharding)
        else:
            single = sharding if sharding is not None else _default_sharding()
            flat_sharding = None
        flat_args = {}
        for k in flat_meta:
            if flat_sharding is not None:
                key = k[:-1] if strip else k
                if key not in flat_sharding:
                    raise KeyError(f"no sharding given for param {'/'.join(key)}")
                s = flat_sharding[key]
            else:
                s = single
            flat_args[k] = ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=s, dtype=dtype)
    item = {PARAMS_ITEM: tree[PARAMS_ITEM]}
    restore_args = {PARAMS_ITEM: flax.traverse_util.unflatten_dict(flat_args)}
    with _reading(path), ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args))[PARAMS_ITEM]
    flat = flax.traverse_util.flatten_dict(restored)
    return flax.traverse_util.unflatten_dict(_strip_value_suffix(flat))


def save_params(path: str | os.PathLike, params: Mapping, *, overwrite: bool = False) -> Path:
    """Atomically write an openpi-style params checkpoint ``{"params": params}`` (OCDBT) at ``path``.

    The checkpoint is built in a hidden sibling directory and renamed into place, so ``path`` is either absent,
    the old complete checkpoint, or the new complete one. Cast to bf16 before calling if wanted.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path, "tmp")
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(epath.Path(tmp), args=ocp.args.PyTreeSave({PARAMS_ITEM: dict(params)}))
        publish_dir(tmp, path)
    except BaseException:
        for leftover in path.parent.glob(f"{tmp.name}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    return path
