"""The episode record every benchmark runner keeps: an append-only JSONL file, one finished episode per line.

Each line is written and flushed to disk (``fsync``) as soon as its episode ends, so a runner that is killed or
stopped keeps every finished episode; a line torn by an interrupted write can only be the last one, and it is left
out when the file is read back (that episode runs again). A rerun reads the file and skips the episodes already
there, which makes every runner resumable: the Meta-World evaluator (``scripts/eval.py``) and the LIBERO runner
(``examples/libero/main.py``) both use it, and a new benchmark's runner should too (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Hashable
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EpisodeLog:
    """``<path>``: one JSON object per finished episode."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """The complete records (a torn last line is left out with a warning, so that episode runs again)."""
        if not self.path.is_file():
            return []
        records = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is incomplete (an interrupted write); that episode runs again", self.path, n)
                continue
            if not isinstance(record, dict):
                raise ValueError(f"{self.path}:{n} is not an episode record (a JSON object); is this file a "
                                 "runner's episode log?")
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (after a newline if the file ends in a torn line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record) + "\n"
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def done(self, key: Callable[[dict[str, Any]], Hashable]) -> set[Hashable]:
        """``key`` of every finished episode (e.g. ``(task, episode index)``)."""
        return {key(r) for r in self.read()}
