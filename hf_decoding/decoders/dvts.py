"""`decoding="dvts"`: diverse verifier tree search (search-and-learn): N/M independent subtrees, each extended by
M sampled steps per iteration and greedily keeping its best."""

from __future__ import annotations

import torch

from ..generation.outputs import DecodingOutput
from ..smc.arguments import SEARCH_ARGUMENTS, DecoderCall, particle_decoder
from .beam_search_prm import BEAM_WIDTH, SEARCH_DEFAULTS, tree_search

__all__ = ["dvts"]


@particle_decoder(SEARCH_ARGUMENTS, defaults=SEARCH_DEFAULTS, own=(BEAM_WIDTH,))
def dvts(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Diverse verifier tree search (a `custom_generate` callable).

    The N particles form N/M subtrees of M (`beam_width`). At every step each live particle samples a next step;
    within each subtree the best live candidate by reward survives and is copied into the subtree's other live
    slots. The answer is the argmax of the final reward over all subtrees.
    """
    return tree_search(call, method="dvts", subtrees=True)
