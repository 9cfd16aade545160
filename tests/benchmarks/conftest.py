"""Helpers for the benchmark-script tests: load a script under ``scripts/`` as a module."""

import importlib.util
from pathlib import Path
import sys

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    """``scripts/<name>.py`` as an imported module (registered in ``sys.modules`` so dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
