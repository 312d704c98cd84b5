"""`decoding="beam_search_prm"`: step-level beam search guided by a process reward model (search-and-learn's
beam search, as the reference baselines run it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..errors import invalid_argument
from ..generation.loop import option
from ..generation.outputs import DecodingOutput
from ..smc.decoding import prepare, run_sweep, select_final
from ..smc.sweep import TopKPolicy, assemble_output

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["SEARCH_DEFAULTS", "beam_search_prm", "tree_search"]

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
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    model_kwargs: dict[str, Any],
    *,
    method: str,
    subtrees: bool,
    num_particles: int | None,
    beam_width: int | None,
    reward_model: Any,
    values: dict[str, Any],
    tokenizer: Any,
    seed: int | None,
    generator: torch.Generator | None,
    reward_prompts: list[str] | None,
    answer_extractor: Any,
    progress: bool,
) -> torch.LongTensor | DecodingOutput:
    """Beam search (`subtrees=False`) or DVTS (`subtrees=True`) over reasoning steps."""
    setup, _ = prepare(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method=method,
        values={**values, "num_particles": num_particles},
        defaults=SEARCH_DEFAULTS,
        preset=None,
        reward_model=reward_model,
        require_reward=True,
        tokenizer=tokenizer,
        seed=seed,
        generator=generator,
        reward_prompts=reward_prompts,
        answer_extractor=answer_extractor,
    )
    n = setup.options.num_particles
    width = option(generation_config, "beam_width", beam_width, 4)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise invalid_argument("beam_width", width, "a positive integer")
    if n % width:
        raise invalid_argument(
            "num_particles",
            n,
            f"a multiple of beam_width={width}",
            f"Use e.g. num_particles={width * max(1, n // width)}.",
        )
    policy = TopKPolicy(block_size=width, keep=1) if subtrees else TopKPolicy(block_size=n, beam_width=width)
    result, session, passes = run_sweep(setup, policy, n, progress=progress)
    selected = select_final(setup, result, setup.options.selection)
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=1 + passes,
        generated_tokens=result.generated_tokens,
    )


def beam_search_prm(
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
    r"""Step-level beam search with a PRM (a `custom_generate` callable).

    N beams are each extended by one sampled step; the best `ceil(live / beam_width)` live beams by reward are kept
    and copied back into the live slots (cache rows re-indexed, as in resampling). Finished beams stay in the pool
    unextended. The answer is the argmax of the final reward.

    Args:
        num_particles (`int`, *optional*, defaults to 8): N beams (a multiple of `beam_width`).
        beam_width (`int`, *optional*, defaults to 4): M, copies of each kept beam (the reference code's naming:
            N/M beams survive each step).
        score_mode (`str`, *optional*, defaults to `"last"`): the ranking score.
        other arguments: as [`~hf_decoding.decoders.particle_filter`].
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
        method="beam_search_prm",
        subtrees=False,
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
