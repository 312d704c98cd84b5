"""`decoding="sample"`: transformers' greedy/multinomial sampling, token for token, plus distortion accounting."""

from __future__ import annotations

import torch

from ..generation.arguments import GENERATOR, SEED, STREAMER, DecoderCall, decoder
from ..generation.loop import call_generator, sampling_loop
from ..generation.outputs import DecodingOutput

__all__ = ["sample"]


@decoder((STREAMER, SEED, GENERATOR))
def sample(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""The reference loop: greedy (`do_sample=False`) or multinomial sampling through the processors `generate` built.

    With the same torch seed and processors it returns exactly the tokens of transformers' built-in path, and
    with `return_dict_in_generate=True` it also fills `out.distortion` and `out.cost`.
    """
    result, _ = sampling_loop(call, generator=call_generator(call))
    return result
