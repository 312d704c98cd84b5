"""`decoding="self_consistency"`: N completions, majority vote on the final answer (no reward model needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.outputs import DecodingOutput
from ..smc.decoding import independent_samples
from ..smc.selection import majority_vote
from ..smc.sweep import assemble_output

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["self_consistency"]


def self_consistency(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
    stop_pattern: str | None = None,
    answer_extractor: Callable[[str], str | None] | None = None,
    reward_model: Any | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""Self-consistency (a `custom_generate` callable): the most frequent answer among N samples; the returned
    completion is the first sample giving it. Needs `tokenizer`. `reward_model` is optional and only breaks ties
    between completions of the winning answer (it costs reward calls when given).

    Args:
        num_particles (`int`, *optional*, defaults to 8): N.
        answer_extractor (`Callable[[str], str | None]`, *optional*): as for `weighted_best_of_n`.
        stop_pattern, seed, generator, tokenizer: as for `best_of_n`.
    """
    if tokenizer is None:
        from ..errors import InvalidDecodingArgument

        raise InvalidDecodingArgument(
            "`self_consistency` votes on answers read from text: pass `tokenizer=tokenizer` to `generate`."
        )
    setup, result, session, passes = independent_samples(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method="self_consistency",
        num_particles=num_particles,
        reward_model=reward_model,
        require_reward=False,
        score_mode=None,
        on_reward_error=None,
        tokenizer=tokenizer,
        seed=seed,
        generator=generator,
        reward_prompts=None,
        answer_extractor=answer_extractor,
        stop_pattern=stop_pattern,
    )
    with setup.meter.phase("selection"):
        answers = setup.answers(result)
        selected = []
        for b, group in enumerate(answers):
            winner = majority_vote(group)
            members = [i for i, a in enumerate(group) if a == winner] or [0]
            selected.append(max(members, key=lambda i: (result.scores[b, i].item(), -i)))
        selected = torch.tensor(selected, dtype=torch.long, device=result.scores.device)
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=passes,
        generated_tokens=result.generated_tokens,
    )
