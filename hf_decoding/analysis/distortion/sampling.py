"""Prompts and sampling: prompt encoding, `generate` keywords per strategy and the matching contexts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import invalid_argument
from .strategies import _check_strategy

Prompt = str | Sequence[int] | torch.Tensor


def _as_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(v) for v in ids.reshape(-1).tolist()]
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], (list, tuple)):
        ids = ids[0]
    return [int(v) for v in ids]


def _pad_token_id(model: Any, tokenizer: Any | None) -> int:
    for candidate in (
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _eos_token_ids(model: Any, tokenizer: Any | None) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        return [int(v) for v in eos.reshape(-1).tolist()]
    return [int(v) for v in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def encode_prompts(
    tokenizer: Any | None,
    prompts: Sequence[Prompt],
    *,
    chat: bool | None = None,
    pad_token_id: int = 0,
    device: str | torch.device | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    r"""Tokenizes prompts into a left-padded batch.

    Args:
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed only for string prompts.
        prompts (`list[str | list[int] | torch.LongTensor]`): strings, or token ids used as they are.
        chat (`bool`, *optional*): wrap string prompts as one user turn with the tokenizer's chat template (default:
            when the tokenizer has a chat template).
        pad_token_id (`int`, *optional*, defaults to 0): id put in the left padding.
        device (`str` or `torch.device`, *optional*): where to put the tensors.

    Returns:
        `(input_ids, attention_mask)`, both `torch.LongTensor` of shape `(num_prompts, max_length)`.
    """
    if isinstance(prompts, (str, torch.Tensor)) or not len(prompts):
        raise invalid_argument("prompts", prompts, "a non-empty list of strings or of token-id lists")
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            if tokenizer is None:
                raise invalid_argument(
                    "tokenizer", None, "a tokenizer when prompts are strings", "Pass token-id lists instead."
                )
            use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
            if use_chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
                )
                ids = _as_list(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                ids = _as_list(tokenizer(prompt)["input_ids"])
        else:
            ids = _as_list(prompt)
        if not ids:
            raise invalid_argument("prompts", prompt, "prompts with at least one token")
        encoded.append(ids)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_kwargs_for(strategy: str, value: float) -> dict[str, Any]:
    """`generate` keywords that sample with `strategy` at parameter `value` and nothing else.

    Every other warper is switched off explicitly (`top_k=0`, `top_p=1.0`, `temperature=1.0`, `min_p=None`), since
    transformers otherwise fills in `top_k=50` and the model's generation config may set more.
    """
    _check_strategy(strategy)
    kwargs: dict[str, Any] = {
        "decoding": "sample",
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": None,
    }
    if strategy == "top_k":
        kwargs["top_k"] = int(value)
    elif strategy == "top_p":
        kwargs["top_p"] = float(value)
    elif strategy == "temperature":
        kwargs["temperature"] = float(value)
    elif strategy == "min_p":
        kwargs["min_p"] = float(value)
    else:
        kwargs["decoding"] = "distortion_aware_nucleus"
        kwargs["top_p"] = float(value)
    return kwargs


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _generate_rows(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    index: torch.Tensor,
    max_new_tokens: int,
    seed: int,
    **kwargs: Any,
) -> Any:
    """`model.generate` on the prompt rows `index`: exactly `max_new_tokens` tokens each (EOS suppressed), seeded,
    with the raw logits of every step (`kwargs`: the decoding and any other generate argument)."""
    return model.generate(
        input_ids=input_ids[index],
        attention_mask=attention_mask[index],
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        return_dict_in_generate=True,
        output_logits=True,
        seed=seed,
        **kwargs,
    )


def collect_contexts(
    model: Any,
    tokenizer: Any | None,
    prompts: Sequence[Prompt],
    num_contexts: int = 256,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    batch_size: int = 32,
    chat: bool | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Raw next-token logits at contexts visited by pure samples of the model.

    Draws `ceil(num_contexts / max_new_tokens)` samples (prompts taken in turn) with `decoding="sample"`,
    `temperature=1`, no truncation and `min_new_tokens=max_new_tokens`, keeps `out.logits` of every step and returns
    `num_contexts` of them chosen at random (seeded). EOS is suppressed while sampling (as in [`compare_strategies`]),
    but the returned logits are the model's raw ones, EOS included.

    Args:
        model (`PreTrainedModel`): a causal LM; [`hf_decoding.enable`] is applied to it.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for string prompts.
        prompts (`list[str | list[int]]`): see [`encode_prompts`].
        num_contexts (`int`, *optional*, defaults to 256): contexts to return.
        max_new_tokens (`int`, *optional*, defaults to 32): length of each pure sample.
        seed (`int`, *optional*, defaults to 0): seeds the samples and the selection.
        batch_size (`int`, *optional*, defaults to 32): samples generated at once.
        chat (`bool`, *optional*): see [`encode_prompts`].
        progress (`bool`, *optional*, defaults to `False`): show a tqdm bar.

    Returns:
        `torch.FloatTensor` of shape `(num_contexts, vocab_size)` (float32, on CPU).
    """
    from ...registry import enable

    for name, value in (("num_contexts", num_contexts), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_argument(name, value, "a positive integer")
    enable(model)
    input_ids, attention_mask = encode_prompts(
        tokenizer, prompts, chat=chat, pad_token_id=_pad_token_id(model, tokenizer), device=_model_device(model)
    )
    num_rows = math.ceil(num_contexts / max_new_tokens)
    row_prompt = torch.arange(num_rows) % input_ids.shape[0]  # (R,)
    chunks = []
    with _progress(math.ceil(num_rows / batch_size), "contexts", progress) as bar, torch.no_grad():
        for batch, start in enumerate(range(0, num_rows, batch_size)):
            index = row_prompt[start : start + batch_size].to(input_ids.device)
            pure = generate_kwargs_for("temperature", 1.0)
            out = _generate_rows(model, input_ids, attention_mask, index, max_new_tokens, seed + batch, **pure)
            chunks.append(torch.stack(out.logits, dim=1).reshape(-1, out.logits[0].shape[-1]).float().cpu())  # (b*T, V)
            bar.update(1)
    contexts = torch.cat(chunks)  # (R * T, V)
    order = torch.randperm(contexts.shape[0], generator=torch.Generator().manual_seed(seed))[:num_contexts]
    return contexts[order]
