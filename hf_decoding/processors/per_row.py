"""Warpers whose parameter may differ per batch row (what AutoDeco and particle methods apply).

Each accepts a Python number (then it behaves exactly like the transformers warper of the same name) or a tensor
of shape `(batch_size,)`. The value can be replaced between steps with `set_values(...)`, which is how a decoding
loop feeds per-token predictions (AutoDeco) or re-indexes state after resampling (particles).
"""

from __future__ import annotations

import torch

from .base import LogitsWarper, RowParameter, as_row_parameter, rows

__all__ = [
    "PerRowMinPLogitsWarper",
    "PerRowTemperatureLogitsWarper",
    "PerRowTopKLogitsWarper",
    "PerRowTopPLogitsWarper",
]


class PerRowTemperatureLogitsWarper(LogitsWarper):
    r"""Divides each row's scores by its own temperature.

    Args:
        temperature (`float` or `torch.Tensor` of shape `(batch_size,)`):
            Strictly positive temperature(s). A scalar behaves exactly like `TemperatureLogitsWarper`.
    """

    def __init__(self, temperature: RowParameter):
        self.set_values(temperature)

    def set_values(self, temperature: RowParameter) -> None:
        """Replaces the temperature(s) used from the next call on."""
        self.temperature = as_row_parameter(
            temperature,
            "temperature",
            low=0.0,
            high=float("inf"),
            low_inclusive=False,
            high_inclusive=False,
            fix="Use a strictly positive temperature; for greedy decoding pass do_sample=False.",
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # (B, V) / (B, 1): cast to the scores' dtype first, as a Python scalar would be.
        return scores / rows(self.temperature, scores, "temperature").to(scores.dtype)


class PerRowTopPLogitsWarper(LogitsWarper):
    r"""Nucleus (top-p) filtering with one `top_p` per row; same rule as transformers' `TopPLogitsWarper`.

    Keeps the smallest set of most likely tokens whose probability mass is at least `top_p` (the crossing token
    is kept, so the kept mass is in `[top_p, 1]`).

    Args:
        top_p (`float` or `torch.Tensor` of shape `(batch_size,)`): values in `(0, 1]`.
        filter_value (`float`, *optional*, defaults to `-inf`): score given to removed tokens.
        min_tokens_to_keep (`int`, *optional*, defaults to 1): tokens that are never removed.
    """

    def __init__(self, top_p: RowParameter, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            from ..errors import invalid_argument

            raise invalid_argument("min_tokens_to_keep", min_tokens_to_keep, "a positive integer")
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.set_values(top_p)

    def set_values(self, top_p: RowParameter) -> None:
        """Replaces the top-p value(s) used from the next call on."""
        self.top_p = as_row_parameter(
            top_p,
            "top_p",
            low=0.0,
            high=1.0,
            low_inclusive=False,
            high_inclusive=True,
            fix="Use a value in (0, 1]; 1.0 disables nucleus filtering.",
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        threshold = (1 - rows(self.top_p, scores, "top_p")).to(scores.dtype)  # (B, 1)
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_to_remove = cumulative_probs <= threshold
        sorted_to_remove[..., -self.min_tokens_to_keep :] = False
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


class PerRowTopKLogitsWarper(LogitsWarper):
    r"""Top-k filtering with one `k` per row; same rule as transformers' `TopKLogitsWarper` (ties are kept).

    Args:
        top_k (`int` or `torch.Tensor` of shape `(batch_size,)`): non-negative; 0 keeps every token of that row.
        filter_value (`float`, *optional*, defaults to `-inf`): score given to removed tokens.
        min_tokens_to_keep (`int`, *optional*, defaults to 1): lower bound on `k`.
    """

    def __init__(self, top_k: RowParameter, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.set_values(top_k)

    def set_values(self, top_k: RowParameter) -> None:
        """Replaces the `k` value(s) used from the next call on."""
        k = as_row_parameter(
            top_k,
            "top_k",
            low=0.0,
            high=float("inf"),
            low_inclusive=True,
            high_inclusive=False,
            fix="Use a non-negative integer; 0 disables top-k filtering.",
        )
        if bool((k != k.round()).any()):
            from ..errors import invalid_argument

            raise invalid_argument("top_k", top_k, "integer-valued", "Round k to an integer.")
        self.top_k = k.to(torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        k = rows(self.top_k, scores, "top_k")  # (B, 1)
        k = torch.where(k == 0, vocab, k).clamp(min=self.min_tokens_to_keep, max=vocab)
        k_max = int(k.max())
        top = torch.topk(scores, k_max, dim=-1).values  # (B, k_max), descending
        kth = top.gather(-1, k - 1)  # (B, 1): the k-th largest score of each row
        return scores.masked_fill(scores < kth, self.filter_value)


class PerRowMinPLogitsWarper(LogitsWarper):
    r"""Min-p filtering with one `min_p` per row; same rule as transformers' `MinPLogitsWarper`.

    Removes tokens whose probability is below `min_p` times the row's largest probability.

    Args:
        min_p (`float` or `torch.Tensor` of shape `(batch_size,)`): values in `[0, 1]`.
        filter_value (`float`, *optional*, defaults to `-inf`): score given to removed tokens.
        min_tokens_to_keep (`int`, *optional*, defaults to 1): tokens that are never removed.
    """

    def __init__(self, min_p: RowParameter, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.set_values(min_p)

    def set_values(self, min_p: RowParameter) -> None:
        """Replaces the min-p value(s) used from the next call on."""
        self.min_p = as_row_parameter(
            min_p,
            "min_p",
            low=0.0,
            high=1.0,
            low_inclusive=True,
            high_inclusive=True,
            fix="Use a value in [0, 1]; 0 disables min-p filtering.",
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores, dim=-1)
        top_probs = probs.amax(dim=-1, keepdim=True)
        scaled_min_p = rows(self.min_p, scores, "min_p").to(probs.dtype) * top_probs
        to_remove = probs < scaled_min_p
        k = min(self.min_tokens_to_keep, probs.shape[-1])
        keep = torch.topk(probs, k, dim=-1).indices
        to_remove = to_remove.scatter(-1, keep, False)
        return scores.masked_fill(to_remove, self.filter_value)
