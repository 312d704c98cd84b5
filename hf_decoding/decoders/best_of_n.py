"""`decoding="best_of_n"`: N independent completions, the one with the highest reward is returned."""

from __future__ import annotations

import torch

from ..generation.outputs import DecodingOutput
from ..smc.arguments import INDEPENDENT_ARGUMENTS, INDEPENDENT_DEFAULTS, DecoderCall, particle_decoder
from ..smc.decoding import independent_samples, select_final

__all__ = ["best_of_n"]


@particle_decoder(INDEPENDENT_ARGUMENTS, defaults=INDEPENDENT_DEFAULTS, notes={"reward_model": "Required."})
def best_of_n(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Best-of-N (a `custom_generate` callable): N samples per prompt from a single prefill (the cache is fanned out,
    not recomputed N times), each scored once when finished; argmax of the (aggregated) reward.
    """
    setup, result, session, passes = independent_samples(call, method="best_of_n", require_reward=True)
    selected = select_final(setup, result, "argmax")
    return setup.output(result, selected, session, passes)
