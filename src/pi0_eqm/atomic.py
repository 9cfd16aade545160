"""Atomic file and directory publication (stdlib only).

Writers build their output in a hidden temporary sibling of the destination and publish it with ``rename``, so a
reader never sees a half-written file or directory: either the old complete one, or the new complete one.
Everything is flushed (``fsync``) before it is renamed into place. What they publish has the permissions a plain
``open``/``mkdir`` would give under the process's umask (a replaced file keeps its mode), not the private modes of
``tempfile``.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
import tempfile
import uuid


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to stable storage (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root`` (and the directories) to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def umask() -> int:
    """The process's file-mode creation mask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path``: ``<parent>/.<name>.<tag>-<8 hex digits>`` (not created)."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def discard(path: Path, tag: str = "deleting") -> None:
    """Delete the directory ``path``: rename it to a hidden sibling first, so its name is free at once even if the
    deletion is slow or interrupted."""
    trash = sibling(path, tag)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    An existing ``path`` is never truncated: if anything fails it keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path, *, overwrite: bool = True) -> bool:
    """Flush the finished directory ``tmp`` and rename it to ``final``; returns whether ``tmp`` was published.

    An existing ``final`` is replaced only if ``overwrite``: it is moved aside, ``tmp`` is renamed into its place
    (on failure the old copy is moved back) and the old copy is deleted last. Without ``overwrite``, if ``final``
    exists (a concurrent writer finished first) ``tmp`` is deleted and the existing ``final`` is kept.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and final.exists():
        old = sibling(final, "old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            # Lost a race with a concurrent writer whose complete output is now in place: keep it.
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    fsync_dir(final.parent)
    return True


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool, mode: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success publish it as ``final`` (:func:`publish_dir`).

    On any exception the temporary directory is deleted and ``final`` is untouched. The directory gets ``mode``, or
    what ``mkdir`` gives under the umask.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, mode if mode is not None else 0o777 & ~umask())
        yield tmp
        publish_dir(tmp, final, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
