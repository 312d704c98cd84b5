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
from ..smc.proposal import register_proposal

__all__ = [
    "AutoDecoProposal",
    "HeadsSampler",
    "apply_multipliers",
    "autodeco",
    "autodeco_proposal",
    "resolve_heads",
    "with_per_row_warpers",
]

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


class HeadsSampler:
    """AutoDeco's heads applied to a processor chain: one code path for `decoding="autodeco"` and for the AutoDeco
    proposal of the particle decoders.

    The call's temperature and top-p warpers are replaced by per-row ones ([`with_per_row_warpers`]); [`predict`]
    turns the post-final-norm hidden state and the raw logits of each row into the applied `(T, p)` (the user's
    values act as multipliers, [`apply_multipliers`]; `T = 0` under greedy decoding) and [`apply`] sets them.

    Args:
        heads ([`AutoDecoHeads`]): the heads.
        generation_config (`GenerationConfig`): the call's config (user temperature / top-p, `do_sample`).
        logits_processor (`LogitsProcessorList`): the chain `generate` built.
    """

    def __init__(self, heads: AutoDecoHeads, generation_config: GenerationConfig, logits_processor: Any):
        self.heads = heads
        self.user_t = 1.0 if generation_config.temperature is None else float(generation_config.temperature)
        self.user_p = 1.0 if generation_config.top_p is None else float(generation_config.top_p)
        self.do_sample = bool(generation_config.do_sample) and self.user_t > 0
        self.min_top_p = float(getattr(heads.config, "min_top_p", 0.0) or 0.0)
        self.processors = logits_processor
        self.temperature_warper = self.top_p_warper = None
        if self.do_sample:
            self.processors, self.temperature_warper, self.top_p_warper = with_per_row_warpers(logits_processor)

    def predict(self, hidden: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(T, p)`, each `(R,)` on `logits`' device, from hidden states `(R, H)` and raw logits `(R, V)`."""
        with torch.no_grad():
            predictions = self.heads(hidden, logits)
        final_t, final_p = apply_multipliers(
            predictions.temperature.float(), predictions.top_p.float(), self.user_t, self.user_p, self.min_top_p
        )
        final_t, final_p = final_t.to(logits.device), final_p.to(logits.device)
        if not self.do_sample:
            final_t = torch.zeros_like(final_t)
        return final_t, final_p

    def apply(self, temperature: torch.Tensor, top_p: torch.Tensor) -> None:
        """Sets the per-row warpers (nothing to set under greedy decoding)."""
        if self.do_sample:
            self.temperature_warper.set_values(temperature)
            self.top_p_warper.set_values(top_p)


class AutoDecoProposal:
    """The particles' proposal under AutoDeco: every particle's tokens are drawn with the temperature and top-p the
    heads predict for it, at every token ([`~hf_decoding.smc.proposal.RowProposal`]).

    The values are recomputed after every forward pass of the policy from the hidden state captured at its LM head
    and kept in the batch's per-row state, so they follow the particles through fan-out and resampling; the applied
    values of the returned particles land in `out.autodeco` (NaN after a particle finished).
    """

    output_field = "autodeco"

    def __init__(self, sampler: HeadsSampler, capture: Any):
        self.sampler = sampler
        self.capture = capture
        self.processors = sampler.processors

    def after_forward(self, row_state: dict[str, torch.Tensor], logits: torch.Tensor, real: torch.Tensor | None):
        # (R, H): the pass that produced `logits` (a fixed-shape cache runs spare rows after the R live ones)
        hidden = self.capture.pop()[: logits.shape[0], -1]
        temperature, top_p = self.sampler.predict(hidden, logits)
        if real is not None and "temperature" in row_state:
            temperature = torch.where(real, temperature, row_state["temperature"])
            top_p = torch.where(real, top_p, row_state["top_p"])
        row_state["temperature"], row_state["top_p"] = temperature, top_p

    def before_token(self, row_state: dict[str, torch.Tensor]) -> None:
        self.sampler.apply(row_state["temperature"], row_state["top_p"])

    def token_values(self, row_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"temperature": row_state["temperature"], "top_p": row_state["top_p"]}

    def make_trace(self, values: dict[str, torch.Tensor]) -> AutoDecoTrace:
        return AutoDecoTrace(temperature=values["temperature"], top_p=values["top_p"])


@register_proposal
def autodeco_proposal(call: DecoderCall, processors: Any) -> AutoDecoProposal | None:
    """The AutoDeco proposal of a particle decoder call that has heads (`autodeco_heads=`, or an AutoDeco wrapper's
    `generate`) unless `autodeco_proposal=False`; `None` otherwise (the static chain). Without sampling
    (`do_sample=False`, or `temperature=0` on the wrapper) the heads set nothing, so there is no proposal either: the
    particles are drawn untempered, as `prepare` warns, and `out.autodeco` stays empty rather than recording values
    that were not applied."""
    if call["autodeco_heads"] is None or call["autodeco_proposal"] is False:
        return None
    sampler = HeadsSampler(resolve_heads(call.model, call["autodeco_heads"]), call.generation_config, processors)
    if not sampler.do_sample:
        return None
    capture = call.resources.enter_context(capture_lm_head_input(call.model))
    return AutoDecoProposal(sampler, capture)


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
    sampler = HeadsSampler(resolve_heads(model, call["autodeco_heads"]), generation_config, call.logits_processor)
    records: dict[str, list[torch.Tensor]] = {"temperature": [], "top_p": []}

    with capture_lm_head_input(model) as capture:

        def step_hook(outputs: Any, chain: Any, unfinished: torch.Tensor) -> None:
            # The post-norm hidden state of the last position and the raw logits, as the heads were trained on.
            final_t, final_p = sampler.predict(capture.pop()[:, -1], outputs.logits[:, -1])  # (B,), (B,)
            sampler.apply(final_t, final_p)
            records["temperature"].append(final_t)
            records["top_p"].append(final_p)

        if not sampler.do_sample:
            generation_config = _greedy_config(generation_config)
        result, stacked = sampling_loop(
            call.replace(logits_processor=sampler.processors, generation_config=generation_config),
            generator=call_generator(call),
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
