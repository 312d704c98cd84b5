"""`decoding="distortion_aware_nucleus"`: nucleus sampling with kept mass exactly `top_p` at every step."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import TopPLogitsWarper

from ..errors import invalid_argument, warn
from ..generation.arguments import GENERATOR, SEED, STREAMER, Argument, DecoderCall, decoder
from ..generation.loop import call_generator, option, sampling_loop
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


@decoder(
    (
        STREAMER,
        SEED,
        GENERATOR,
        Argument(
            "nucleus_prefilter_k",
            "int",
            "candidates sorted before the exact fallback (only affects speed).",
            "int | None",
        ),
    ),
    defaults={"nucleus_prefilter_k": 256},
)
def distortion_aware_nucleus(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Sampling with the distortion-aware nucleus in place of top-p (`top_p` from the call or the config).

    Every step keeps exactly `top_p` of the probability mass (the boundary token is down-weighted), so
    `out.distortion.per_step` is the constant `-log(top_p)` at temperature 1 and the total distortion has zero
    spread across equal-length samples. Other warpers (temperature, top-k, min-p, ...) still apply in
    transformers' order; they add their own, path-dependent distortion.
    """
    generation_config = call.generation_config
    top_p = generation_config.top_p if generation_config.top_p is not None else 1.0
    if not generation_config.do_sample:
        warn(
            "decoding='distortion_aware_nucleus' with do_sample=False is greedy decoding; pass do_sample=True.",
        )
    elif top_p >= 1.0:
        warn(
            "decoding='distortion_aware_nucleus' with top_p=1.0 keeps every token (plain sampling); pass top_p < 1.",
        )
    prefilter_k = option(generation_config, "nucleus_prefilter_k", call["nucleus_prefilter_k"], 256)
    if not isinstance(prefilter_k, int) or isinstance(prefilter_k, bool) or prefilter_k <= 0:
        raise invalid_argument(
            "nucleus_prefilter_k", prefilter_k, "a positive integer", "256 is a good default; it only affects speed."
        )
    processors = call.logits_processor
    if generation_config.do_sample:
        processors = with_distortion_aware_nucleus(processors, top_p, prefilter_k)
    result, _ = sampling_loop(call.replace(logits_processor=processors), generator=call_generator(call))
    return result
