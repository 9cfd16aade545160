"""Shared entry-point plumbing for the scripts: tyro parsing and clean errors for user mistakes."""

from __future__ import annotations

from collections.abc import Callable
import sys
from typing import Any

import tyro

from pi0_eqm.errors import InvalidRequestError


def run(main: Callable[[Any], Any], args_type: type, user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """``main(tyro.cli(args_type))``; a user error (missing file, bad value) prints ``error: ...`` and exits 2."""
    errors = (FileNotFoundError, FileExistsError, PermissionError, ValueError, InvalidRequestError, *user_errors)
    try:
        main(tyro.cli(args_type))
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
