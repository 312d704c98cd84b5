"""`decoding="masked_diffusion"`: LLaDA / Dream / Fast-dLLM-style sampling for masked-diffusion LMs.

The decoder is a `custom_generate` callable like every other decoder, so it runs through transformers'
`generate` preparation for models that have `generate` (LLaDA- and Dream-style remote code with
`GenerationMixin`). transformers' own masked LMs (`BertForMaskedLM`, `ModernBertForMaskedLM`, ...) have no
`generate`; [`attach_masked_diffusion_generate`] gives them one that accepts `decoding="masked_diffusion"`.
The loop itself lives in `hf_decoding.diffusion`.
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria

from ..diffusion.adapters import MaskedDiffusionAdapter, resolve_mask_token_id
from ..diffusion.config import MaskedDiffusionConfig
from ..diffusion.outputs import MaskedDiffusionOutput
from ..diffusion.sampling import masked_diffusion_sample
from ..errors import InvalidDecodingArgument, invalid_argument, warn
from ..generation.cache import CACHE_NAMES
from ..generation.dispatch import generate_with_decoder
from ..generation.loop import make_generator, option
from ..generation.outputs import DecodingCost

__all__ = ["attach_masked_diffusion_generate", "masked_diffusion", "supports_masked_diffusion"]

# Processors whose parameters the decoder reads from the generation config and applies itself.
_HANDLED_PROCESSORS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
_HANDLED_CRITERIA = (MaxLengthCriteria, EosTokenCriteria, MaxTimeCriteria)
# Model kwargs prepared by `generate` for causal decoding that a bidirectional denoiser does not use.
_IGNORED_MODEL_KWARGS = frozenset(
    {
        "position_ids",
        "use_cache",
        *CACHE_NAMES,
        "cache_position",
        "logits_to_keep",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "inputs_tensor",
    }
)
_ATTACHED_FLAG = "_hf_decoding_masked_generate"


def masked_diffusion(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    generation_config: GenerationConfig | None = None,
    gen_length: int | None = None,
    diffusion_steps: int | None = None,
    steps: int | None = None,
    block_length: int | None = None,
    unmasking: str | None = None,
    remasking: str | None = None,
    unmasking_confidence: str | None = None,
    unmasking_schedule: str | None = None,
    schedule_eps: float | None = None,
    unmasking_threshold: float | None = None,
    unmasking_entropy_bound: float | None = None,
    cfg_scale: float | None = None,
    suppress_eos: bool | None = None,
    defer_eos: bool | None = None,
    stop_at_eos: bool | None = None,
    logits_shift: bool | None = None,
    mask_token_id: int | None = None,
    output_history: bool | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Any | None = None,
    tokenizer: Any | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | MaskedDiffusionOutput:
    r"""Masked-diffusion decoding: fill `gen_length` mask tokens after the prompt in `diffusion_steps` forward passes.

    ```python
    model = hf_decoding.enable(model)   # BertForMaskedLM, ModernBertForMaskedLM, LLaDA/Dream-style models
    out = model.generate(**inputs, decoding="masked_diffusion", gen_length=64, diffusion_steps=16,
                         block_length=32, unmasking="threshold", unmasking_threshold=0.9,
                         do_sample=True, temperature=0.7, top_k=0, seed=0, return_dict_in_generate=True)
    out.sequences, out.cost.forward_passes, out.history
    ```

    Every option below also reads from the generation config (`set_default_decoding(model, "masked_diffusion",
    diffusion_steps=32)` persists defaults). The options are documented on [`MaskedDiffusionConfig`]; sampling
    keeps its `GenerationConfig` meaning: `do_sample=False` is greedy (LLaDA's temperature 0); with
    `do_sample=True` candidates are Gumbel-max draws at `temperature` from the `top_k` most likely tokens (pass
    `top_k=0` for the untruncated distribution, the setting of the convergence theory) and the nucleus `top_p`.

    Args:
        model: a bidirectional denoiser with a mask token (see [`MaskedDiffusionAdapter`]).
        input_ids (`torch.LongTensor` of shape `(B, P)`): left-padded prompts.
        logits_processor (`LogitsProcessorList`, *optional*): temperature, top-k and top-p are applied through
            their generation-config values; other processors assume left-to-right decoding and are not applied
            (a [`HfDecodingWarning`] names them).
        stopping_criteria (`StoppingCriteriaList`, *optional*): length and EOS criteria are implied by
            `gen_length` and `stop_at_eos`; others are not applied (warned).
        generation_config (`GenerationConfig`, *optional*): the merged config of the call.
        steps (`int`, *optional*): LLaDA's name for `diffusion_steps` (either may be given; both must then agree).
        remasking (`str`, *optional*): LLaDA's / Fast-dLLM's name for `unmasking` (`"low_confidence"`,
            `"random"`, ...); an alias under the same rule: either may be given, both must then agree.
        gen_length, diffusion_steps, block_length, unmasking, unmasking_confidence, unmasking_schedule, schedule_eps, unmasking_threshold,
        unmasking_entropy_bound, cfg_scale, suppress_eos, defer_eos, stop_at_eos, logits_shift, mask_token_id,
        output_history: see [`MaskedDiffusionConfig`]. `gen_length` defaults to `max_new_tokens` when that is
            set, else 128.
        seed (`int`, *optional*): seeds a private `torch.Generator`.
        generator (`torch.Generator`, *optional*): draw from this generator instead.
        streamer (`BaseStreamer`, *optional*): finished blocks through `put`; with `put_draft` (transformers'
            `TextDiffusionStreamer`) also the current block after every step.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): only used to find the mask token id.
        model_kwargs: `attention_mask` (0 on left padding); the cache and position entries `generate` prepares
            for causal models are ignored.

    Returns:
        `torch.LongTensor` of shape `(B, P + gen_length)`, or a [`MaskedDiffusionOutput`] (with `cost` and, when
        requested, `history`) when `return_dict_in_generate=True`.

    Raises:
        [`InvalidDecodingArgument`]: bad options (`diffusion_steps < 1`, `gen_length` not a multiple of
        `block_length`, unknown rule or schedule, ...) or a model without a mask token.
    """
    generation_config = generation_config if generation_config is not None else GenerationConfig()
    attention_mask = model_kwargs.pop("attention_mask", None)
    unknown = sorted(k for k, v in model_kwargs.items() if k not in _IGNORED_MODEL_KWARGS and v is not None)
    if unknown:
        raise InvalidDecodingArgument(
            f"`masked_diffusion` got unexpected arguments {unknown}. Fix: check their spelling against "
            "hf_decoding.diffusion.MaskedDiffusionConfig (diffusion_steps, gen_length, block_length, unmasking, ...)."
        )
    _warn_unapplied(logits_processor, stopping_criteria)

    def pick(name: str, value: Any, default: Any) -> Any:
        return option(generation_config, name, value, default)

    if steps is not None and diffusion_steps is not None and steps != diffusion_steps:
        raise invalid_argument(
            "steps",
            steps,
            f"equal to diffusion_steps={diffusion_steps} when both are given",
            "`steps` is LLaDA's name for `diffusion_steps`: pass only one of them.",
        )
    call_steps = diffusion_steps if diffusion_steps is not None else steps
    if remasking is not None and unmasking is not None and remasking != unmasking:
        raise invalid_argument(
            "remasking",
            remasking,
            f"equal to unmasking={unmasking!r} when both are given",
            "`remasking` is LLaDA's name for `unmasking`: pass only one of them.",
        )
    call_unmasking = unmasking if unmasking is not None else remasking
    max_new_tokens = getattr(generation_config, "max_new_tokens", None)
    config = MaskedDiffusionConfig(
        gen_length=pick("gen_length", gen_length, max_new_tokens if max_new_tokens else 128),
        diffusion_steps=pick("diffusion_steps", call_steps, getattr(generation_config, "steps", None)),
        block_length=pick("block_length", block_length, None),
        unmasking=pick("unmasking", call_unmasking, getattr(generation_config, "remasking", None) or "low_confidence"),
        unmasking_confidence=pick("unmasking_confidence", unmasking_confidence, "candidate"),
        unmasking_schedule=pick("unmasking_schedule", unmasking_schedule, "linear"),
        schedule_eps=pick("schedule_eps", schedule_eps, 1e-3),
        unmasking_threshold=pick("unmasking_threshold", unmasking_threshold, 0.9),
        unmasking_entropy_bound=pick("unmasking_entropy_bound", unmasking_entropy_bound, 0.1),
        cfg_scale=pick("cfg_scale", cfg_scale, 0.0),
        suppress_eos=bool(pick("suppress_eos", suppress_eos, False)),
        defer_eos=bool(pick("defer_eos", defer_eos, False)),
        stop_at_eos=bool(pick("stop_at_eos", stop_at_eos, True)),
        logits_shift=pick("logits_shift", logits_shift, None),
        mask_token_id=pick("mask_token_id", mask_token_id, None),
        output_history=bool(pick("output_history", output_history, False)),
    )
    mask_id = resolve_mask_token_id(model, config.mask_token_id, tokenizer, generation_config)
    adapter = MaskedDiffusionAdapter(model, mask_id, logits_shift=config.logits_shift)
    generator = make_generator(pick("seed", seed, None), generator, input_ids.device)

    eos = generation_config.eos_token_id
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = generation_config.pad_token_id
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    do_sample = bool(generation_config.do_sample)
    temperature = generation_config.temperature if generation_config.temperature is not None else 1.0
    if do_sample and temperature <= 0:
        raise invalid_argument(
            "temperature", temperature, "strictly positive when do_sample=True", "Pass do_sample=False for greedy."
        )
    result = masked_diffusion_sample(
        adapter,
        input_ids,
        attention_mask,
        config,
        do_sample=do_sample,
        temperature=float(temperature),
        top_k=generation_config.top_k,
        top_p=generation_config.top_p,
        eos_token_ids=eos_ids,
        pad_token_id=pad,
        generator=generator,
        streamer=streamer,
    )
    if not generation_config.return_dict_in_generate:
        return result.sequences
    return MaskedDiffusionOutput(
        sequences=result.sequences,
        history=tuple(result.history) if config.output_history else None,
        steps=result.steps,
        cost=DecodingCost(
            forward_passes=result.forward_passes,
            generated_tokens=result.generated_tokens,
            seconds={"total": result.seconds},
        ),
    )


def _warn_unapplied(
    logits_processor: LogitsProcessorList | None, stopping_criteria: StoppingCriteriaList | None
) -> None:
    processors = [type(p).__name__ for p in logits_processor or [] if not isinstance(p, _HANDLED_PROCESSORS)]
    criteria = [type(c).__name__ for c in stopping_criteria or [] if not isinstance(c, _HANDLED_CRITERIA)]
    if processors or criteria:
        warn(
            f"masked_diffusion does not apply {processors + criteria}: they assume left-to-right decoding. "
            "Temperature, top_k, top_p, EOS and length are handled by the decoder itself.",
        )


def supports_masked_diffusion(model: Any) -> bool:
    """Whether `model` looks like a masked LM that lacks `generate`: the case [`attach_masked_diffusion_generate`]
    is for (a `torch.nn.Module`, not a decoder, with an output embedding or a configured mask token)."""
    if hasattr(model, "generate") or not isinstance(model, torch.nn.Module):
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "mask_token_id", None) is not None:
        return True
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    return callable(get_output_embeddings) and get_output_embeddings() is not None


def attach_masked_diffusion_generate(model: Any) -> Any:
    r"""Gives a masked LM without `generate` (e.g. `BertForMaskedLM`) a `generate` that runs masked diffusion.

    Idempotent; returns the same model. `hf_decoding.enable(model)` calls it for such models, so afterwards
    `model.generate(**inputs, decoding="masked_diffusion", ...)` works as for any model. The attached method:

    - accepts `input_ids`/`inputs`, `attention_mask`, `generation_config`, `GenerationConfig` fields as keywords
      (`do_sample`, `temperature`, `top_k`, `top_p`, `eos_token_id`, `pad_token_id`, `num_return_sequences`,
      `return_dict_in_generate`, `max_new_tokens` as the default `gen_length`), `streamer`, `tokenizer`, and
      every [`masked_diffusion`] option;
    - runs `decoding="masked_diffusion"` when `decoding` is unset (the only method such a model supports);
    - raises [`InvalidDecodingArgument`] for any other `decoding` / `custom_generate`: those need a causal LM.

    Args:
        model (`torch.nn.Module`): the masked LM.

    Returns:
        The same model.
    """
    if getattr(model, _ATTACHED_FLAG, False):
        return model
    if hasattr(model, "generate"):
        raise invalid_argument(
            "model",
            type(model).__name__,
            "a model without its own `generate`",
            "It already has one: use hf_decoding.enable(model) and decoding='masked_diffusion'.",
        )
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig()
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        if pad is not None:
            model.generation_config.pad_token_id = pad

    @torch.no_grad()
    def generate(
        self: Any,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: Any | None = None,
        decoding: str | None = None,
        custom_generate: Any | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | MaskedDiffusionOutput:
        name = type(self).__name__
        if decoding is not None and decoding != "masked_diffusion":
            raise invalid_argument(
                "decoding",
                decoding,
                f"'masked_diffusion' for {name} (a masked LM without a causal `generate`)",
                f"Other decoding methods need a causal LM (AutoModelForCausalLM); {name} fills masks in parallel.",
            )
        decoder = masked_diffusion
        if custom_generate is not None:
            target = custom_generate.func if isinstance(custom_generate, functools.partial) else custom_generate
            if not getattr(target, "supports_masked_lm", False):
                raise invalid_argument(
                    "decoding",
                    getattr(target, "__name__", target),
                    f"'masked_diffusion' for {name} (a masked LM without a causal `generate`)",
                    "Other decoding methods need a causal LM (AutoModelForCausalLM); "
                    "use decoding='masked_diffusion' here.",
                )
            decoder = custom_generate
        prepare = functools.partial(_prepare_and_decode, self)
        return generate_with_decoder(
            prepare,
            decoder,
            self,
            inputs,
            generation_config=generation_config,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            streamer=streamer,
            **kwargs,
        )

    model.generate = types.MethodType(generate, model)
    setattr(model, _ATTACHED_FLAG, True)
    return model


def _prepare_and_decode(
    model: Any,
    inputs: torch.LongTensor | None = None,
    generation_config: GenerationConfig | None = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: Any | None = None,
    tokenizer: Any | None = None,
    custom_generate: Any = None,
    **kwargs: Any,
) -> Any:
    """What transformers' `generate` does before a `custom_generate` callable, for a masked LM: the config merge,
    `num_return_sequences`, the prompt to the streamer. `streamer` and `tokenizer` reach the decoder bound into
    `custom_generate` (as for causal models)."""
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise invalid_argument("input_ids", None, "a (B, P) tensor of prompt token ids")
    base = generation_config if generation_config is not None else model.generation_config
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    kwargs = config.update(**kwargs)  # GenerationConfig fields go to the config; the rest stays
    attention_mask = kwargs.pop("attention_mask", None)
    repeats = config.num_return_sequences or 1
    if repeats > 1:
        input_ids = input_ids.repeat_interleave(repeats, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    return custom_generate(
        model,
        input_ids,
        logits_processor=LogitsProcessorList(logits_processor or []),
        stopping_criteria=StoppingCriteriaList(stopping_criteria or []),
        generation_config=config,
        attention_mask=attention_mask,
        **kwargs,
    )


#: `masked_diffusion` runs on masked LMs without `generate`; `hf_decoding.enable` reads these to attach one.
masked_diffusion.supports_masked_lm = True  # type: ignore[attr-defined]
masked_diffusion.supports_model = supports_masked_diffusion  # type: ignore[attr-defined]
masked_diffusion.attach_generate = attach_masked_diffusion_generate  # type: ignore[attr-defined]
