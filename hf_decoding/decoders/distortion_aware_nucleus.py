"""`decoding="distortion_aware_nucleus"`: nucleus sampling with kept mass exactly `top_p` at every step."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import TopPLogitsWarper

from ..errors import HfDecodingWarning, invalid_argument
from ..generation.loop import make_generator, option, sampling_loop
from ..generation.outputs import DecodingOutput
from ..processors.distortion import is_normalization, is_warper
from ..processors.distortion_aware_nucleus import DistortionAwareNucleusLogitsProcessor

__all__ = ["distortion_aware_nucleus", "with_distortion_aware_nucleus"]


def with_distortion_aware_nucleus(
    processors: LogitsProcessorList, top_p: float, prefilter_k: int = 256
) -> LogitsProcessorList:
    """Replaces transformers' `TopPLogitsWarper` by [`DistortionAwareNucleusLogitsProcessor`] at the same place.

    If the chain has no top-p warper (`top_p=1.0` leaves it out), the processor goes after the last warper, before
    a final normalization.
    """
    out = LogitsProcessorList()
    replaced = False
    for processor in processors:
        if isinstance(processor, TopPLogitsWarper):
            out.append(
                DistortionAwareNucleusLogitsProcessor(
                    processor.top_p, processor.filter_value, processor.min_tokens_to_keep, prefilter_k
                )
            )
            replaced = True
        else:
            out.append(processor)
    if not replaced:
        warper_positions = [i for i, processor in enumerate(out) if is_warper(processor)]
        if warper_positions:
            position = warper_positions[-1] + 1
        else:
            position = len(out)
            while position > 0 and is_normalization(out[position - 1]):
                position -= 1
        out.insert(position, DistortionAwareNucleusLogitsProcessor(top_p, prefilter_k=prefilter_k))
    return out


def distortion_aware_nucleus(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer: Any | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    nucleus_prefilter_k: int | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""Sampling with the distortion-aware nucleus in place of top-p (`top_p` from the call or the config).

    Every step keeps exactly `top_p` of the probability mass (the boundary token is down-weighted), so
    `out.distortion.per_step` is the constant `-log(top_p)` at temperature 1 and the total distortion has zero
    spread across equal-length samples. Other warpers (temperature, top-k, min-p, ...) still apply in
    transformers' order; they add their own, path-dependent distortion.

    Args:
        seed (`int`, *optional*), generator (`torch.Generator`, *optional*): see `decoding="sample"`.
        nucleus_prefilter_k (`int`, *optional*, defaults to 256): candidates sorted before the exact fallback.
    """
    top_p = generation_config.top_p if generation_config.top_p is not None else 1.0
    if not generation_config.do_sample:
        warnings.warn(
            "decoding='distortion_aware_nucleus' with do_sample=False is greedy decoding; pass do_sample=True.",
            HfDecodingWarning,
            stacklevel=3,
        )
    elif top_p >= 1.0:
        warnings.warn(
            "decoding='distortion_aware_nucleus' with top_p=1.0 keeps every token (plain sampling); pass top_p < 1.",
            HfDecodingWarning,
            stacklevel=3,
        )
    prefilter_k = option(generation_config, "nucleus_prefilter_k", nucleus_prefilter_k, 256)
    if not isinstance(prefilter_k, int) or isinstance(prefilter_k, bool) or prefilter_k <= 0:
        raise invalid_argument(
            "nucleus_prefilter_k", prefilter_k, "a positive integer", "256 is a good default; it only affects speed."
        )
    processors = with_distortion_aware_nucleus(logits_processor, top_p, prefilter_k)
    if not generation_config.do_sample:
        processors = logits_processor
    generator = make_generator(option(generation_config, "seed", seed, None), generator, input_ids.device)
    result, _ = sampling_loop(
        model,
        input_ids,
        processors,
        stopping_criteria,
        generation_config,
        model_kwargs,
        streamer=streamer,
        generator=generator,
    )
    return result
