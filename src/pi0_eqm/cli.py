"""Shared entry-point plumbing for the scripts: tyro parsing and clean errors for user mistakes.

A user error (a missing or unreadable file, a full or read-only destination, a bad value, a damaged checkpoint) is
printed as one paragraph, ``error: ...``, and the process exits with code 2; ``--debug`` anywhere on the command line
shows the traceback instead.
"""

from __future__ import annotations

from collections.abc import Callable
import os
import sys
from typing import Any
from typing import NoReturn

import tyro

from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.errors import one_line

USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, InvalidRequestError)
DEBUG_FLAG = "--debug"


def _report(text: str) -> None:
    print(f"error: {' '.join(text.split())}\n(run with {DEBUG_FLAG} for the traceback)", file=sys.stderr, flush=True)


def fail(e: BaseException) -> NoReturn:
    """Print ``e`` as a user error (one paragraph on stderr) and exit with code 2."""
    _report(one_line(e))
    sys.exit(2)


def fail_now(message: str) -> NoReturn:
    """:func:`fail` for a process whose exit handlers must not run (a multi-process job whose peer died:
    ``jax.distributed``'s shutdown barrier would wait for it and then abort the process): print, flush, ``os._exit``."""
    _report(message)
    sys.stdout.flush()
    os._exit(2)


def pop_debug_flag(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is on the command line; removes it from ``argv`` (default ``sys.argv``)."""
    argv = sys.argv if argv is None else argv
    debug = DEBUG_FLAG in argv[1:]
    argv[:] = [a for i, a in enumerate(argv) if i == 0 or a != DEBUG_FLAG]
    return debug


def guarded(main: Callable[[], Any], user_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """``main()``, with a user error (:data:`USER_ERRORS` and ``user_errors``) reported by :func:`fail` unless
    ``--debug`` is on the command line."""
    debug = pop_debug_flag()
    try:
        return main()
    except (*USER_ERRORS, *user_errors) as e:
        if debug:
            raise
        fail(e)


def run(main: Callable[[Any], Any], args_type: type, user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """``main(tyro.cli(args_type))`` under :func:`guarded`."""
    guarded(lambda: main(tyro.cli(args_type)), user_errors)
