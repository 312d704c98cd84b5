"""Warpers whose parameter may differ per batch row (what AutoDeco and particle methods apply).

Each accepts a Python number (then it behaves exactly like the transformers warper of the same name) or a tensor
of shape `(batch_size,)`. The value can be replaced between steps with `set_values(...)`, which is how a decoding
loop feeds per-token predictions (AutoDeco) or re-indexes state after resampling (particles).
"""

from __future__ import annotations

import torch

from ..errors import invalid_argument
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


_EXACT_DTYPES = (torch.float32, torch.float64)


class PerRowTopPLogitsWarper(LogitsWarper):
    r"""Nucleus (top-p) filtering with one `top_p` per row; same rule as transformers' `TopPLogitsWarper`.

    Keeps the smallest set of most likely tokens whose probability mass is at least `top_p` (the crossing token
    is kept, so the kept mass is in `[top_p, 1]`).

    Rows whose nucleus lies clearly inside their `prefilter_k` most likely tokens are decided from those alone
    (`torch.topk` and one logsumexp instead of a sort of the whole vocabulary); every other row — the nucleus is
    wider, `top_p = 1`, a tie at the boundary, a cumulative mass within `1e-3` of `top_p` where float rounding
    could decide differently, or half-precision scores — takes transformers' full sort. The kept set is therefore
    the full sort's.

    Args:
        top_p (`float` or `torch.Tensor` of shape `(batch_size,)`): values in `(0, 1]`.
        filter_value (`float`, *optional*, defaults to `-inf`): score given to removed tokens.
        min_tokens_to_keep (`int`, *optional*, defaults to 1): tokens that are never removed.
        prefilter_k (`int`, *optional*, defaults to 256): candidates per row for the fast path; `0` always sorts.
    """

    #: Rows whose cumulative mass comes this close to `top_p` at the boundary take the full sort.
    BOUNDARY_MARGIN = 1e-3

    def __init__(
        self,
        top_p: RowParameter,
        filter_value: float = -float("inf"),
        min_tokens_to_keep: int = 1,
        prefilter_k: int = 256,
    ):
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise invalid_argument("min_tokens_to_keep", min_tokens_to_keep, "a positive integer")
        if isinstance(prefilter_k, bool) or not isinstance(prefilter_k, int) or prefilter_k < 0:
            raise invalid_argument("prefilter_k", prefilter_k, "a non-negative integer", "256 is a good default.")
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.prefilter_k = prefilter_k
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
        top_p = rows(self.top_p, scores, "top_p")  # (B, 1), the parameter's own precision
        vocab = scores.shape[-1]
        k = min(max(self.prefilter_k, self.min_tokens_to_keep + 1), vocab)
        if self.prefilter_k == 0 or k >= vocab or scores.dim() != 2 or scores.dtype not in _EXACT_DTYPES:
            # Half precision: the full sort's own cumulative sum rounds too coarsely to be predicted from the top.
            return self._full_sort(scores, top_p)
        values, _ = torch.topk(scores, k, dim=-1)  # (B, k), descending
        probs = (values.float() - torch.logsumexp(scores.float(), dim=-1, keepdim=True)).exp()
        mass_before = probs.cumsum(dim=-1) - probs  # (B, k): mass strictly above each candidate
        p = top_p.double()
        kept = (mass_before < p).sum(dim=-1, keepdim=True).clamp(min=self.min_tokens_to_keep)  # (B, 1)
        inside = kept < k  # the first removed token is a candidate too
        last = kept.clamp(max=k - 1)
        last_kept = values.gather(-1, last - 1)  # (B, 1)
        first_removed = values.gather(-1, last)
        margin = self.BOUNDARY_MARGIN
        clear = (
            inside
            & (p < 1)
            & (last_kept > first_removed)  # no tie at the boundary
            & ((mass_before.gather(-1, last - 1) < p - margin) | (last - 1 < self.min_tokens_to_keep))
            & (mass_before.gather(-1, last) >= p + margin)
        ).squeeze(-1)  # (B,)
        out = scores.masked_fill(scores < last_kept, self.filter_value)
        if bool(clear.all()):
            return out
        unclear = (~clear).nonzero().squeeze(-1)
        return out.index_copy(0, unclear, self._full_sort(scores[unclear], top_p[unclear]))

    def _full_sort(self, scores: torch.FloatTensor, top_p: torch.Tensor) -> torch.FloatTensor:
        """transformers' `TopPLogitsWarper` rule, row by row: sort, cumulate, remove up to `1 - top_p`."""
        threshold = (1 - top_p).to(scores.dtype)
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
