"""openpi-compatible policy serving: wire codec (``wire``), observation schemas (``schema``), the websocket server
(``server``), micro-batching across its connections (``batcher``), the client (``client``) and the client side of
real-time chunking (``realtime``)."""

from pi0_eqm.serving.schema import ArraySpec
from pi0_eqm.serving.schema import ImageSpec
from pi0_eqm.serving.schema import ObservationSchema
from pi0_eqm.serving.schema import StringSpec
from pi0_eqm.serving.schema import validate
from pi0_eqm.serving.server import CONTROL_KEY
from pi0_eqm.serving.server import RESET_KEY
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.serving.wire import WireError
from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb

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
    "packb",
    "unpackb",
    "validate",
]
