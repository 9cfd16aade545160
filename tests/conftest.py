import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# LeRobot frame indexes of the tests' generated datasets stay in the repo's .cache, not the user's.
os.environ.setdefault("PI0_FRAME_CACHE", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".cache",
                                                                      "lerobot_frames")))

# One persistent compilation cache for the whole run, in the repo's .cache (empty on a clean clone): the test process,
# every xdist worker and every script a test starts (train.py reads PI0_JAX_CACHE) load the executables another
# process already compiled instead of compiling the same tiny programs again.
_JAX_CACHE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".cache", "jax"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
os.environ.setdefault("PI0_JAX_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import dataclasses  # noqa: E402
import gc  # noqa: E402
from pathlib import Path  # noqa: E402
import subprocess  # noqa: E402
import urllib.request  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from pi0_eqm.training import loop  # noqa: E402
from pi0_eqm.training.config import get_config  # noqa: E402
from pi0_eqm.training.norm_stats import compute_for_config  # noqa: E402
from tests import cpu_time  # noqa: E402
from tests.policies.conftest import make_libero_dataset  # noqa: E402

# Compiled executables are kept across test modules (each module would otherwise compile the same model functions and
# the op-by-op primitives of eager code again) until the process holds many memory mappings or much memory: each CPU
# executable keeps ~3 mappings (measured: 300 compiles +967 mappings, freed by ``jax.clear_caches``), and the kernel's
# ``vm.max_map_count`` (65 530) running out was the suspected cause of the segfaults inside XLA compiles seen when
# nothing was ever freed.
_MAX_MAPPINGS = 30_000
_MAX_RSS_BYTES = 4 * 2**30  # 3 test workers and the lane within 24 GiB (20 GB peak measured at 6 GiB)


def _mappings_and_rss() -> tuple[int, int]:
    try:
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _MAX_MAPPINGS + 1, 0  # cannot tell: free them
    return maps, rss


# Seconds each of the heaviest modules took in a clean-clone CI run (3 workers on 2 cores, stop 26): the longest
# start first (LPT), so no long module starts when the other workers have nothing left. Modules not listed that
# hold a ``slow`` test come next, then the rest in collection order. xdist would otherwise reorder the modules by
# their number of tests (``--loadscope-reorder``, its default; pyproject's addopts turn it off).
MODULE_SECONDS = {
    "tests/training/test_lora_training.py": 300, "tests/training/test_faults_kill.py": 245,
    "tests/models/test_ki.py": 200, "tests/training/test_distributed.py": 190, "tests/envs/test_aloha_sim.py": 160,
    "tests/training/test_ki_training.py": 160, "tests/decoders/test_prefix_training.py": 140,
    "tests/decoders/test_eqm_training.py": 140, "tests/training/test_augment.py": 135,
    "tests/models/test_pi05.py": 130, "tests/training/test_faults.py": 115, "tests/benchmarks/test_realtime_study.py": 110,
    "tests/decoders/test_realtime.py": 105, "tests/benchmarks/test_decoder_study.py": 100,
    "tests/benchmarks/test_ki_ablation.py": 100, "tests/benchmarks/test_embedded.py": 90,
    "tests/examples/test_libero_end_to_end.py": 85, "tests/policies/test_pi05_policy.py": 85,
    "tests/training/test_checkpoints.py": 80, "tests/benchmarks/test_device_benchmark.py": 70,
    "tests/training/test_config_record.py": 60, "tests/analysis/test_notebook.py": 60,
    "tests/training/test_train_loop.py": 60, "tests/examples/test_vla_eval_libero.py": 45,
    "tests/test_architecture.py": 45, "tests/models/test_lora.py": 40, "tests/policies/test_policy.py": 40,
}


def pytest_addoption(parser):
    parser.addoption("--cpu-time", action="store_true",
                     help="report the CPU seconds of every test and module (tests/cpu_time.py)")


def pytest_configure(config):
    if config.getoption("--cpu-time"):
        config.pluginmanager.register(cpu_time, "cpu_time")


def pytest_collection_modifyitems(config, items):
    """The heaviest modules first, longest first (``MODULE_SECONDS``), then the other modules holding a ``slow``
    test, then the rest (stable order otherwise): under ``--dist loadfile`` a long module started last keeps one
    worker busy while the others have nothing left."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def key(item):
        module = item.nodeid.split("::")[0]
        return -MODULE_SECONDS.get(module, 0), module not in slow

    items.sort(key=key)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    """After a test module, drop every compiled executable if the process is near the mapping or memory bound."""
    yield
    maps, rss = _mappings_and_rss()
    if maps > _MAX_MAPPINGS or rss > _MAX_RSS_BYTES:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def trained_libero(tmp_path_factory):
    """The real pipeline once per test session: LeRobot dataset → norm stats → 4 training steps of ``debug_libero``
    → a checkpoint on disk, shared read-only by every test that serves, exports or decodes a trained checkpoint."""
    tmp = tmp_path_factory.mktemp("libero")
    ds = make_libero_dataset(tmp / "data" / "debug_libero")
    cfg = get_config("debug_libero")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(ds)), num_train_steps=4,
                              save_interval=4, checkpoint_base_dir=str(tmp / "ckpt"),
                              assets_base_dir=str(tmp / "assets"), async_checkpoint=False)
    compute_for_config(cfg)
    loop.train(cfg, progress=False)
    return cfg, cfg.checkpoint_dir / "4"


def _index_reachable() -> bool:
    url = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or "https://pypi.org/simple"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/openpi-client/", timeout=15) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def openpi_client_python() -> str:
    """Python of a separate env holding the REAL PyPI openpi-client (built once, cached under .cache/; the script
    serialises concurrent callers, such as parallel test workers, with its own lock)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "openpi_client_env.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        if not _index_reachable():
            pytest.skip("PyPI is unreachable, so the real openpi-client cannot be installed:\n" + proc.stderr[-2000:])
        pytest.fail(f"scripts/openpi_client_env.sh failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]
