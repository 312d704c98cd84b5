"""Shared loop pieces of every decoder, and the output types."""

from .cache import decode_step, prefill, reorder_rows
from .loop import make_generator, option, sampling_loop, select_tokens
from .outputs import AutoDecoTrace, DecodingCost, DecodingOutput, DistortionTrace, ParticleTrace
from .processing import ProcessorChain
from .validation import validate_sampling_arguments

__all__ = [
    "AutoDecoTrace",
    "DecodingCost",
    "DecodingOutput",
    "DistortionTrace",
    "ParticleTrace",
    "ProcessorChain",
    "decode_step",
    "make_generator",
    "option",
    "prefill",
    "reorder_rows",
    "sampling_loop",
    "select_tokens",
    "validate_sampling_arguments",
]
