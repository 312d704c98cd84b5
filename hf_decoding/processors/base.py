"""Shared pieces of the logits processors: the `LogitsWarper` alias and per-row parameter handling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from ..errors import invalid_argument

__all__ = ["LogitsWarper", "RowParameter", "as_row_parameter"]

RowParameter = float | int | Sequence[float] | torch.Tensor


class LogitsWarper(LogitsProcessor):
    """Base class for processors that *warp* the next-token distribution (temperature, truncation).

    transformers 5 removed its `LogitsWarper` class: warpers are plain `LogitsProcessor`s. This alias keeps the 4.x
    naming readable and carries one piece of meaning: the decoding loop treats every subclass as part of the
    warping chain when it measures distortion (`d_t = LSE(logits) / tau - LSE(scores)`), so a custom warper that
    subclasses it is accounted for automatically.
    """

    is_warper = True


def as_row_parameter(
    value: RowParameter,
    name: str,
    *,
    low: float,
    high: float,
    low_inclusive: bool,
    high_inclusive: bool,
    fix: str,
) -> torch.Tensor:
    """Validates a scalar or per-row parameter and returns it as a float64 tensor (0-d or shape `(B,)`).

    Values are kept in float64 so that `1 - top_p` and similar thresholds round exactly as transformers' scalar
    warpers round them; exact parity with the built-in processors depends on it.
    """
    if isinstance(value, bool):
        raise invalid_argument(name, value, "a number or a tensor of shape (batch_size,)", fix)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(torch.float64)
        if tensor.dim() > 1:
            raise invalid_argument(name, tuple(value.shape), "a scalar or a 1-D tensor of shape (batch_size,)", fix)
    elif isinstance(value, (int, float)):
        tensor = torch.tensor(float(value), dtype=torch.float64)
    else:
        try:
            tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
        except (TypeError, ValueError):
            raise invalid_argument(name, value, "a number or a sequence of numbers", fix) from None
    if tensor.numel() == 0:
        raise invalid_argument(name, value, "non-empty", fix)
    flat = tensor.reshape(-1)
    bad_low = flat < low if low_inclusive else flat <= low
    bad_high = flat > high if high_inclusive else flat >= high
    bad = torch.isnan(flat) | bad_low | bad_high
    if bool(bad.any()):
        offending = flat[bad][0].item()
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        high_txt = "inf" if math.isinf(high) else f"{high:g}"
        raise invalid_argument(name, offending, f"in {lo}{low:g}, {high_txt}{hi}", fix)
    return tensor


def rows(parameter: torch.Tensor, scores: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcasts a 0-d or `(B,)` parameter against `scores` of shape `(B, V)`; returns shape `(B, 1)`."""
    if parameter.dim() == 0:
        return parameter.to(scores.device).expand(scores.shape[0]).unsqueeze(-1)
    if parameter.shape[0] != scores.shape[0]:
        raise invalid_argument(
            name,
            f"a tensor of {parameter.shape[0]} rows",
            f"one value per batch row ({scores.shape[0]} rows)",
            "Pass a tensor of shape (batch_size,) matching the scores, or a scalar.",
        )
    return parameter.to(scores.device).unsqueeze(-1)
