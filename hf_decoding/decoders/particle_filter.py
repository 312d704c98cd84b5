"""`decoding="particle_filter"`: sequential Monte Carlo over reasoning steps, weighted by a (process) reward model.

Puri et al. (arXiv 2502.01618): the latent states are reasoning steps, the transition is the LLM, and the
emission is a Bernoulli "acceptance" with probability the reward of the step. B prompts × N particles are B·N
rows of one batched KV cache; resampling re-indexes the cache rows (no re-prefill, no text round trip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.outputs import DecodingOutput
from ..smc.decoding import prepare, select_final
from ..smc.sweep import ParticleSweep, ResamplingPolicy, assemble_output

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PARTICLE_FILTER_DEFAULTS", "particle_filter"]

PARTICLE_FILTER_DEFAULTS: dict[str, Any] = {
    "num_particles": 8,
    "score_mode": "model",
    "weight_transform": "logit",
    "softmax_temperature": 1.0,
    "weight_update": "potential",
    "resampling": "systematic",
    "ess_threshold": 0.5,
    "finished_particles": "absorb",
    "selection": "argmax",
    "on_reward_error": "raise",
}


def particle_filter(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
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
    r"""Particle filtering over reasoning steps (a `custom_generate` callable).

    Every option can also come from the generation config (`GenerationConfig(num_particles=16, ...)`) or from
    `preset="paper"`; the call's value wins, then the generation config, then the preset, then the default.

    Args:
        num_particles (`int`, *optional*, defaults to 8): N particles per prompt.
        reward_model (*optional*): a [`~hf_decoding.rewards.RewardModel`], an object with
            `score(prompts, partial_texts) -> list[list[float]]`, or such a callable. Required.
        step_delimiter (`str` or `list[str]`, *optional*, defaults to `"\n\n"`): ends a step (matched on token ids,
            merged tokens included). `""` or unset together with `tokens_per_step`: fixed-size steps.
        tokens_per_step (`int`, *optional*): a step also ends after this many tokens.
        max_steps (`int`, *optional*): a particle finishes after this many steps.
        stop_pattern (`str`, *optional*): regex; a particle whose step matches finishes (e.g.
            `hf_decoding.smc.steps.BOXED_PATTERN`, a closed `\boxed{...}`).
        score_mode (`str`, *optional*, defaults to `"model"`): `model | last | min | prod`.
        weight_transform (`str`, *optional*, defaults to `"logit"`): `logit | log | identity`.
        softmax_temperature (`float`, *optional*, defaults to 1.0): log-potentials are divided by it.
        weight_update (`str`, *optional*, defaults to `"potential"`): `potential | twisted`.
        resampling (`str`, *optional*, defaults to `"systematic"`): `systematic | stratified | multinomial | residual`.
        ess_threshold (`float`, *optional*, defaults to 0.5): resample when `ESS < ess_threshold * N`.
        finished_particles (`str`, *optional*, defaults to `"absorb"`): `absorb | reference`.
        selection (`str`, *optional*, defaults to `"argmax"`): `argmax | sample | weighted_vote`.
        answer_extractor (`Callable[[str], str | None]`, *optional*): for `weighted_vote` (default: last
            `\boxed{}`, else "answer is N", else the last number).
        on_reward_error (`str`, *optional*, defaults to `"raise"`): `raise | neg_inf`.
        preset (`str`, *optional*): `"paper"` reproduces the reference code's choices (see
            [`~hf_decoding.smc.options.PRESETS`]).
        reward_prompts (`list[str]`, *optional*): the question text per prompt handed to the reward model
            (default: the decoded prompt, chat template included).
        seed (`int`, *optional*) / generator (`torch.Generator`, *optional*): randomness of sampling and resampling.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for text delimiters, text rewards, stop patterns
            and votes; `hf_decoding.enable` forwards `generate(tokenizer=...)`.
        progress (`bool`, *optional*, defaults to `False`): a tqdm bar over steps.

    Returns:
        `torch.LongTensor` of shape `(B, P + L)` (the selected particle of each prompt), or a
        [`~hf_decoding.DecodingOutput`] with `.particles` and `.cost` when `return_dict_in_generate=True`.
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
        method="particle_filter",
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
    options = setup.options
    batch = setup.new_batch(options.num_particles, reuse=False)
    session = setup.new_session(batch)
    policy = ResamplingPolicy(options.resampling, options.ess_threshold, setup.generator)
    sweep = ParticleSweep(batch, setup.runner, session, options, policy, setup.meter, progress=progress)
    result = sweep.run()
    selected = select_final(setup, result, options.selection)
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=1 + batch.forward_passes,
        generated_tokens=result.generated_tokens,
    )
