"""Atomic file and directory publication.

Writers build their output in a hidden temporary sibling and publish it with one ``rename``, so a reader never sees a
half-written file or dataset: either the old complete one, or the new complete one.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
import tempfile
import uuid


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root`` (and the directories) to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    An existing ``path`` is never truncated: if anything fails it keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success publish it as ``final`` with one rename.

    On any exception the temporary directory is deleted and ``final`` is untouched. With ``overwrite`` an existing
    ``final`` is first moved aside, then replaced, then deleted. Without it, if ``final`` appears while we were writing
    (another process finished first), our copy is discarded and theirs is kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists() and overwrite:
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                # Lost a race with a concurrent writer whose complete output is now in place: keep it.
                shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
