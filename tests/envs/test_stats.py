import math

import pytest

from pi0_eqm.envs.stats import success_summary
from pi0_eqm.envs.stats import wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [  # reference values from the closed-form Wilson score interval with z = 1.959964
        (0, 10, 0.0, 0.277533),
        (5, 10, 0.236593, 0.763407),
        (10, 10, 0.722467, 1.0),
        (1, 20, 0.008881, 0.236131),
        (45, 50, 0.786398, 0.956524),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)


def test_wilson_properties():
    for n in (1, 3, 10, 100):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    # more data -> narrower; higher confidence -> wider
    assert (
        wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0]
        < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]
    )
    w95 = wilson_interval(3, 10)
    w99 = wilson_interval(3, 10, confidence=0.99)
    assert w99[0] < w95[0] and w99[1] > w95[1]
    # symmetric under k -> n - k
    lo, hi = wilson_interval(3, 10)
    lo2, hi2 = wilson_interval(7, 10)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_bad_input():
    for args in [(-1, 5), (6, 5), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*args)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


def test_success_summary():
    s = success_summary(7, 10)
    assert s["n"] == 10 and s["successes"] == 7 and s["success_rate"] == 0.7
    assert s["ci95"] == list(wilson_interval(7, 10))
    assert math.isclose(success_summary(1, 4, confidence=0.9)["ci90"][0], wilson_interval(1, 4, 0.9)[0])
    assert success_summary(0, 0)["success_rate"] is None


def test_paired_comparison_counts_discordant_pairs_and_mcnemar():
    from pi0_eqm.envs.stats import paired_comparison

    a = [True] * 10 + [False] * 2 + [True] * 8
    b = [False] * 10 + [True] * 2 + [True] * 8
    p = paired_comparison(a, b)
    assert (p["n"], p["a_only"], p["b_only"]) == (20, 10, 2)
    assert p["rate_a"] == pytest.approx(0.9) and p["rate_b"] == pytest.approx(0.5) and p["diff"] == pytest.approx(0.4)
    assert p["mcnemar_p"] == pytest.approx(0.03857, abs=1e-4)  # exact binomial: 2·P(X ≤ 2 | n=12, 1/2)
    lo, hi = p["diff_ci95"]
    assert lo < 0.4 < hi and lo > 0
    same = paired_comparison(a, a)
    assert same["diff"] == 0 and same["mcnemar_p"] == 1.0 and same["diff_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([True], [True, False])


def test_seed_mean_interval():
    from pi0_eqm.envs.stats import seed_mean_interval

    mean, lo, hi = seed_mean_interval([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8)
    assert (hi - lo) / 2 == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) · sd / √n
    assert math.isnan(seed_mean_interval([0.5])[1])
