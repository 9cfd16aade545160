"""Opt-in pytest plugin (``--cpu-time``, registered by ``tests/conftest.py``): the CPU seconds each test and module
spends, its own process's and its subprocesses'.

    uv run pytest -n 3 --dist loadfile --cpu-time

On a saturated machine wall times say more about what ran beside a test than about the test; CPU time (user +
system, from ``getrusage``: the test process's own, plus the subprocesses it waited for) does not. Each phase
(setup, call, teardown) is measured in the process that runs it and travels to the controller in the report's
``user_properties`` (``cpu_s``), so it works under xdist and lands in ``--junitxml``. The terminal summary lists the
modules by CPU and the suite's total. A subprocess still running when its test ends (a server killed without
``wait``) is not counted.
"""

from __future__ import annotations

import collections
import resource

import pytest

_PHASE_CPU: dict[tuple[str, str], float] = {}
_MODULE_CPU: collections.Counter = collections.Counter()
_SHOWN = 20


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measured(item, phase: str):
    start = _cpu_s()
    yield
    _PHASE_CPU[(item.nodeid, phase)] = _cpu_s() - start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _measured(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _measured(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _measured(item, "teardown")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    seconds = _PHASE_CPU.pop((item.nodeid, call.when), None)
    if seconds is not None:
        outcome.get_result().user_properties.append(("cpu_s", round(seconds, 3)))


def pytest_runtest_logreport(report):
    for name, value in report.user_properties:
        if name == "cpu_s":
            _MODULE_CPU[report.nodeid.split("::")[0]] += value


def pytest_terminal_summary(terminalreporter):
    if not _MODULE_CPU:
        return
    terminalreporter.section("CPU seconds by module (tests.cpu_time)")
    for module, seconds in _MODULE_CPU.most_common(_SHOWN):
        terminalreporter.write_line(f"{seconds:8.1f}  {module}")
    terminalreporter.write_line(f"{sum(_MODULE_CPU.values()):8.1f}  all {len(_MODULE_CPU)} modules")
