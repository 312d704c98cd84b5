"""The keyword arguments of the particle decoders, declared once.

Every particle decoder (`particle_filter`, `particle_gibbs`, `parallel_tempering`, `beam_search_prm`, `dvts`,
`best_of_n`, `weighted_best_of_n`, `self_consistency`) takes a subset of the [`ARGUMENTS`] below plus, possibly, a
few of its own. [`particle_decoder`] gives the decoder its signature (transformers' `generate` reads a
`custom_generate` callable's signature to route these keywords to it, so `generate(decoding=..., num_particles=16)`
and `GenerationConfig(num_particles=16)` keep working) and the "Args" section of its docstring, with the
decoder's own defaults. The decorated function receives one [`DecoderCall`]: the `custom_generate` inputs, its arguments and the model kwargs. Validation
lives in [`~hf_decoding.smc.options.ParticleOptions`] and [`~hf_decoding.smc.steps.StepConfig`].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..generation.arguments import GENERATOR, SEED, Argument, DecoderCall, decoder

__all__ = [
    "ARGUMENTS",
    "INDEPENDENT_ARGUMENTS",
    "INDEPENDENT_DEFAULTS",
    "INDEPENDENT_FIXED",
    "SEARCH_ARGUMENTS",
    "SELF_CONSISTENCY_ARGUMENTS",
    "SWEEP_ARGUMENTS",
    "Argument",
    "DecoderCall",
    "particle_decoder",
]


ARGUMENTS: dict[str, Argument] = {
    a.name: a
    for a in (
        Argument("num_particles", "int", "N, particles (completions, beams) per prompt.", "int | None"),
        Argument(
            "num_chains",
            "int",
            "independent chains per prompt, run as extra groups of one batch; the final selection looks at the "
            "last iteration's particles of every chain; defaults to 1.",
            "int | None",
        ),
        Argument(
            "temperature_ladder",
            "Sequence[float]",
            "softmax temperature of each chain (all `> 0`; it replaces `softmax_temperature`); the answer comes "
            "from the coldest; defaults to `(1.0, 2.0, 4.0)`.",
            "Sequence[float] | None",
        ),
        Argument(
            "num_iterations",
            "int",
            "sweeps: conditional-SMC sweeps of particle Gibbs (the first is a plain particle filter), after each "
            "of which parallel tempering proposes swaps.",
            "int | None",
        ),
        Argument(
            "reward_model",
            "RewardModel",
            "a [`~hf_decoding.rewards.RewardModel`], an object with `score(prompts, partial_texts) -> "
            "list[list[float]]`, or such a callable.",
        ),
        Argument(
            "step_delimiter",
            "str or list[str]",
            'ends a step (matched on token ids, merged tokens included; unset: `"\\n\\n"`). `""` or unset '
            "together with `tokens_per_step`: fixed-size steps.",
            "str | list[str] | None",
        ),
        Argument("tokens_per_step", "int", "a step also ends after this many tokens.", "int | None"),
        Argument("max_steps", "int", "a particle finishes after this many steps.", "int | None"),
        Argument(
            "stop_pattern",
            "str",
            "regex; a particle whose step matches finishes (e.g. `hf_decoding.smc.steps.BOXED_PATTERN`, a closed "
            "`\\boxed{...}`).",
            "str | None",
        ),
        Argument("score_mode", "str", "how step scores become one score: `model | last | min | prod`.", "str | None"),
        Argument("weight_transform", "str", "score to log-potential: `logit | log | identity`.", "str | None"),
        Argument("softmax_temperature", "float", "log-potentials are divided by it.", "float | None"),
        Argument("weight_update", "str", "incremental log-weight: `potential | twisted`.", "str | None"),
        Argument("resampling", "str", "`systematic | stratified | multinomial | residual`.", "str | None"),
        Argument("ess_threshold", "float", "resample when `ESS < ess_threshold * N` (in `[0, 1]`).", "float | None"),
        Argument("finished_particles", "str", "`absorb | reference`.", "str | None"),
        Argument("selection", "str", "the returned particle: `argmax | sample | weighted_vote`.", "str | None"),
        Argument(
            "answer_extractor",
            "Callable[[str], str | None]",
            'reads the final answer of a completion for votes (default: the last `\\boxed{}`, else "answer is N", '
            "else the last number).",
        ),
        Argument("on_reward_error", "str", "`raise | neg_inf`.", "str | None"),
        Argument(
            "preset",
            "str",
            '`"paper"` reproduces the reference code\'s choices (see [`~hf_decoding.smc.options.PRESETS`]).',
            "str | None",
        ),
        Argument(
            "reward_prompts",
            "list[str]",
            "the question text per prompt handed to the reward model (default: the decoded prompt, chat template "
            "included).",
            "list[str] | None",
        ),
        dataclasses.replace(SEED, doc="seeds the sampling and resampling (a private `torch.Generator`)."),
        GENERATOR,
        Argument(
            "tokenizer",
            "PreTrainedTokenizerBase",
            "needed for text delimiters, text rewards, stop patterns and votes; `hf_decoding.enable` forwards "
            "`generate(tokenizer=...)`.",
        ),
        Argument("progress", "bool", "a tqdm bar over steps.", "bool | None"),
        Argument(
            "autodeco_heads",
            "AutoDecoHeads, AutoDecoModelForCausalLM or str",
            "AutoDeco heads (or a checkpoint to load them from): every particle's tokens are drawn with the "
            "temperature and top-p the heads predict for it at every token, and `out.autodeco` holds the values "
            "applied to the returned particles. Bound automatically by `AutoDecoModelForCausalLM.generate`.",
        ),
        Argument(
            "autodeco_proposal",
            "bool",
            "`False` samples from the static configuration even when heads are given.",
            "bool | None",
        ),
    )
}

#: The step-level particle methods (particle filter, particle Gibbs; parallel tempering without
#: `softmax_temperature`).
SWEEP_ARGUMENTS: tuple[str, ...] = (
    "num_particles",
    "reward_model",
    "step_delimiter",
    "tokens_per_step",
    "max_steps",
    "stop_pattern",
    "score_mode",
    "weight_transform",
    "softmax_temperature",
    "weight_update",
    "resampling",
    "ess_threshold",
    "finished_particles",
    "selection",
    "answer_extractor",
    "on_reward_error",
    "preset",
    "reward_prompts",
    "seed",
    "generator",
    "tokenizer",
    "progress",
    "autodeco_heads",
    "autodeco_proposal",
)

#: Step-level search (beam search, DVTS): no weights, no resampling, no preset.
SEARCH_ARGUMENTS: tuple[str, ...] = tuple(
    name
    for name in SWEEP_ARGUMENTS
    if name
    not in (
        "weight_transform",
        "softmax_temperature",
        "weight_update",
        "resampling",
        "ess_threshold",
        "finished_particles",
        "preset",
    )
)

#: Independent completions scored once (best-of-N, weighted best-of-N): no steps.
INDEPENDENT_ARGUMENTS: tuple[str, ...] = (
    "num_particles",
    "reward_model",
    "score_mode",
    "stop_pattern",
    "on_reward_error",
    "reward_prompts",
    "answer_extractor",
    "seed",
    "generator",
    "tokenizer",
    "autodeco_heads",
    "autodeco_proposal",
)

#: The documented defaults of the independent-completion decoders.
INDEPENDENT_DEFAULTS: dict[str, Any] = {"num_particles": 8, "score_mode": "model", "on_reward_error": "raise"}

#: What the independent-completion methods fix: one step (the whole completion), scored once, never resampled.
INDEPENDENT_FIXED: dict[str, Any] = {
    "step_delimiter": False,
    "resampling": "systematic",
    "ess_threshold": 0.0,
    "selection": "argmax",
}

#: Self-consistency: a majority vote over independent completions; the reward only breaks ties.
SELF_CONSISTENCY_ARGUMENTS: tuple[str, ...] = (
    "num_particles",
    "stop_pattern",
    "answer_extractor",
    "reward_model",
    "seed",
    "generator",
    "tokenizer",
    "autodeco_heads",
    "autodeco_proposal",
)


def particle_decoder(
    arguments: Sequence[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    own: Sequence[Argument] = (),
    notes: Mapping[str, str] | None = None,
) -> Callable[[Callable[[DecoderCall], Any]], Callable[..., Any]]:
    """[`~hf_decoding.generation.arguments.decoder`] with the shared arguments named from [`ARGUMENTS`].

    Args:
        arguments (`Sequence[str]`): names from [`ARGUMENTS`].
        defaults (`Mapping[str, Any]`, *optional*): the decoder's defaults, printed in the docs.
        own (`Sequence[Argument]`): arguments only this decoder has (listed first).
        notes (`Mapping[str, str]`, *optional*): a sentence appended to an argument's docs for this decoder.
    """
    unknown = [name for name in arguments if name not in ARGUMENTS]
    if unknown:
        raise ValueError(f"unknown particle decoder arguments {unknown}")  # a bug in a decoder module
    return decoder([*own, *(ARGUMENTS[name] for name in arguments)], defaults=defaults, notes=notes)
