"""Shared loop pieces of every decoder, and the output types."""

from .loop import decode_step, make_generator, option, prefill, reorder_rows, sampling_loop, select_tokens
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
