"""`decoding="particle_gibbs"`: iterated conditional SMC over reasoning steps (Puri et al., Algorithm 2).

Each iteration runs the particle filter with N-1 free particles plus a retained reference trajectory in slot 0.
The reference is replayed token for token through the same batched cache (so it can be forked), is never
replaced by resampling, and at step `t` carries *its own step-`t` score* — not its final score, and not the score
of another step: the weight alignment that `its_hub` #54 and the reference code's `rewards[step]` vs
`rewards[step-1]` got wrong (regression-tested). After each iteration a new reference is drawn from the final
weights. `num_chains` independent chains run in parallel as extra groups of the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..errors import invalid_argument
from ..generation.loop import option
from ..generation.outputs import DecodingOutput
from ..smc.decoding import merge_groups, prepare, run_sweep, select_final
from ..smc.selection import select_particles
from ..smc.sweep import ReferencePath, ResamplingPolicy, SweepResult, assemble_output
from .particle_filter import PARTICLE_FILTER_DEFAULTS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["draw_references", "particle_gibbs"]


def draw_references(result: SweepResult, generator: torch.Generator | None) -> list[ReferencePath]:
    """One reference per group, drawn from the final normalised weights."""
    index = select_particles("sample", result.log_weights, result.scores, generator=generator)
    batch = result.batch
    refs = []
    for b in range(batch.num_groups):
        slot = b * batch.num_particles + int(index[b])
        refs.append(
            ReferencePath(
                steps=list(batch.slot_lists["steps"][slot]),
                scores=list(batch.slot_lists["scores"][slot]),
                texts=list(batch.slot_lists["texts"][slot]),
                finished=True,
            )
        )
    return refs


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_argument(name, value, "a positive integer")
    return value


def particle_gibbs(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
    num_iterations: int | None = None,
    num_chains: int | None = None,
    reward_model: Any | None = None,
    step_delimiter: str | list[str] | None = None,
    tokens_per_step: int | None = None,
    max_steps: int | None = None,
    stop_pattern: str | None = None,
    score_mode: str | None = None,
    weight_transform: str | None = None,
    softmax_temperature: float | None = None,
    weight_update: str | None = None,
    resampling: str | None = None,
    ess_threshold: float | None = None,
    finished_particles: str | None = None,
    selection: str | None = None,
    answer_extractor: Callable[[str], str | None] | None = None,
    on_reward_error: str | None = None,
    preset: str | None = None,
    reward_prompts: list[str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool = False,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""Particle Gibbs over reasoning steps (a `custom_generate` callable).

    Args:
        num_particles (`int`, *optional*, defaults to 8): particles per iteration and chain (the reference included).
        num_iterations (`int`, *optional*, defaults to 4): conditional-SMC sweeps (the first is a plain particle
            filter).
        num_chains (`int`, *optional*, defaults to 1): independent chains per prompt, run as extra groups of one
            batch; the final selection looks at the last iteration's particles of every chain.
        other arguments: as [`~hf_decoding.decoders.particle_filter`].

    Returns:
        As `particle_filter`; `.particles` holds the last iteration (`num_chains·num_particles` per prompt) and
        `.cost` the compute of all iterations.
    """
    values = {
        "num_particles": num_particles,
        "score_mode": score_mode,
        "weight_transform": weight_transform,
        "softmax_temperature": softmax_temperature,
        "weight_update": weight_update,
        "resampling": resampling,
        "ess_threshold": ess_threshold,
        "finished_particles": finished_particles,
        "selection": selection,
        "on_reward_error": on_reward_error,
        "step_delimiter": step_delimiter,
        "tokens_per_step": tokens_per_step,
        "max_steps": max_steps,
        "stop_pattern": stop_pattern,
    }
    setup, _ = prepare(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        method="particle_gibbs",
        values=values,
        defaults=PARTICLE_FILTER_DEFAULTS,
        preset=preset,
        reward_model=reward_model,
        require_reward=True,
        tokenizer=tokenizer,
        seed=seed,
        generator=generator,
        reward_prompts=reward_prompts,
        answer_extractor=answer_extractor,
    )
    iterations = _positive_int("num_iterations", option(generation_config, "num_iterations", num_iterations, 4))
    chains = _positive_int("num_chains", option(generation_config, "num_chains", num_chains, 1))
    options = setup.options
    policy = ResamplingPolicy(options.resampling, options.ess_threshold, setup.generator)
    references = None
    forward_passes, generated, calls, tokens = 1, 0, 0, 0
    for _ in range(iterations):
        result, session, passes = run_sweep(
            setup,
            policy,
            options.num_particles,
            copies=chains,
            references=references,
            keep_steps=True,
            progress=progress,
            reuse_prefill=True,
        )
        forward_passes += passes
        generated += result.generated_tokens
        calls += session.calls
        tokens += session.tokens
        references = draw_references(result, setup.generator)
    session.calls, session.tokens = calls, tokens
    result = merge_groups(result, chains)
    selected = select_final(setup, result, options.selection)
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=forward_passes,
        generated_tokens=generated,
    )
