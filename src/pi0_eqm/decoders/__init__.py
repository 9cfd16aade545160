"""Action decoders behind one interface (``base.Decoder``), registered by the ``kind`` of their config."""

from pi0_eqm.decoders.base import Decoder
from pi0_eqm.decoders.eqm import EqmDecoder
from pi0_eqm.decoders.flow import FlowDecoder

DECODERS: dict[str, type] = {cls.kind: cls for cls in (FlowDecoder, EqmDecoder)}


def make_decoder(config) -> Decoder:
    """The decoder for ``config.decoder.kind`` (``config`` is a ``Pi0Config``)."""
    kind = config.decoder.kind
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder kind {kind!r}; registered: {sorted(DECODERS)}")
    return DECODERS[kind](config)


__all__ = ["DECODERS", "Decoder", "make_decoder"]
