"""`decoding="best_of_n"`: N independent completions, the one with the highest reward is returned."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.outputs import DecodingOutput
from ..smc.decoding import independent_samples, select_final
from ..smc.sweep import assemble_output

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["best_of_n"]


def best_of_n(
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
    r"""Best-of-N (a `custom_generate` callable): N samples per prompt from a single prefill (the cache is fanned out,
    not recomputed N times), each scored once when finished; argmax of the (aggregated) reward.

    Args:
        num_particles (`int`, *optional*, defaults to 8): N.
        reward_model: as for `particle_filter` (required).
        score_mode (`str`, *optional*, defaults to `"model"`): how the reward's step scores are aggregated.
        stop_pattern (`str`, *optional*): regex ending a completion (e.g. a closed `\boxed{}`).
        on_reward_error, reward_prompts, seed, generator, tokenizer: as for `particle_filter`.
    """
    setup, result, session, passes = independent_samples(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method="best_of_n",
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
    selected = select_final(setup, result, "argmax")
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=passes,
        generated_tokens=result.generated_tokens,
    )
