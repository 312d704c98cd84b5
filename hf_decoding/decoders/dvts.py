"""`decoding="dvts"`: diverse verifier tree search (search-and-learn): N/M independent subtrees, each extended by
M sampled steps per iteration and greedily keeping its best."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.outputs import DecodingOutput
from .beam_search_prm import tree_search

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["dvts"]


def dvts(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
    beam_width: int | None = None,
    reward_model: Any | None = None,
    step_delimiter: str | list[str] | None = None,
    tokens_per_step: int | None = None,
    max_steps: int | None = None,
    stop_pattern: str | None = None,
    score_mode: str | None = None,
    selection: str | None = None,
    answer_extractor: Callable[[str], str | None] | None = None,
    on_reward_error: str | None = None,
    reward_prompts: list[str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool = False,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""Diverse verifier tree search (a `custom_generate` callable).

    The N particles form N/M subtrees of M (`beam_width`). At every step each live particle samples a next step;
    within each subtree the best live candidate by reward survives and is copied into the subtree's other live
    slots. The answer is the argmax of the final reward over all subtrees.

    Args:
        num_particles (`int`, *optional*, defaults to 8): N (a multiple of `beam_width`).
        beam_width (`int`, *optional*, defaults to 4): M, candidates per subtree.
        other arguments: as [`~hf_decoding.decoders.beam_search_prm`].
    """
    values = {
        "score_mode": score_mode,
        "selection": selection,
        "on_reward_error": on_reward_error,
        "step_delimiter": step_delimiter,
        "tokens_per_step": tokens_per_step,
        "max_steps": max_steps,
        "stop_pattern": stop_pattern,
    }
    return tree_search(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method="dvts",
        subtrees=True,
        num_particles=num_particles,
        beam_width=beam_width,
        reward_model=reward_model,
        values=values,
        tokenizer=tokenizer,
        seed=seed,
        generator=generator,
        reward_prompts=reward_prompts,
        answer_extractor=answer_extractor,
        progress=progress,
    )
