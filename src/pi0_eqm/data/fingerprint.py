"""A content fingerprint of a dataset on disk, cheap enough to take at every training start.

SHA-256 over every regular file under the dataset root (sorted by relative path; hidden names skipped): its relative
path, its size, and its first and last :data:`EDGE_BYTES` bytes. It is not a hash of every byte: a same-size file
whose first and last 16 KiB are unchanged gives the same fingerprint. Those edges hold the parts a regenerated or
replaced dataset changes (Parquet footers with their column statistics, MP4 and TFRecord headers, JSON metadata
whole when small), so a same-path, same-size swap is seen without reading hundreds of gigabytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EDGE_BYTES = 16 * 1024


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def content_fingerprint(root: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the files under ``root`` (or of ``root`` itself when it is a file); see the module."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no dataset at {root} to fingerprint")
    digest = hashlib.sha256()
    for path in _files(root):
        rel = path.name if path == root else path.relative_to(root).as_posix()
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(EDGE_BYTES)
            if size > 2 * EDGE_BYTES:
                f.seek(size - EDGE_BYTES)
            tail = f.read(EDGE_BYTES) if size > EDGE_BYTES else b""
        digest.update(f"{rel}\0{size}\0".encode())
        digest.update(hashlib.sha256(head).digest())
        digest.update(hashlib.sha256(tail).digest())
    return f"sha256:{digest.hexdigest()}"
