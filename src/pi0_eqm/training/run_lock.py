"""The lock of a training run directory: one trainer at a time, stale locks of dead trainers taken over.

The lock is the file ``<run>/.pi0_eqm.lock`` holding ``{"pid", "host", "start", "acquired"}`` of the holder
(``start`` = the process start time from ``/proc``, so a re-used PID does not look alive). It is created
atomically: the record is written to a private temporary file which is then hard-linked to the lock name, which
fails if the name exists. A lock whose holder runs on this host and is no longer alive (or whose PID now belongs to
a process started later) is stale and is taken over with a warning. A lock held by a live process, or by any
process of another host, refuses the second trainer with :class:`RunLockedError`. The holding process itself may
re-acquire its own lock (a run directory opened twice in one process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
import socket
import time

logger = logging.getLogger(__name__)

LOCK_FILE = ".pi0_eqm.lock"


class RunLockedError(RuntimeError):
    """Another live trainer holds the lock of the run directory."""


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc/<pid>/stat``); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces; the fields after it are space-separated.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = process_start_time(pid)
    return start is None or now is None or now == start


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict) -> str:
    acquired = record.get("acquired")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(acquired)) if isinstance(acquired, (int, float)) else "?"
    return f"process {record.get('pid')} on host {record.get('host')!r} (since {since})"


class RunLock:
    """The lock of one run directory, held by this process once :meth:`acquire` returned."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start_time(os.getpid())}
        self.held = False

    def _mine(self, record: dict | None) -> bool:
        return record is not None and all(record.get(k) == v for k, v in self.record.items())

    def _stale_reason(self, record: dict | None) -> str | None:
        """Why the existing lock ``record`` may be taken over, or None if its holder may still be running."""
        if record is None:
            return "its lock file is unreadable"
        if record.get("host") != self.record["host"]:
            return None  # cannot check a process on another host
        pid = record.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return "its lock file names no process"
        if not _alive(pid, record.get("start")):
            return f"process {pid} is no longer running"
        return None

    def _try_create(self) -> bool:
        record = {**self.record, "acquired": time.time()}
        tmp = self.path.parent / f".{LOCK_FILE}.{os.getpid()}.{time.monotonic_ns()}"
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def acquire(self) -> None:
        """Take the lock (the run directory must exist); raise :class:`RunLockedError` if a live trainer holds it."""
        for _ in range(5):
            if self._try_create():
                self.held = True
                return
            existing = _read(self.path)
            if self._mine(existing):
                self.held = True
                return
            reason = self._stale_reason(existing)
            if reason is None:
                raise RunLockedError(
                    f"the run directory {self.path.parent} is in use by another trainer: {_describe(existing)} holds "
                    f"its lock {self.path}. Wait for it to finish or stop it first; if that process is no longer "
                    "running (e.g. its host went down), delete the lock file and start again."
                )
            logger.warning("taking over the stale lock %s of %s: %s", self.path, _describe(existing or {}), reason)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        raise RunLockedError(f"could not take the lock {self.path}: other trainers keep taking it")

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        if self.held and self._mine(_read(self.path)):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False
