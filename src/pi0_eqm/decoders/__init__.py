"""Action decoders: flow matching (openpi) and Equilibrium Matching, behind one interface."""

from pi0_eqm.decoders.config import EqmConfig
from pi0_eqm.decoders.config import FlowConfig
from pi0_eqm.decoders.config import SolverConfig


def make_decoder(config):
    """The decoder selected by ``config.decoder`` (a ``Pi0Config``)."""
    from pi0_eqm.decoders.eqm import EqmDecoder
    from pi0_eqm.decoders.flow import FlowDecoder

    if isinstance(config.decoder, EqmConfig):
        return EqmDecoder(config)
    if isinstance(config.decoder, FlowConfig):
        return FlowDecoder(config)
    raise TypeError(f"unknown decoder config {type(config.decoder).__name__}")


__all__ = ["EqmConfig", "FlowConfig", "SolverConfig", "make_decoder"]
