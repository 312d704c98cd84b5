"""`decoding="parallel_tempering"`: particle Gibbs chains on a temperature ladder with reference swaps
(Puri et al., Algorithm 3).

Chain `k` targets `p(x) exp(Phi(x) / T_k)` with `Phi` the sum of the log-potentials over steps (the final one for
`weight_update="twisted"`). Every chain is a group of the same batched cache, so one sweep advances all of them.
After each iteration each chain draws a new reference; then adjacent chains propose to swap references and accept
with the Metropolis-Hastings probability `min(1, exp((1/T_k - 1/T_{k+1}) (Phi(x_{k+1}) - Phi(x_k))))`. The answer
is selected from the coldest chain (smallest temperature, normally 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..errors import invalid_argument
from ..generation.loop import option
from ..generation.outputs import DecodingOutput
from ..smc.decoding import prepare, run_sweep, select_final
from ..smc.potentials import log_potentials
from ..smc.sweep import ReferencePath, ResamplingPolicy, SweepResult, assemble_output
from .particle_filter import PARTICLE_FILTER_DEFAULTS
from .particle_gibbs import _positive_int, draw_references

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["parallel_tempering", "swap_references"]


def _phi(ref: ReferencePath, transform: str, twisted: bool) -> float:
    scores = torch.tensor(ref.scores[-1:] if twisted else ref.scores, dtype=torch.float64)
    return float(log_potentials(scores, transform, 1.0).sum()) if scores.numel() else 0.0


def swap_references(
    references: list[ReferencePath],
    ladder: Sequence[float],
    transform: str,
    twisted: bool,
    generator: torch.Generator | None,
) -> tuple[list[ReferencePath], int]:
    """Proposes swaps between adjacent chains of every prompt (chains are consecutive groups); returns the new
    references and the number of accepted swaps."""
    chains = len(ladder)
    refs = list(references)
    accepted = 0
    for start in range(0, len(refs), chains):
        for k in range(chains - 1):
            a, b = start + k, start + k + 1
            phi_a, phi_b = _phi(refs[a], transform, twisted), _phi(refs[b], transform, twisted)
            log_ratio = (1.0 / ladder[k] - 1.0 / ladder[k + 1]) * (phi_b - phi_a)
            if math.isnan(log_ratio):
                continue
            u = torch.rand((), generator=generator, dtype=torch.float64).item()
            if log_ratio >= 0 or u < math.exp(log_ratio):
                refs[a], refs[b] = refs[b], refs[a]
                accepted += 1
    return refs, accepted


def parallel_tempering(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_particles: int | None = None,
    num_iterations: int | None = None,
    temperature_ladder: Sequence[float] | None = None,
    reward_model: Any | None = None,
    step_delimiter: str | list[str] | None = None,
    tokens_per_step: int | None = None,
    max_steps: int | None = None,
    stop_pattern: str | None = None,
    score_mode: str | None = None,
    weight_transform: str | None = None,
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
    r"""Parallel tempering of particle-Gibbs chains (a `custom_generate` callable).

    Args:
        num_particles (`int`, *optional*, defaults to 8): particles per chain.
        num_iterations (`int`, *optional*, defaults to 2): sweeps; swaps are proposed after each.
        temperature_ladder (`Sequence[float]`, *optional*, defaults to `(1.0, 2.0, 4.0)`): softmax temperature of
            each chain (all `> 0`); the answer comes from the coldest.
        other arguments: as [`~hf_decoding.decoders.particle_filter`] (`softmax_temperature` is replaced by the
            ladder).

    Returns:
        As `particle_filter`; `.particles` holds the coldest chain's last iteration, `.cost` everything.
    """
    values = {
        "num_particles": num_particles,
        "score_mode": score_mode,
        "weight_transform": weight_transform,
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
        method="parallel_tempering",
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
    iterations = _positive_int("num_iterations", option(generation_config, "num_iterations", num_iterations, 2))
    ladder = option(generation_config, "temperature_ladder", temperature_ladder, (1.0, 2.0, 4.0))
    if isinstance(ladder, (str, bytes)) or not hasattr(ladder, "__iter__"):
        raise invalid_argument(
            "temperature_ladder",
            ladder,
            "a non-empty list of finite temperatures > 0",
            "One chain per temperature: e.g. temperature_ladder=[1.0, 2.0, 4.0] (a single chain: [1.0]).",
        )
    ladder = list(ladder)
    if not ladder or any(
        isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 for t in ladder
    ):
        raise invalid_argument("temperature_ladder", ladder, "a non-empty list of finite temperatures > 0")
    chains = len(ladder)
    options = setup.options
    groups = input_ids.shape[0] * chains
    temperatures = torch.tensor([ladder[g % chains] for g in range(groups)], dtype=torch.float64)
    policy = ResamplingPolicy(options.resampling, options.ess_threshold, setup.generator)
    references = None
    forward_passes, generated, calls, tokens, swaps = 1, 0, 0, 0, 0
    for _ in range(iterations):
        result, session, passes = run_sweep(
            setup,
            policy,
            options.num_particles,
            copies=chains,
            references=references,
            temperatures=temperatures,
            keep_steps=True,
            progress=progress,
            reuse_prefill=True,
        )
        forward_passes += passes
        generated += result.generated_tokens
        calls += session.calls
        tokens += session.tokens
        references, accepted = swap_references(
            draw_references(result, setup.generator),
            ladder,
            options.weight_transform,
            options.weight_update == "twisted",
            setup.generator,
        )
        swaps += accepted
    session.calls, session.tokens = calls, tokens
    result = _coldest_chain(result, chains, int(min(range(chains), key=lambda k: ladder[k])))
    selected = select_final(setup, result, options.selection)
    setup.meter.seconds["swaps_accepted"] = float(swaps)
    return assemble_output(
        result=result,
        selected=selected,
        generation_config=generation_config,
        meter=setup.meter,
        session=session,
        forward_passes=forward_passes,
        generated_tokens=generated,
    )


def _coldest_chain(result: SweepResult, chains: int, coldest: int) -> SweepResult:
    """Keeps the groups of chain `coldest` only (one per prompt)."""
    batch = result.batch
    n = batch.num_particles
    keep_groups = list(range(coldest, batch.num_groups, chains))
    keep_slots = [g * n + i for g in keep_groups for i in range(n)]
    index = torch.tensor(keep_groups, device=result.log_weights.device)
    batch.slot_lists = {k: [v[s] for s in keep_slots] for k, v in batch.slot_lists.items()}
    batch.finished_tokens = [batch.finished_tokens[s] for s in keep_slots]
    batch.slot_row = torch.full((len(keep_slots),), -1, dtype=torch.long, device=batch.device)
    batch.num_groups = len(keep_groups)
    batch.prompt_ids = batch.prompt_ids.index_select(0, index)
    result.log_weights = result.log_weights.index_select(0, index)
    result.scores = result.scores.index_select(0, index)
    result.ess = result.ess.index_select(0, index)
    result.ancestors = result.ancestors.index_select(0, index)
    result.log_normalizer = result.log_normalizer.index_select(0, index)
    return result
