"""Helpers for the benchmark-script tests: load a script under ``scripts/`` or ``lab/scripts/`` as a module."""

import importlib.util
from pathlib import Path
import sys

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
