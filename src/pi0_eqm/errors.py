"""Exceptions shared across packages, and the one-line form errors are reported in."""

import re


class InvalidRequestError(ValueError):
    """A client's request is malformed (bad wire data, schema violation, unknown decoder setting...).

    Servers answer it with an error reply and keep serving; it is never an internal error.
    """


class FeatureNotFoundError(KeyError, ValueError):
    """A dataset has no feature of the name a config or robot spec asked for (a ``KeyError`` and a user error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointReadError(ValueError):
    """A params checkpoint's files cannot be read (damaged, truncated or incomplete); the message names the directory."""


def one_line(e: BaseException) -> str:
    """``str(e)`` on one line, without TensorStore's spec dump (its errors carry the whole JSON spec)."""
    text = re.split(r"\s*(?:See full TensorStore details:|\[tensorstore_spec=)", str(e), maxsplit=1)[0]
    text = re.sub(r"<bound method [^>]*>|TensorStore\(\{.*", "", text, flags=re.S)
    return " ".join(text.split()) or type(e).__name__
