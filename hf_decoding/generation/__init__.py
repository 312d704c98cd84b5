"""Shared pieces of every decoder: argument declaration, the cache and transformers' internals, the sampling loop,
the processor chain, validation and the output types."""

from .arguments import GENERATOR, SEED, STREAMER, Argument, DecoderCall, decoder
from .cache import decode_step, prefill, reorder_rows
from .loop import call_generator, make_generator, option, sampling_loop, select_tokens
from .outputs import AutoDecoTrace, DecodingCost, DecodingOutput, DistortionTrace, ParticleTrace
from .processing import ProcessorChain
from .validation import validate_prompt, validate_sampling_arguments

__all__ = [
    "GENERATOR",
    "SEED",
    "STREAMER",
    "Argument",
    "AutoDecoTrace",
    "DecoderCall",
    "DecodingCost",
    "DecodingOutput",
    "DistortionTrace",
    "ParticleTrace",
    "ProcessorChain",
    "call_generator",
    "decode_step",
    "decoder",
    "make_generator",
    "option",
    "prefill",
    "reorder_rows",
    "sampling_loop",
    "select_tokens",
    "validate_prompt",
    "validate_sampling_arguments",
]
