"""Adapters from a model to the one call a masked-diffusion sampler needs: `logits = denoise(tokens, mask)`.

They are keyed on the interface, not on `model_type`: a mask token id, a bidirectional forward that returns
logits for every position, and whether those logits are shifted by one (Dream-style models, initialised from an
autoregressive LM, predict position `i` at output `i - 1`). transformers' masked LMs (`BertForMaskedLM`,
`ModernBertForMaskedLM`, ...), LLaDA-style remote code (`model.config.mask_token_id`, a plain `forward`) and
Dream-style remote code (`diffusion_generate`, a 4-D attention mask, shifted logits) all fit.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..errors import InvalidDecodingArgument

__all__ = ["MaskedDiffusionAdapter", "resolve_mask_token_id"]


def resolve_mask_token_id(
    model: Any, mask_token_id: int | None = None, tokenizer: Any | None = None, generation_config: Any | None = None
) -> int:
    """The mask token id: the argument, else `generation_config.mask_token_id`, `model.config.mask_token_id`,
    `tokenizer.mask_token_id`.

    Raises:
        [`InvalidDecodingArgument`] naming the three ways to provide one when none is found.
    """
    sources = [
        mask_token_id,
        getattr(generation_config, "mask_token_id", None),
        getattr(getattr(model, "config", None), "mask_token_id", None),
        getattr(tokenizer, "mask_token_id", None),
    ]
    for value in sources:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidDecodingArgument(f"`mask_token_id` must be a non-negative integer, got {value!r}.")
            return value
    raise InvalidDecodingArgument(
        f"`mask_token_id` is None: {type(model).__name__} has no mask token (model.config.mask_token_id is unset "
        "and no tokenizer with a mask token was given), so masked diffusion cannot run. Fix: pass "
        "`mask_token_id=tokenizer.mask_token_id` (or `tokenizer=tokenizer`) to `generate`, or set "
        "`model.config.mask_token_id`. A causal LM without a mask token needs another decoding method."
    )


class MaskedDiffusionAdapter:
    r"""Calls a bidirectional denoiser and returns logits aligned with the positions they predict.

    Args:
        model (`torch.nn.Module`): the denoiser. Its forward takes `input_ids` and optionally `attention_mask` and
            `position_ids`, and returns an object with `.logits` (or a tuple whose first item is the logits) of shape
            `(B, L, V)`.
        mask_token_id (`int`): the id of the mask token.
        logits_shift (`bool`, *optional*): output `i` predicts token `i + 1` (Dream). Default: `True` when the model
            has Dream's `diffusion_generate` interface or `model.config.logits_shift` is true, else `False`.
        attention_mask_4d (`bool`, *optional*): pass padding masks as a boolean `(B, 1, L, L)` tensor (Dream's
            remote code expects this). Default: `True` exactly when `logits_shift` was inferred from Dream's
            interface.
    """

    def __init__(
        self,
        model: Any,
        mask_token_id: int,
        logits_shift: bool | None = None,
        attention_mask_4d: bool | None = None,
    ):
        self.model = model
        self.mask_token_id = int(mask_token_id)
        dream_like = hasattr(model, "diffusion_generate")
        if logits_shift is None:
            logits_shift = dream_like or bool(getattr(getattr(model, "config", None), "logits_shift", False))
        self.logits_shift = bool(logits_shift)
        self.attention_mask_4d = dream_like if attention_mask_4d is None else bool(attention_mask_4d)
        forward = getattr(model, "forward", model)
        try:
            parameters = inspect.signature(forward).parameters
        except (TypeError, ValueError):  # builtins or C extensions: pass only input_ids
            parameters = {}
        self._accepts_attention_mask = "attention_mask" in parameters
        self._accepts_position_ids = "position_ids" in parameters

    def __call__(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of shape `(B, L, V)`; row `b`, position `i` is the distribution of token `i` given the rest.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): tokens, `mask_token_id` where unknown.
            attention_mask (`torch.LongTensor` of shape `(B, L)`, *optional*): 0 on (left) padding.
        """
        kwargs: dict[str, Any] = {}
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if padded and self._accepts_attention_mask:
            if self.attention_mask_4d:
                keep = attention_mask.bool()
                kwargs["attention_mask"] = keep[:, None, None, :] & keep[:, None, :, None]  # (B, 1, L, L)
            else:
                kwargs["attention_mask"] = attention_mask
        if padded and self._accepts_position_ids:
            # left padding must not shift the absolute positions of the real tokens
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L)
        outputs = self.model(input_ids=input_ids, **kwargs)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]  # (B, L, V)
        if self.logits_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
