"""Stable seeds for simulator configurations, independent of ``PYTHONHASHSEED``."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from ints and strings (strings via CRC32, so it does not depend on PYTHONHASHSEED)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    if any(i < 0 for i in ints):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return int(np.random.SeedSequence(ints).generate_state(1)[0] >> 1)
