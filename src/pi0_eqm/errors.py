"""Exceptions shared across packages."""


class InvalidRequestError(ValueError):
    """A client's request is malformed (bad wire data, schema violation, unknown decoder setting...).

    Servers answer it with an error reply and keep serving; it is never an internal error.
    """


class FeatureNotFoundError(KeyError, ValueError):
    """A dataset has no feature of the name a config or robot spec asked for (a ``KeyError`` and a user error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
