"""openpi-compatible policy serving: wire codec (``wire``), observation schemas (``schema``), the websocket server
(``server``) and a bounded load generator (``load``)."""

from pi0_eqm.serving.schema import (
    ArraySpec,
    ImageSpec,
    ObservationSchema,
    StringSpec,
    aloha_schema,
    libero_schema,
    validate,
)
from pi0_eqm.serving.server import CONTROL_KEY, RESET_KEY, PolicyServer
from pi0_eqm.serving.wire import WireError, WireLimits, packb, unpackb

__all__ = [
    "ArraySpec",
    "CONTROL_KEY",
    "ImageSpec",
    "ObservationSchema",
    "PolicyServer",
    "RESET_KEY",
    "StringSpec",
    "WireError",
    "WireLimits",
    "aloha_schema",
    "libero_schema",
    "packb",
    "unpackb",
    "validate",
]
