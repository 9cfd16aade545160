"""Helpers for the benchmark-script tests: load a script under ``scripts/`` or ``lab/scripts/`` as a module, and the
shared Meta-World demos and trained checkpoints (``metaworld_home``)."""

import dataclasses
import fcntl
import importlib.util
from pathlib import Path
import sys

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    """``scripts/<name>.py`` (a user tool) or else ``lab/scripts/<name>.py`` (a study) as an imported module
    (registered in ``sys.modules`` so dataclasses resolve)."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path if path.exists() else REPO / "lab" / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TASKS = ("handle-press-v3", "coffee-button-v3")


@dataclasses.dataclass(frozen=True)
class MetaWorldHome:
    """Shared demos, checkpoints and assets of the benchmark-script tests (see ``metaworld_home``)."""

    data: Path
    ckpt: Path
    assets: Path

    def args(self) -> dict:
        """The arguments every reduced study run shares: 2 tasks, 2 demos each, 8 steps of batch 8."""
        return dict(demos_per_task=2, train_steps=8, batch_size=8, tasks=TASKS, progress=False,
                    checkpoint_base_dir=str(self.ckpt), assets_base_dir=str(self.assets))


@pytest.fixture(scope="session")
def metaworld_home(tmp_path_factory) -> MetaWorldHome:
    """Real Meta-World demos (2 tasks × 2) and both decoders trained 8 steps at seed 1 (``seed1_t8``, the decoder
    study's naming), built once for every test process (in a directory the pytest-xdist workers share, under a file
    lock) and reused by the reduced decoder study, real-time study and main job, which train only what they add."""
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.envs.demos import generate_dataset

    root = tmp_path_factory.getbasetemp().parent / "metaworld_home"
    root.mkdir(parents=True, exist_ok=True)
    home = MetaWorldHome(root / "data", root / "ckpt", root / "assets")
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        vd = generate_dataset(home.data / "metaworld", tasks=TASKS, episodes_per_task=2, resolution=64,
                              progress=False)
        for name in ("pi0_eqm_metaworld", "pi0_metaworld"):
            cfg = bench.configure_run(name, str(vd.parent.resolve()), exp_name="seed1_t8", seed=1, train_steps=8,
                                      batch_size=8, checkpoint_base_dir=str(home.ckpt),
                                      assets_base_dir=str(home.assets))
            bench.train_or_reuse(cfg, False, False)
    return home
