"""`decoding="sample"`: transformers' greedy/multinomial sampling, token for token, plus distortion accounting."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..generation.loop import make_generator, option, sampling_loop
from ..generation.outputs import DecodingOutput

__all__ = ["sample"]


def sample(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer: Any | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | DecodingOutput:
    r"""The reference loop: greedy (`do_sample=False`) or multinomial sampling through the processors `generate` built.

    With the same torch seed and processors it returns exactly the tokens of transformers' built-in path, and
    with `return_dict_in_generate=True` it also fills `out.distortion` and `out.cost`.

    Args:
        seed (`int`, *optional*): seeds a private `torch.Generator` (default: torch's global generator, as
            transformers does, so `torch.manual_seed` reproduces the built-in results).
        generator (`torch.Generator`, *optional*): draw from this generator instead.
        streamer (`BaseStreamer`, *optional*): bound by `hf_decoding.enable`'s `generate`.
    """
    generator = make_generator(option(generation_config, "seed", seed, None), generator, input_ids.device)
    result, _ = sampling_loop(
        model,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        model_kwargs,
        streamer=streamer,
        generator=generator,
    )
    return result
