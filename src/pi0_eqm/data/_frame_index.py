"""Per-episode frame index of a LeRobot dataset's parquet images: one Arrow IPC file per episode holding each
frame's encoded image bytes, memory-mapped so that reading one frame touches only that frame's bytes.

Parquet can only be read a whole row group (and for dictionary-encoded image columns a whole column chunk) at a
time, so random access straight from the parquet files costs a large read per sample. The index is built once per
episode, the first time one of its frames is read, and reused by every later run (HF ``datasets``, which lerobot and
openpi read LeRobot datasets with, keeps a memory-mapped Arrow copy in the same way). Files are named after the
parquet file's size and modification time, so a changed episode gets a fresh index; each file is written atomically.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from collections.abc import Mapping
import hashlib
import os
from pathlib import Path
import threading

import pyarrow as pa

from pi0_eqm.atomic import atomic_write_bytes

FRAME_CACHE_ENV = "PI0_FRAME_CACHE"
_DEFAULT_ROOT = "~/.cache/pi0_eqm/lerobot_frames"


def default_directory(dataset_root: Path) -> Path:
    """``$PI0_FRAME_CACHE`` (default ``~/.cache/pi0_eqm/lerobot_frames``) / a digest of the dataset's path."""
    base = Path(os.environ.get(FRAME_CACHE_ENV, _DEFAULT_ROOT)).expanduser()
    return base / hashlib.sha1(str(Path(dataset_root).resolve()).encode()).hexdigest()[:16]


class FrameIndex:
    """Encoded frames by ``(episode, frame)``; ``max_open`` memory-mapped episode files are kept open."""

    def __init__(self, directory: Path, max_open: int = 256):
        self.directory = Path(directory)
        self._open: collections.OrderedDict[Path, pa.Table] = collections.OrderedDict()
        self._max_open = max(1, max_open)
        self._lock = threading.Lock()

    def path(self, episode: int, source: Path) -> Path:
        st = source.stat()
        return self.directory / f"episode_{episode:06d}-{st.st_size}-{st.st_mtime_ns}.arrow"

    def _table(self, path: Path, build: Callable[[], Mapping[str, list[bytes]]]) -> pa.Table:
        with self._lock:
            if path in self._open:
                self._open.move_to_end(path)
                return self._open[path]
        if not path.is_file():
            columns = build()
            table = pa.table({k: pa.array(v, type=pa.binary()) for k, v in columns.items()})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            atomic_write_bytes(path, sink.getvalue().to_pybytes())
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        with self._lock:
            self._open[path] = table
            while len(self._open) > self._max_open:
                self._open.popitem(last=False)
        return table

    def frame(self, episode: int, frame: int, source: Path,
              build: Callable[[], Mapping[str, list[bytes]]]) -> dict[str, bytes]:
        """``{key: encoded image}`` of one frame; ``build`` returns every frame's bytes per key (first use only)."""
        table = self._table(self.path(episode, source), build)
        if not 0 <= frame < table.num_rows:
            raise IndexError(f"frame {frame} out of range for episode {episode} ({table.num_rows} frames)")
        return {key: table.column(key)[frame].as_py() for key in table.column_names}
