"""The non-array items of a checkpoint step: norm stats (``assets``) and the data-iterator state (``data_state``).

Norm stats are an orbax item handled by :class:`NormStatsCheckpointHandler`, written as
``<step>/assets/<asset_id>/norm_stats.json`` (openpi's assets layout, plus optional extra asset directories such
as ``<asset_id>/fast_tokenizer``). The data state is a JSON item; :func:`validate_data_state` makes sure it survives
the JSON round trip unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
import dataclasses
import json
import os
from pathlib import Path
import shutil
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from pi0_eqm.data.normalize import NORM_STATS_FILE
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.normalize import norm_stats_bytes
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.training.checkpoint_checksums import file_digest
from pi0_eqm.training.checkpoint_layout import ASSETS_ITEM


def _write_assets(directory: Path, norm_stats: Mapping[str, Mapping[str, NormStats]],
                  asset_dirs: Mapping[str, Path] | None = None) -> None:
    for asset_id, stats in norm_stats.items():
        save_norm_stats(directory / asset_id, stats)
    for rel, src in (asset_dirs or {}).items():  # e.g. <asset_id>/fast_tokenizer
        shutil.copytree(src, directory / rel, dirs_exist_ok=True)


def asset_digests(norm_stats: Mapping[str, Mapping[str, NormStats]] | None,
                  asset_dirs: Mapping[str, Path] | None = None) -> dict[str, str]:
    """``{path under assets/: file_digest}`` of every file :func:`_write_assets` writes for these assets."""
    out = {f"{asset_id}/{NORM_STATS_FILE}": file_digest(norm_stats_bytes(stats))
           for asset_id, stats in (norm_stats or {}).items()}
    for rel, src in (asset_dirs or {}).items():
        for f in sorted(Path(src).rglob("*")):
            if f.is_file():
                out[f"{rel}/{f.relative_to(src).as_posix()}"] = file_digest(f.read_bytes())
    return out


def _read_assets(directory: Path) -> dict[str, dict[str, NormStats]]:
    out = {}
    for path in sorted(directory.rglob(NORM_STATS_FILE)):
        asset_id = path.parent.relative_to(directory).as_posix()
        out[asset_id] = load_norm_stats(path.parent)
    return out


class NormStatsCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Writes ``{asset_id: {key: NormStats}}`` as ``<item>/<asset_id>/norm_stats.json`` (openpi's assets layout)."""

    async def async_save(self, directory: epath.Path, args: NormStatsSave):  # type: ignore[override]
        norm_stats, asset_dirs = args.norm_stats, args.asset_dirs

        async def write():
            if jax.process_index() == 0:
                await asyncio.to_thread(_write_assets, Path(str(directory)), norm_stats, asset_dirs)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="norm_stats_save")]

    def save(self, directory: epath.Path, args: NormStatsSave):  # type: ignore[override]
        if jax.process_index() == 0:
            _write_assets(Path(str(directory)), args.norm_stats, args.asset_dirs)

    def restore(self, directory: epath.Path, args: NormStatsRestore | None = None):  # type: ignore[override]
        return _read_assets(Path(str(directory)))

    def metadata(self, directory: epath.Path):
        return None


@ocp.args.register_with_handler(NormStatsCheckpointHandler, for_save=True)
@dataclasses.dataclass
class NormStatsSave(ocp.args.CheckpointArgs):
    norm_stats: Mapping[str, Mapping[str, NormStats]]
    asset_dirs: Mapping[str, Path] | None = None  # extra asset directories to copy in, keyed by relative path


@ocp.args.register_with_handler(NormStatsCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class NormStatsRestore(ocp.args.CheckpointArgs):
    pass


def validate_norm_stats(norm_stats: Mapping[str, Mapping[str, NormStats]]) -> dict[str, dict[str, NormStats]]:
    """``norm_stats`` as a plain dict after checking it is ``{relative asset id: {key: NormStats}}``."""
    if not isinstance(norm_stats, Mapping):
        raise TypeError(f"norm_stats must be a dict {{asset_id: {{key: NormStats}}}}, got {type(norm_stats).__name__}")
    out = {}
    for asset_id, stats in norm_stats.items():
        parts = Path(asset_id).parts if isinstance(asset_id, str) else ()
        if not parts or Path(asset_id).is_absolute() or any(p in ("..", ".") for p in parts):
            raise ValueError(f"invalid asset id {asset_id!r}: must be a relative path such as 'libero' or 'org/name'")
        if not isinstance(stats, Mapping) or not stats:
            raise TypeError(f"norm_stats[{asset_id!r}] must be a non-empty dict {{key: NormStats}}")
        for key, value in stats.items():
            if not isinstance(value, NormStats):
                raise TypeError(f"norm_stats[{asset_id!r}][{key!r}] is a {type(value).__name__}; expected NormStats")
        out[asset_id] = dict(stats)
    return out


def validate_data_state(data_state: Any) -> dict:
    """``data_state`` as a plain dict after checking it survives a JSON round trip unchanged."""
    if not isinstance(data_state, Mapping):
        raise TypeError(f"data_state must be a JSON-serializable dict, got {type(data_state).__name__}")
    try:
        text = json.dumps(data_state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data_state is not JSON-serializable: {e}") from e
    if json.loads(text) != data_state:
        raise ValueError(
            "data_state does not survive a JSON round trip unchanged (tuples become lists, non-string keys become "
            "strings); use lists and string keys so the resumed iterator sees exactly what was saved"
        )
    return dict(data_state)


def restore_norm_stats(step_dir: str | os.PathLike) -> dict[str, dict[str, NormStats]]:
    """``{asset_id: {key: NormStats}}`` from ``<step_dir>/assets/`` (empty dict if the step has none)."""
    assets = Path(step_dir) / ASSETS_ITEM
    return _read_assets(assets) if assets.is_dir() else {}
