"""Dependency closures from ``uv.lock`` (markers ignored, so each is a superset), for the packaging checks."""

from collections.abc import Iterable
import re
import tomllib

from tests.architecture import REPO


def normalize(name: str) -> str:
    """A distribution name as ``uv.lock`` spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_closure(roots: Iterable[str]) -> set[str]:
    """Every package the ``roots`` pull, themselves included, per ``uv.lock``."""
    packages = {p["name"]: p for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    seen, todo = set(), [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [d["name"] for d in packages[name].get("dependencies", [])]
    return seen
