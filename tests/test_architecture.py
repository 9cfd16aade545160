"""The library's structure, measured from its source and from traced runs (``tests/architecture.py``): no import
circles, no arrow from a lower layer to a higher one, imports at module top unless a ``# lazy:`` reason is given,
files under 500 lines, the library never imports the lab, the lab uses only the library's public names; and the
reading-order walks stay short."""

import pytest

from tests import architecture


def test_import_graph_is_layered_and_acyclic():
    report = architecture.import_report()
    assert report["modules"] > 50  # the scan found the package
    assert report["circles"] == []
    assert report["upward"] == []
    assert report["lazy_without_reason"] == []
    assert report["long_files"] == {}
    assert report["experiments_imports"] == []


def test_the_lab_uses_only_public_library_names():
    report = architecture.lab_report()
    assert report["files"] > 15  # the scan found lab/ and notebooks/
    assert report["private_uses"] == []


def test_private_uses_are_found():
    src = ("from pi0_eqm.data import _frame_index\nfrom pi0_eqm.policies.policy import _Session\n"
           "import pi0_eqm.data._frame_index\nx = policy._decode_fn\ny = self._ok\nz = obj.__dict__\n")
    found = architecture.private_uses(src, "f.py")
    assert found == ["f.py:1 from pi0_eqm.data import _frame_index", "f.py:2 from pi0_eqm.policies.policy import _Session",
                     "f.py:3 import pi0_eqm.data._frame_index", "f.py:4 ._decode_fn"], found


def test_every_core_package_has_a_layer():
    packages = {p.name for p in architecture.CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in architecture.CORE.glob("*.py") if p.stem != "__init__"}
    assert packages <= set(architecture.LAYERS), sorted(packages - set(architecture.LAYERS))


def test_walk_counts_stays_and_returns():
    w = architecture.Walk(["a.py", "b.py", "a.py", "c.py", "b.py"])
    assert w.files == ["a.py", "b.py", "c.py"] and w.returns == 2


@pytest.mark.slow
def test_observation_walk_is_short():
    """One LIBERO observation from the websocket bytes to the reply bytes: ≤ 12 files, ≤ 20 returns."""
    w = architecture.observation_walk()
    assert len(w.files) <= 12 and w.returns <= 20, w.summary()
    assert w.files[0].endswith("serving/server.py")
    assert any(f.endswith("robots/spec.py") for f in w.files) and any(f.endswith("decoders/eqm.py") for f in w.files)


@pytest.mark.slow
def test_training_step_walk_is_short():
    """One debug_libero training step (loader → transforms → batch → jitted step): ≤ 12 files."""
    w = architecture.training_step_walk()
    assert len(w.files) <= 12, w.summary()
    assert w.files[0].endswith("data/loader.py")
