"""Binomial success-rate statistics for closed-loop evaluation."""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Well behaved at 0 and n successes and for small ``n`` (unlike the normal approximation). ``n == 0`` carries no
    information and gives ``(0.0, 1.0)``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp against rounding; the exact bounds are 0 (resp. 1) when successes == 0 (resp. n).
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def success_summary(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | list[float] | None]:
    """``{"n", "successes", "success_rate", "ci95": [lo, hi]}`` (key named after ``confidence``), JSON-ready."""
    lo, hi = wilson_interval(successes, n, confidence)
    return {
        "n": int(n),
        "successes": int(successes),
        "success_rate": successes / n if n else None,
        f"ci{round(confidence * 100):d}": [lo, hi],
    }
