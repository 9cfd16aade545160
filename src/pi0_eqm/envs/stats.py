"""Binomial success-rate statistics for closed-loop evaluation."""

from __future__ import annotations

from collections.abc import Sequence
import math
from statistics import NormalDist
from typing import Any

from scipy.stats import binomtest
from scipy.stats import t as student_t


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


def paired_comparison(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    """Two policies on the same episodes (``a[i]`` and ``b[i]`` are the outcomes of episode ``i``).

    Returns the two success rates, their difference ``a − b`` with a normal-approximation CI on the per-episode
    differences, the discordant counts (``a_only``: a succeeded, b failed; ``b_only``) and McNemar's exact two-sided
    p-value (binomial test on the discordant pairs; 1.0 when there are none).
    """

    a = [bool(x) for x in a]
    b = [bool(x) for x in b]
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty outcome lists, got {len(a)} and {len(b)}")
    n = len(a)
    d = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    half = z * math.sqrt(var / n)
    a_only = sum(x > 0 for x in d)
    b_only = sum(x < 0 for x in d)
    p = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {
        "n": n,
        "rate_a": sum(a) / n,
        "rate_b": sum(b) / n,
        "diff": mean,
        f"diff_ci{round(confidence * 100):d}": [mean - half, mean + half],
        "a_only": a_only,
        "b_only": b_only,
        "mcnemar_p": float(min(1.0, p)),
    }


def seed_mean_interval(rates: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed success rates with a Student-t interval across seeds: ``(mean, lo, hi)``."""

    n = len(rates)
    if n == 0:
        raise ValueError("need at least one rate")
    mean = sum(rates) / n
    if n == 1:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
