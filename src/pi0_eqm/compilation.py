"""How programs that a run executes once (or once per checkpoint) are compiled.

Random parameter init, the train state's init, the per-step finiteness check of the params and the checkpoint
checksums compile like any program but run once or take microseconds. On the CPU backend :func:`jit_once` compiles
them with XLA's LLVM optimization level 1 instead of its default 3 (``ONCE_OPTIONS``): measured on the project's
2-core CPU, the tiny LoRA model's train-state init compiles in 8.5 s instead of 20 s, and the results are
bit-identical (``tests/test_compilation.py`` compares both compilations). Other backends compile them as usual. The
backend is looked up at the first call, so importing a module that defines such a function initialises nothing
(``jax.distributed.initialize`` must come before any backend use). Called inside another jit or trace (where JAX
accepts no compiler options) the function is traced into the outer program as a plain ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax

ONCE_OPTIONS = {"xla_backend_optimization_level": 1}


class _JitOnce:
    def __init__(self, fun: Callable, jit_kwargs: dict[str, Any]):
        self._fun, self._jit_kwargs, self._once = fun, jit_kwargs, None
        self._plain = jax.jit(fun, **jit_kwargs)
        functools.update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        if self._once is None:
            cpu = jax.default_backend() == "cpu"
            self._once = jax.jit(self._fun, compiler_options=ONCE_OPTIONS, **self._jit_kwargs) if cpu else self._plain
        if self._once is self._plain or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return self._plain(*args, **kwargs)
        try:
            return self._once(*args, **kwargs)
        except ValueError as e:  # called inside another jit or trace: compiled as part of the outer program
            if "top-level" not in str(e):
                raise
            return self._plain(*args, **kwargs)


def jit_once(fun: Callable | None = None, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` compiled with ``ONCE_OPTIONS`` on the CPU backend; usable as a decorator, with
    or without keyword arguments (``@jit_once(static_argnums=(0,))``)."""
    if fun is None:
        return functools.partial(jit_once, **jit_kwargs)
    return _JitOnce(fun, jit_kwargs)
