"""Structure checks of the library and the lab, measured from their source and from traced runs.

* ``import_report()``: the import graph of ``src/pi0_eqm`` (module circles, package arrows against ``LAYERS``,
  imports inside functions without a ``# lazy:`` reason, files over ``MAX_LINES``, core modules importing
  ``pi0_eqm_experiments``).
* ``lab_report()``: what the lab (``lab/``, ``notebooks/``) reaches into: imports of private library modules or
  names (a ``_``-prefixed part) and ``_``-prefixed attributes read on anything but ``self``/``cls``.
* ``walk(fn)``: the files of ``src/pi0_eqm`` one call passes through, in order. A *stay* is a maximal run of
  consecutive events in one file (the innermost ``pi0_eqm`` frame at each Python call and return); a *return* is a
  stay in a file already visited. ``observation_walk()`` traces one LIBERO observation from the websocket bytes to
  the reply bytes (decode + schema, policy inference with the compiled decode, encode); ``training_step_walk()``
  one training step of ``debug_libero`` (loader → transforms → batch → sharded jitted step). Both run after
  warm-up calls, so compilation is not traced.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Callable
import dataclasses
import json
from pathlib import Path
import sys
import tempfile
from typing import Any

import jax
import numpy as np

import pi0_eqm
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.decoders import make_decoder
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.robots import LIBERO
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.serving.wire import packb
from pi0_eqm.training import data_loader
from pi0_eqm.training import sharding
from pi0_eqm.training.config import get_config
from pi0_eqm.training.norm_stats import compute_for_config
from pi0_eqm.training.train_step import init_train_state
from pi0_eqm.training.train_step import make_train_step

CORE = Path(pi0_eqm.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
LAB_ROOTS = ("lab", "notebooks")
MAX_LINES = 500
# Package → layer; a module may import its own package or a lower layer only.
LAYERS = {"errors": 0, "atomic": 0, "data": 1, "serving": 1, "models": 2, "decoders": 3, "robots": 3, "envs": 4,
          "training": 5, "policies": 6, "benchmarks": 7, "cli": 8}


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def import_report() -> dict[str, Any]:
    files = sorted(CORE.rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = collections.defaultdict(set)
    lazy_without_reason, experiments_imports = [], []
    for name, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            if any(t.split(".")[0] == "pi0_eqm_experiments" for t in targets):
                experiments_imports.append(f"{name}:{node.lineno}")
            if id(node) not in top and "# lazy:" not in lines[node.lineno - 1]:
                lazy_without_reason.append(f"{name}:{node.lineno} {targets[0]}")
            internal = [t for t in targets if t in modules]
            if internal:
                graph[name].add(max(internal, key=len))
    upward = sorted(f"{a} → {b}" for a, bs in graph.items() for b in bs
                    if _package(a) != _package(b) and LAYERS.get(_package(b), 99) >= LAYERS.get(_package(a), -1))
    long_files = {str(p.relative_to(CORE.parent)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    return {"modules": len(modules), "circles": _circles(graph), "upward": upward,
            "lazy_without_reason": lazy_without_reason, "long_files": long_files,
            "experiments_imports": experiments_imports}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, where: str = "") -> list[str]:
    """Private library imports and private attribute reads in ``source`` (see ``lab_report``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pi0_eqm":
            names = node.module.split(".")[1:] + [a.name for a in node.names]
            out += [f"{where}:{node.lineno} from {node.module} import {n}" for n in names if _private(n)]
        elif isinstance(node, ast.Import):
            out += [f"{where}:{node.lineno} import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "pi0_eqm" and any(_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"{where}:{node.lineno} .{node.attr}")
    return out


def lab_report() -> dict[str, Any]:
    """The lab's private uses of the library, over every ``.py`` file and notebook code cell under ``LAB_ROOTS``."""
    uses, files = [], 0
    for root in LAB_ROOTS:
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix == ".py":
                sources = [path.read_text()]
            elif path.suffix == ".ipynb":
                cells = json.loads(path.read_text())["cells"]
                sources = ["\n".join(line for line in "".join(c["source"]).splitlines()
                                      if not line.lstrip().startswith(("%", "!")))  # IPython magics
                           for c in cells if c["cell_type"] == "code"]
            else:
                continue
            files += 1
            for src in sources:
                uses += private_uses(src, str(path.relative_to(REPO)))
    return {"files": files, "private_uses": uses}


@dataclasses.dataclass
class Walk:
    stays: list[str]

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(self.stays))

    @property
    def returns(self) -> int:
        return len(self.stays) - len(self.files)

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.files), "stays": len(self.stays), "returns": self.returns,
                "order": [str(Path(f).relative_to(CORE.parent)) for f in self.files]}


def walk(fn: Callable[[], Any]) -> Walk:
    """The ``pi0_eqm`` files ``fn()`` passes through (see the module docstring)."""
    root = str(CORE) + "/"
    stays: list[str] = []

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        f = frame if event == "call" else frame.f_back
        while f is not None and not f.f_code.co_filename.startswith(root):
            f = f.f_back
        if f is not None and (not stays or stays[-1] != f.f_code.co_filename):
            stays.append(f.f_code.co_filename)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return Walk(stays)


def _unit_stats(state_dim: int, action_dim: int) -> dict[str, NormStats]:
    return {"state": NormStats(np.zeros(state_dim), np.ones(state_dim)),
            "actions": NormStats(np.zeros(action_dim), np.ones(action_dim))}


def observation_walk() -> Walk:
    cfg = get_config("debug_libero")
    policy = policy_from_params(cfg, cfg.model.init(jax.random.key(0)), _unit_stats(8, 7))
    server = PolicyServer(policy, schema=LIBERO.schema())
    message = packb(LIBERO.example(np.random.default_rng(0)))

    def one():
        obs, _ = server._decode(message)
        reply = server._infer(obs, "walk")
        packb(reply)

    one()
    return walk(one)


def training_step_walk() -> Walk:
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        eps = [Episode({"observation/image": rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                        "observation/wrist_image": rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                        STATE_KEY: rng.normal(size=(8, 8)).astype(np.float32),
                        ACTION_KEY: rng.uniform(-1, 1, (8, 7)).astype(np.float32)}, prompt="open the drawer")
               for _ in range(2)]
        ds = write_lerobot_dataset(Path(tmp) / "libero", eps, fps=10)
        cfg = get_config("debug_libero")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(ds)), num_workers=0,
                                  assets_base_dir=str(Path(tmp) / "assets"))
        compute_for_config(cfg)
        data_cfg = cfg.data.create(cfg.model, cfg.assets_dir)
        batches = iter(data_loader.create_data_loader(cfg, data_cfg, shard_index=0, shard_count=1))
        mesh = sharding.make_mesh(cfg.fsdp_devices)
        tx = cfg.optimizer.create(cfg.lr_schedule.create())
        state = init_train_state(cfg.model.init(jax.random.key(0)), tx, jax.random.key(1), ema=False)
        step_fn = jax.jit(make_train_step(make_decoder(cfg.model), tx, None))
        holder = {"state": state}

        def one():
            obs, actions, is_pad = data_loader.split_batch(next(batches))
            batch = sharding.global_batch_from_local((obs, actions, is_pad), mesh)
            holder["state"], metrics = step_fn(holder["state"], *batch)
            float(metrics["loss"])

        with jax.set_mesh(mesh):
            one()
            one()  # the first output state's array types differ from the initial state's: a second compile
            return walk(one)
