"""Norm stats: openpi's running statistics, norm_stats.json format and atomicity, (un)normalization semantics."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import RunningStats
from pi0_eqm.data.normalize import compute_norm_stats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.normalize import normalize
from pi0_eqm.data.normalize import normalize_dict
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.data.normalize import unnormalize
from pi0_eqm.data.normalize import unnormalize_dict


def test_running_stats_matches_numpy():
    rng = np.random.default_rng(0)
    # Growing ranges across batches force several re-binnings.
    batches = [rng.normal(loc=i, scale=1 + i, size=(500, 3)) for i in range(6)] + [rng.uniform(-50, 50, size=(7, 3))]
    rs = RunningStats()
    for b in batches:
        rs.update(b)
    data = np.concatenate(batches)
    stats = rs.get_statistics()
    assert rs.count == len(data)
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, data.std(0), rtol=1e-10)
    # openpi's estimate is the left edge of the bin holding the ceil(q·n)-th smallest value; re-binning may move a
    # count down by at most one (growing) bin width per re-bin.
    width = (data.max(0) - data.min(0)) / 5000
    ordered = np.sort(data, axis=0)
    for q, got in ((0.01, stats.q01), (0.99, stats.q99)):
        kth = ordered[int(np.ceil(q * len(data))) - 1]
        assert np.all(got <= kth + 1e-9) and np.all(got >= kth - 4 * width), (q, got, kth, width)
    assert np.all(stats.q01 < stats.q99)


def test_running_stats_exact_std_with_large_offset():
    x = 1e6 + np.random.default_rng(1).normal(scale=1e-3, size=(10_000, 1))
    rs = RunningStats()
    for chunk in np.split(x, 10):
        rs.update(chunk)
    np.testing.assert_allclose(rs.get_statistics().std, x.std(0), rtol=1e-6)


def test_running_stats_errors():
    rs = RunningStats()
    rs.update(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="need at least 2"):
        rs.get_statistics()
    with pytest.raises(ValueError, match="dim 3, expected 2"):
        rs.update(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        rs.update(np.array([[np.nan, 0.0]]))


def test_save_load_openpi_format(tmp_path):
    stats = {
        "state": NormStats(mean=[0.5, -1.0], std=[1.0, 2.0], q01=[-1.0, -5.0], q99=[2.0, 3.0]),
        "actions": NormStats(mean=[0.1], std=[0.2], q01=[-0.3], q99=[0.4]),
    }
    path = save_norm_stats(tmp_path / "assets" / "physical-intelligence" / "libero", stats)
    assert path.name == "norm_stats.json"
    raw = json.loads(path.read_text())
    assert list(raw) == ["norm_stats"] and set(raw["norm_stats"]) == {"state", "actions"}
    assert raw["norm_stats"]["state"] == {"mean": [0.5, -1.0], "std": [1.0, 2.0], "q01": [-1.0, -5.0], "q99": [2.0, 3.0]}
    assert path.read_text().startswith('{\n  "norm_stats": {\n    "state": {')  # indent 2, like openpi
    assert os.listdir(path.parent) == ["norm_stats.json"]  # no temp file left
    loaded = load_norm_stats(path.parent)
    for key in stats:
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(loaded[key], field), getattr(stats[key], field))
            assert getattr(loaded[key], field).dtype == np.float64

    # openpi files may carry q01/q99 = null.
    path.write_text(json.dumps({"norm_stats": {"state": {"mean": [1.0], "std": [2.0], "q01": None, "q99": None}}}))
    assert load_norm_stats(path.parent)["state"].q01 is None


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"norm_stats": {"state": {"mean": [1.0', "not valid JSON.*truncated"),
        ('{"stats": {}}', "expected .*norm_stats"),
        ('{"norm_stats": {"state": {"mean": [1.0]}}}', "must be an object with 'mean' and 'std'"),
        ('{"norm_stats": {"state": {"mean": [1.0, 2.0], "std": [1.0]}}}', "std has 1 dims but mean has 2"),
        ('{"norm_stats": {"state": {"mean": [1.0], "std": [-1.0]}}}', "std must be >= 0"),
        ('{"norm_stats": {"state": {"mean": [1.0], "std": [1.0], "q01": [2.0], "q99": [1.0]}}}', "q01 must be <= q99"),
    ],
)
def test_load_validation(tmp_path, content, match):
    (tmp_path / "norm_stats.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_norm_stats(tmp_path)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="norm stats not found: .*norm_stats.json"):
        load_norm_stats(tmp_path)


def test_failed_save_never_truncates_existing_file(tmp_path):
    """A real write failure (file-size limit -> EFBIG) keeps the old file intact and leaves no temp file."""
    save_norm_stats(tmp_path, {"state": NormStats(mean=[1.0], std=[1.0])})
    before = (tmp_path / "norm_stats.json").read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, numpy as np
        from pi0_eqm.data.normalize import NormStats, save_norm_stats
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        big = NormStats(mean=np.ones(1000), std=np.ones(1000))
        try:
            save_norm_stats({str(tmp_path)!r}, {{"state": big}})
        except OSError as e:
            print("failed", e.errno)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "failed 27" in out.stdout, out.stderr[-2000:]  # errno 27 = EFBIG
    assert (tmp_path / "norm_stats.json").read_bytes() == before
    assert os.listdir(tmp_path) == ["norm_stats.json"]


def test_normalize_semantics():
    stats = NormStats(mean=[1.0, 2.0, 3.0], std=[2.0, 4.0, 1.0], q01=[0.0, -1.0, 2.0], q99=[2.0, 3.0, 4.0])
    x = np.array([[3.0, 6.0, 3.0]])
    np.testing.assert_allclose(normalize(x, stats), [[2 / (2 + 1e-6), 4 / (4 + 1e-6), 0.0]])
    np.testing.assert_allclose(normalize(x, stats, use_quantiles=True), [[3 / (2 + 1e-6) * 2 - 1, 7 / (4 + 1e-6) * 2 - 1, 1 / (2 + 1e-6) * 2 - 1]])
    for q in (False, True):
        np.testing.assert_allclose(unnormalize(normalize(x, stats, use_quantiles=q), stats, use_quantiles=q), x)
    # Stats are sliced to a narrower x (openpi Normalize) ...
    np.testing.assert_allclose(normalize(x[:, :2], stats), normalize(x, stats)[:, :2])
    # ... and a wider (padded) x: z-score uses (0, 1) for the extra dims, quantile passes them through.
    wide = np.array([[3.0, 6.0, 3.0, 0.5, -0.5]], dtype=np.float32)
    out = unnormalize(wide, stats)
    np.testing.assert_allclose(out[:, 3:], wide[:, 3:] * (1 + 1e-6), rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(unnormalize(wide, stats, use_quantiles=True)[:, 3:], wide[:, 3:])


def test_near_constant_dims_are_clamped():
    stats = NormStats(mean=[0.0, 0.04], std=[1.0, 0.0], q01=[-2.0, 0.04], q99=[2.0, 0.04])
    with pytest.warns(UserWarning, match=r"dims \[1\] are near-constant"):
        z = normalize(np.array([0.0, 0.05]), stats)
    assert abs(z[1]) < 20  # unclamped it would be 0.01 / 1e-6 = 1e4 (openpi #814)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = normalize(np.array([0.0, 0.05]), stats, use_quantiles=True)
        assert abs(q[1]) < 20
        np.testing.assert_allclose(unnormalize(q, stats, use_quantiles=True), [0.0, 0.05])


def test_dict_helpers_strictness():
    stats = {"state": NormStats(mean=[1.0], std=[1.0]), "actions": NormStats(mean=[2.0], std=[1.0])}
    out = normalize_dict({"state": np.array([2.0]), "prompt": "hi"}, stats)  # absent "actions" skipped
    np.testing.assert_allclose(out["state"], [1 / (1 + 1e-6)])
    assert out["prompt"] == "hi"
    with pytest.raises(KeyError, match="norm stats have key 'actions'"):
        unnormalize_dict({"state": np.array([0.0])}, stats)


def test_compute_norm_stats_from_chunks(episodes):
    ds = ChunkedDataset(episodes, horizon=4)
    with pytest.warns(UserWarning, match=r"norm stats state: dims \[7\] are near-constant"):
        stats = compute_norm_stats(ds.low_dim_samples())
    assert set(stats) == {"state", "actions"}
    states = np.concatenate([ep.steps["observation/state"] for ep in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["state"].mean, states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"].std[:7], states.std(0)[:7], rtol=1e-6)
    assert stats["state"].std[7] == pytest.approx(1e-3)  # the constant gripper dim, clamped
    # Actions: every non-padded action of every chunk.
    chunks = [ds[i] for i in range(len(ds))]
    actions = np.concatenate([c["actions"][~c["action_is_pad"]] for c in chunks]).astype(np.float64)
    np.testing.assert_allclose(stats["actions"].mean, actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions"].std, actions.std(0), rtol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        limited = compute_norm_stats(ds.low_dim_samples(), keys=("state",), max_frames=5)
    np.testing.assert_allclose(limited["state"].mean[:7], states[:5, :7].mean(0), rtol=1e-6)
    with pytest.raises(KeyError, match="sample 0 has no key 'velocity'"):
        compute_norm_stats(ds.low_dim_samples(), keys=("velocity",))
