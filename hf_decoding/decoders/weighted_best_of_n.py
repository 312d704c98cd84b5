"""`decoding="weighted_best_of_n"`: N completions grouped by final answer; the answer with the largest summed
reward wins (the reference's `find_answer_with_largest_sum`)."""

from __future__ import annotations

import torch

from ..generation.outputs import DecodingOutput
from ..smc.arguments import INDEPENDENT_ARGUMENTS, INDEPENDENT_DEFAULTS, DecoderCall, particle_decoder
from ..smc.decoding import independent_samples
from ..smc.selection import weighted_vote

__all__ = ["weighted_best_of_n"]


@particle_decoder(INDEPENDENT_ARGUMENTS, defaults=INDEPENDENT_DEFAULTS, notes={"reward_model": "Required."})
def weighted_best_of_n(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Weighted best-of-N (a `custom_generate` callable). Needs `tokenizer` (answers are read from text).

    The returned completion is the highest-scored one among those giving the winning answer.
    """
    setup, result, session, passes = independent_samples(call, method="weighted_best_of_n", require_reward=True)
    with setup.meter.phase("selection"):
        answers = setup.answers(result)
        scores = result.scores.clamp(min=0)  # rewards are probabilities; a failed reward (-inf) adds nothing
        selected = []
        for b, group in enumerate(answers):
            winner = weighted_vote(group, scores[b].tolist())
            members = [i for i, a in enumerate(group) if a == winner] or list(range(len(group)))
            selected.append(max(members, key=lambda i: (result.scores[b, i].item(), -i)))
        selected = torch.tensor(selected, dtype=torch.long, device=result.scores.device)
    return setup.output(result, selected, session, passes)
