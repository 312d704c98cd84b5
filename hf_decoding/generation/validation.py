"""Up-front validation of the sampling arguments of a `generate` call routed to an `hf_decoding` decoder."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import GenerationConfig

from ..errors import invalid_argument

__all__ = ["validate_prompt", "validate_sampling_arguments"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _effective(name: str, call_kwargs: dict[str, Any], configs: list[GenerationConfig | None]) -> Any:
    if name in call_kwargs:
        return call_kwargs[name]
    for config in configs:
        if config is not None and getattr(config, name, None) is not None:
            return getattr(config, name)
    return None


def validate_sampling_arguments(call_kwargs: dict[str, Any], *configs: GenerationConfig | None) -> None:
    """Raises [`InvalidDecodingArgument`] for sampling arguments outside their range.

    The value checked for each name is the call's keyword, else the first config that sets it (the passed
    `generation_config`, then the model's).
    """
    configs_list = list(configs)
    do_sample = bool(_effective("do_sample", call_kwargs, configs_list))

    top_p = _effective("top_p", call_kwargs, configs_list)
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
        raise invalid_argument("top_p", top_p, "a number in (0, 1]", "Use 1.0 to disable nucleus filtering.")

    temperature = _effective("temperature", call_kwargs, configs_list)
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or math.isnan(temperature):
            raise invalid_argument("temperature", temperature, "a non-negative number")
        if math.isinf(temperature):
            raise invalid_argument(
                "temperature",
                temperature,
                "a finite number",
                "temperature=inf divides every logit by inf (all scores 0 or NaN); for uniform sampling over the "
                "kept tokens use a large finite value such as 1e4.",
            )
        if temperature < 0:
            raise invalid_argument(
                "temperature", temperature, "non-negative", "Use a value > 0 to sample, or do_sample=False for greedy."
            )
        if temperature == 0 and do_sample:
            raise invalid_argument(
                "temperature", temperature, "strictly positive when do_sample=True", "Pass do_sample=False for greedy."
            )

    top_k = _effective("top_k", call_kwargs, configs_list)
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise invalid_argument("top_k", top_k, "a non-negative integer", "Use 0 to disable top-k filtering.")

    min_p = _effective("min_p", call_kwargs, configs_list)
    if min_p is not None and (not isinstance(min_p, (int, float)) or isinstance(min_p, bool) or not 0 <= min_p <= 1):
        raise invalid_argument("min_p", min_p, "a number in [0, 1]", "Use None or 0 to disable min-p filtering.")

    typical_p = _effective("typical_p", call_kwargs, configs_list)
    if typical_p is not None and (
        not isinstance(typical_p, (int, float)) or isinstance(typical_p, bool) or not 0 < typical_p <= 1
    ):
        raise invalid_argument("typical_p", typical_p, "a number in (0, 1]", "Use 1.0 to disable typical filtering.")

    for name in ("max_new_tokens", "min_new_tokens", "max_length"):
        value = call_kwargs.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise invalid_argument(name, value, "an integer", f"Pass e.g. {name}=64.")
        if value < (0 if name == "min_new_tokens" else 1):
            raise invalid_argument(name, value, "positive" if name != "min_new_tokens" else "non-negative")

    num_return_sequences = call_kwargs.get("num_return_sequences")
    if num_return_sequences is not None and (not _is_int(num_return_sequences) or num_return_sequences < 1):
        raise invalid_argument("num_return_sequences", num_return_sequences, "a positive integer")


def validate_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cached_tokens: int = 0) -> None:
    """Raises [`InvalidDecodingArgument`] for a prompt a causal LM cannot continue: no token at all (shape `(B, 0)`)
    or a row whose attention mask is all zeros (an empty prompt padded to the batch width).

    `cached_tokens` counts prompt tokens already held by a passed-in cache (those rows are not empty).
    """
    if input_ids.shape[-1] == 0 and cached_tokens == 0:
        raise invalid_argument(
            "input_ids",
            f"a tensor of shape {tuple(input_ids.shape)}",
            "at least one prompt token per row",
            "A causal LM needs a token to condition on: start the prompt with the BOS token "
            "(`tokenizer.bos_token_id`) or a chat template.",
        )
    if attention_mask is not None and attention_mask.dim() == 2 and cached_tokens == 0:
        empty = (attention_mask == 0).all(-1).nonzero().flatten().tolist()
        if empty:
            raise invalid_argument(
                "attention_mask",
                f"all zeros in batch rows {empty}",
                "at least one attended prompt token per row",
                "Those prompts are empty (e.g. an empty string padded to the batch): drop them, or start each prompt "
                "with the BOS token (`tokenizer.bos_token_id`).",
            )
