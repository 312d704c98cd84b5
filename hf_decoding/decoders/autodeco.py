"""`decoding="autodeco"`: per-row, per-token temperature and top-p predicted by the AutoDeco heads.

At every step the heads read the post-final-norm hidden state of the last position (captured at the LM head's
input, so no `output_hidden_states` is requested) and the raw logits, and predict `T̂` and `P̂` for every row. The
applied values follow the official vLLM integration, with the user's `temperature` / `top_p` as multipliers:

    T = T̂ · T_user   (T_user = 0, or do_sample=False: greedy)
    p = clamp(P̂ · p_user, 0, 1)

Temperature comes first, then transformers' other warpers in their usual order with top-p at its usual place
(`[penalties..., T, top-k, top-p, min-p, ...]`). Rows are independent: a row's predictions do not depend on the
other rows of the batch.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..autodeco.heads import AutoDecoHeads, capture_lm_head_input
from ..autodeco.modeling import AutoDecoModelForCausalLM, check_base_fits
from ..errors import invalid_argument
from ..generation.arguments import GENERATOR, SEED, STREAMER, Argument, DecoderCall, decoder
from ..generation.loop import call_generator, sampling_loop
from ..generation.outputs import AutoDecoTrace, DecodingOutput
from ..processors.distortion import is_normalization, is_warper
from ..processors.per_row import PerRowTemperatureLogitsWarper, PerRowTopPLogitsWarper

__all__ = ["apply_multipliers", "autodeco", "resolve_heads", "with_per_row_warpers"]

_MIN_TOP_P = 1e-6


def with_per_row_warpers(
    processors: LogitsProcessorList,
) -> tuple[LogitsProcessorList, PerRowTemperatureLogitsWarper, PerRowTopPLogitsWarper]:
    """Replaces transformers' temperature and top-p warpers by per-row ones, at their usual places.

    The per-row temperature takes the place of `TemperatureLogitsWarper` (or goes first in the warping segment when
    there is none, i.e. `temperature=1`); the per-row top-p takes the place of `TopPLogitsWarper` (or goes right
    after the temperature/top-h/top-k warpers). Other processors are kept in order.

    Returns:
        `(processors, temperature_warper, top_p_warper)`; set the per-row values with `set_values(...)`.
    """
    temperature = PerRowTemperatureLogitsWarper(1.0)
    top_p = PerRowTopPLogitsWarper(1.0)
    out = LogitsProcessorList(p for p in processors if not isinstance(p, (TemperatureLogitsWarper, TopPLogitsWarper)))
    warpers = [i for i, p in enumerate(out) if is_warper(p)]
    if warpers:
        position = warpers[0]
    else:
        position = len(out)
        while position > 0 and is_normalization(out[position - 1]):
            position -= 1
    out.insert(position, temperature)
    after = position
    for i, processor in enumerate(out):
        if isinstance(processor, (TopHLogitsWarper, TopKLogitsWarper)):
            after = max(after, i)
    out.insert(after + 1, top_p)
    return out, temperature, top_p


def apply_multipliers(
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    user_temperature: float,
    user_top_p: float,
    min_top_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final per-row values `(T̂ · T_user, clamp(P̂ · p_user, min_top_p, 1))`, each of shape `(B,)`."""
    final_t = temperature * user_temperature
    final_p = (top_p * user_top_p).clamp(min=max(min_top_p, _MIN_TOP_P), max=1.0)
    return final_t, final_p


def resolve_heads(model: Any, autodeco_heads: Any) -> Any:
    """The [`AutoDecoHeads`] to use: `autodeco_heads` (heads, an AutoDeco model, or a checkpoint path / Hub id),
    else the heads of `model` itself.

    Raises:
        [`IncompatibleCheckpointError`]: the heads were built for another hidden size or model type than `model`'s.
    """
    source = autodeco_heads if autodeco_heads is not None else model
    heads = source if isinstance(source, AutoDecoHeads) else getattr(source, "heads", None)
    if isinstance(heads, AutoDecoHeads):
        if source is not model:
            check_base_fits(heads.config, model.llm if isinstance(model, AutoDecoModelForCausalLM) else model)
        return heads
    if isinstance(source, (str, os.PathLike)):
        return AutoDecoModelForCausalLM.from_pretrained(source, base_model=model).heads
    raise invalid_argument(
        "autodeco_heads",
        autodeco_heads,
        "AutoDeco heads, an AutoDecoModelForCausalLM or a checkpoint path / Hub id",
        "Load them with `AutoDecoModelForCausalLM.from_pretrained(...)` and pass `autodeco_heads=model.heads`.",
    )


@decoder(
    (
        Argument(
            "autodeco_heads",
            "AutoDecoHeads, AutoDecoModelForCausalLM or str",
            "the heads, or a checkpoint directory / Hub id to load them from (checked against `model`; default: "
            "the heads of `model` itself).",
        ),
        STREAMER,
        SEED,
        GENERATOR,
    )
)
def autodeco(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""AutoDeco decoding: the heads' temperature and top-p, per row and per token.

    Works on any causal LM: as the default of [`AutoDecoModelForCausalLM.generate`], or on a plain model with
    `model.generate(**inputs, custom_generate=hf_decoding.decoders.autodeco, autodeco_heads=heads, do_sample=True,
    top_k=0)` (transformers adds `top_k=50` by default whenever sampling; pass `top_k=0` for the paper's setting).

    Returns:
        The token tensor, or a [`DecodingOutput`] whose `autodeco` field holds the applied `temperature` and `top_p`
        (`(B, new)`, NaN after a row finished; the temperature is 0 under greedy decoding) and whose `distortion`
        is measured with the per-row temperatures.
    """
    model, generation_config = call.model, call.generation_config
    heads = resolve_heads(model, call["autodeco_heads"])
    user_t = 1.0 if generation_config.temperature is None else float(generation_config.temperature)
    user_p = 1.0 if generation_config.top_p is None else float(generation_config.top_p)
    do_sample = bool(generation_config.do_sample) and user_t > 0
    processors = call.logits_processor
    temperature_warper = top_p_warper = None
    if do_sample:
        processors, temperature_warper, top_p_warper = with_per_row_warpers(call.logits_processor)
    min_top_p = float(getattr(heads.config, "min_top_p", 0.0) or 0.0)
    records: dict[str, list[torch.Tensor]] = {"temperature": [], "top_p": []}

    with capture_lm_head_input(model) as capture:

        def step_hook(outputs: Any, chain: Any, unfinished: torch.Tensor) -> None:
            hidden = capture.pop()[:, -1]  # (B, H): post-norm hidden state of the last position
            logits = outputs.logits[:, -1]  # (B, V): raw logits, as the heads were trained on
            with torch.no_grad():
                predictions = heads(hidden, logits)
            final_t, final_p = apply_multipliers(
                predictions.temperature.float(), predictions.top_p.float(), user_t, user_p, min_top_p
            )
            final_t, final_p = final_t.to(call.device), final_p.to(call.device)  # (B,), (B,)
            if do_sample:
                temperature_warper.set_values(final_t)
                top_p_warper.set_values(final_p)
            else:
                final_t = torch.zeros_like(final_t)
            records["temperature"].append(final_t)
            records["top_p"].append(final_p)

        generator = call_generator(call)
        if not do_sample:
            generation_config = _greedy_config(generation_config)
        result, stacked = sampling_loop(
            call.replace(logits_processor=processors, generation_config=generation_config),
            generator=generator,
            step_hook=step_hook,
            step_records=records,
        )
    if isinstance(result, DecodingOutput):
        result.autodeco = AutoDecoTrace(temperature=stacked["temperature"], top_p=stacked["top_p"])
    return result


def _greedy_config(generation_config: GenerationConfig) -> GenerationConfig:
    if not generation_config.do_sample:
        return generation_config
    config = copy.copy(generation_config)
    config.do_sample = False
    return config
