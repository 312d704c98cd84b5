"""`decoding="beam_search_prm"`: step-level beam search guided by a process reward model (search-and-learn's
beam search, as the reference baselines run it)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import invalid_argument
from ..generation.outputs import DecodingOutput
from ..smc.arguments import SEARCH_ARGUMENTS, Argument, DecoderCall, particle_decoder
from ..smc.decoding import positive_int_option, prepare, run_sweep, select_final
from ..smc.sweep import TopKPolicy

__all__ = ["BEAM_WIDTH", "SEARCH_DEFAULTS", "beam_search_prm", "tree_search"]

SEARCH_DEFAULTS: dict[str, Any] = {
    "num_particles": 8,
    "score_mode": "last",
    "weight_transform": "identity",
    "softmax_temperature": 1.0,
    "weight_update": "potential",
    "resampling": "systematic",
    "ess_threshold": 0.0,
    "finished_particles": "absorb",
    "selection": "argmax",
    "on_reward_error": "raise",
}


def tree_search(
    call: DecoderCall,
    *,
    method: str,
    subtrees: bool,
) -> torch.LongTensor | DecodingOutput:
    """Beam search (`subtrees=False`) or DVTS (`subtrees=True`) over reasoning steps."""
    setup, _ = prepare(call, method=method, defaults=SEARCH_DEFAULTS)
    n = setup.options.num_particles
    width = positive_int_option(call, "beam_width", 4)
    if n % width:
        raise invalid_argument(
            "num_particles",
            n,
            f"a multiple of beam_width={width}",
            f"Use e.g. num_particles={width * max(1, n // width)}.",
        )
    policy = TopKPolicy(block_size=width, keep=1) if subtrees else TopKPolicy(block_size=n, beam_width=width)
    result, session, passes = run_sweep(setup, policy, n, progress=bool(call["progress"]))
    return setup.output(result, select_final(setup, result, setup.options.selection), session, 1 + passes)


#: `beam_width`, shared by beam search and DVTS.
BEAM_WIDTH = Argument(
    "beam_width",
    "int",
    "M: copies of each kept beam (beam search; N/M beams survive each step, the reference code's naming) or "
    "candidates per subtree (DVTS); `num_particles` must be a multiple of it; defaults to 4.",
    "int | None",
)


@particle_decoder(SEARCH_ARGUMENTS, defaults=SEARCH_DEFAULTS, own=(BEAM_WIDTH,))
def beam_search_prm(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Step-level beam search with a PRM (a `custom_generate` callable).

    N beams are each extended by one sampled step; the best `ceil(live / beam_width)` live beams by reward are kept
    and copied back into the live slots (cache rows re-indexed, as in resampling). Finished beams stay in the pool
    unextended. The answer is the argmax of the final reward.
    """
    return tree_search(call, method="beam_search_prm", subtrees=False)
