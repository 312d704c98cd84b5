"""`decoding="self_consistency"`: N completions, majority vote on the final answer (no reward model needed)."""

from __future__ import annotations

import torch

from ..errors import InvalidDecodingArgument
from ..generation.outputs import DecodingOutput
from ..smc.arguments import SELF_CONSISTENCY_ARGUMENTS, DecoderCall, particle_decoder
from ..smc.decoding import independent_samples
from ..smc.selection import majority_vote

__all__ = ["self_consistency"]


@particle_decoder(
    SELF_CONSISTENCY_ARGUMENTS,
    defaults={"num_particles": 8},
    notes={
        "reward_model": "Optional: only breaks ties between completions of the winning answer.",
        "tokenizer": "Required.",
    },
)
def self_consistency(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Self-consistency (a `custom_generate` callable): the most frequent answer among N samples; the returned
    completion is the first sample giving it. Needs `tokenizer`. `reward_model` is optional and only breaks ties
    between completions of the winning answer (it costs reward calls when given).
    """
    if call["tokenizer"] is None:
        raise InvalidDecodingArgument(
            "`self_consistency` votes on answers read from text: pass `tokenizer=tokenizer` to `generate`."
        )
    setup, result, session, passes = independent_samples(call, method="self_consistency", require_reward=False)
    with setup.meter.phase("selection"):
        answers = setup.answers(result)
        selected = []
        for b, group in enumerate(answers):
            winner = majority_vote(group)
            members = [i for i, a in enumerate(group) if a == winner] or [0]
            selected.append(max(members, key=lambda i: (result.scores[b, i].item(), -i)))
        selected = torch.tensor(selected, dtype=torch.long, device=result.scores.device)
    return setup.output(result, selected, session, passes)
