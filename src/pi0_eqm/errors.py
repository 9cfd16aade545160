"""Exceptions shared across packages."""


class InvalidRequestError(ValueError):
    """A client's request is malformed (bad wire data, schema violation, unknown decoder setting...).

    Servers answer it with an error reply and keep serving; it is never an internal error.
    """
