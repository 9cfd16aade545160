"""The core install needs no simulator, plotting or notebook package; the wheel ships the library only."""

import subprocess
import sys
import tomllib

from tests.architecture import REPO
from tests.packages import lock_closure

BENCH_ONLY = {"mujoco", "metaworld", "gymnasium", "matplotlib", "imageio", "nbclient", "nbformat", "ipykernel",
              "jupyter-client", "pi0-eqm-lab"}


def _core_closure() -> set[str]:
    """Every package ``pip install pi0_eqm`` (no extras) pulls, per ``uv.lock`` (markers ignored: a superset)."""
    return lock_closure(["pi0-eqm"]) - {"pi0-eqm"}


def test_core_install_pulls_no_simulator_plotting_or_notebook_package():
    closure = _core_closure()
    assert "jax" in closure and "orbax-checkpoint" in closure  # the walk found the core's dependencies
    assert closure & BENCH_ONLY == set(), sorted(closure & BENCH_ONLY)


def test_sim_extra_and_lab_bring_the_benchmark():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sim = {d.split("=")[0].split(">")[0].split("<")[0] for d in project["optional-dependencies"]["sim"]}
    assert {"metaworld", "mujoco", "matplotlib"} <= sim
    lab = tomllib.loads((REPO / "lab" / "pyproject.toml").read_text())["project"]
    assert "pi0_eqm[sim]" in lab["dependencies"]


def test_wheel_ships_only_the_library():
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["src/pi0_eqm"]


def test_core_modules_import_without_the_benchmark_packages():
    """Model, data, training and serving import none of the benchmark-only packages."""
    code = ("import sys\n"
            "import pi0_eqm.training.loop, pi0_eqm.serving.server, pi0_eqm.policies.policy_config, "
            "pi0_eqm.training.export, pi0_eqm.data.lerobot, pi0_eqm.data.rlds\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mujoco', 'metaworld', 'gymnasium', 'matplotlib', 'imageio', 'nbclient', 'pi0_eqm_experiments'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
