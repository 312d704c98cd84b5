"""`decoding="weighted_best_of_n"`: N completions grouped by final answer; the answer with the largest summed
reward wins (the reference's `find_answer_with_largest_sum`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.outputs import DecodingOutput
from ..smc.decoding import independent_samples
from ..smc.selection import weighted_vote
from ..smc.sweep import assemble_output

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["weighted_best_of_n"]


def weighted_best_of_n(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
    reward_model: Any | None = None,
    score_mode: str | None = None,
    stop_pattern: str | None = None,
    on_reward_error: str | None = None,
    reward_prompts: list[str] | None = None,
    answer_extractor: Callable[[str], str | None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""Weighted best-of-N (a `custom_generate` callable). Needs `tokenizer` (answers are read from text).

    The returned completion is the highest-scored one among those giving the winning answer.

    Args:
        answer_extractor (`Callable[[str], str | None]`, *optional*): defaults to the last `\boxed{}`, else
            "answer is N", else the last number.
        other arguments: as [`~hf_decoding.decoders.best_of_n`].
    """
    setup, result, session, passes = independent_samples(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method="weighted_best_of_n",
        num_particles=num_particles,
        reward_model=reward_model,
        require_reward=True,
        score_mode=score_mode,
        on_reward_error=on_reward_error,
        tokenizer=tokenizer,
        seed=seed,
        generator=generator,
        reward_prompts=reward_prompts,
        answer_extractor=answer_extractor,
        stop_pattern=stop_pattern,
    )
    with setup.meter.phase("selection"):
        answers = setup.answers(result)
        scores = result.scores.clamp(min=0)  # rewards are probabilities; a failed reward (-inf) adds nothing
        selected = []
        for b, group in enumerate(answers):
            winner = weighted_vote(group, scores[b].tolist())
            members = [i for i, a in enumerate(group) if a == winner] or list(range(len(group)))
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
