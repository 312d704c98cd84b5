"""Distortion-aware nucleus sampling: nucleus filtering whose kept mass is exactly `top_p` at every step.

Standard top-p keeps the smallest prefix of the sorted distribution whose mass reaches `p`, so the kept mass
`Z_t` lies anywhere in `[p, 1]` and varies with the context; renormalizing by it reweights whole sequences by
`prod_t 1 / Z_t` (local normalization distortion). Here the prefix is the same but the boundary token (the one
that crosses `p`) is down-weighted so that the kept mass is exactly `p`:

    keep v_1 .. v_{j-1} with their full probability, keep v_j with probability p - sum_{i<j} p(v_i).

`Z_t = p` for every context, so every sequence is reweighted by the same constant `p ** -T` and the distortion
no longer depends on the path: the sampled distribution is the global (sequence-level) renormalization of the
truncated model restricted to the partially-kept boundary, with zero spread of total distortion across samples
of equal length.

Composition with temperature: the processor acts on the scores it receives. After a `TemperatureLogitsWarper`
(transformers' order), the kept mass of the *tempered* distribution is exactly `p`; the temperature's own
normalizer `sum_v p(v) ** (1/tau)` still varies with the context, so the total per-step distortion is
`-log p - log sum_v p(v) ** (1/tau)`. Use `temperature=1.0` for zero spread.
"""

from __future__ import annotations

import torch

from ..errors import invalid_argument
from .base import LogitsWarper, RowParameter, as_row_parameter, rows

__all__ = ["DistortionAwareNucleusLogitsProcessor"]


class DistortionAwareNucleusLogitsProcessor(LogitsWarper):
    r"""Nucleus filtering with kept probability mass exactly `top_p` (constant local normalizer).

    Args:
        top_p (`float` or `torch.Tensor` of shape `(batch_size,)`):
            Kept mass, in `(0, 1]`. `1.0` returns the scores unchanged.
        filter_value (`float`, *optional*, defaults to `-inf`):
            Score given to removed tokens.
        min_tokens_to_keep (`int`, *optional*, defaults to 1):
            Tokens kept in full even if the nucleus is smaller; when it binds, the kept mass exceeds `top_p`.
        prefilter_k (`int`, *optional*, defaults to 256):
            Number of top candidates sorted first. Rows whose nucleus does not fit in them fall back to an exact
            full sort, so the result never depends on this value (only the speed does).

    The returned scores keep the input value for fully kept tokens, `LSE(scores) + log(p - mass_before)` for the
    boundary token and `filter_value` elsewhere, so `logsumexp(out) = logsumexp(scores) + log(top_p)`.
    """

    def __init__(
        self,
        top_p: RowParameter,
        filter_value: float = -float("inf"),
        min_tokens_to_keep: int = 1,
        prefilter_k: int = 256,
    ):
        if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise invalid_argument("min_tokens_to_keep", min_tokens_to_keep, "a positive integer")
        if isinstance(prefilter_k, bool) or not isinstance(prefilter_k, int) or prefilter_k < 1:
            raise invalid_argument("prefilter_k", prefilter_k, "a positive integer", "256 is a good default.")
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.prefilter_k = prefilter_k
        self.set_values(top_p)

    def set_values(self, top_p: RowParameter) -> None:
        """Replaces the kept mass value(s) used from the next call on."""
        self.top_p = as_row_parameter(
            top_p,
            "top_p",
            low=0.0,
            high=1.0,
            low_inclusive=False,
            high_inclusive=True,
            fix="Use a value in (0, 1]; 1.0 disables the filter.",
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.top_p.dim() == 0 and float(self.top_p) >= 1.0:
            return scores.clone()
        batch, vocab = scores.shape
        p = rows(self.top_p, scores, "top_p")  # (B, 1) float64
        lse = torch.logsumexp(scores.to(torch.float64), dim=-1, keepdim=True)  # (B, 1)
        out = torch.full_like(scores, self.filter_value)

        # The prefilter must hold the `min_tokens_to_keep` forced tokens too, else a narrow prefilter would drop them.
        k = min(max(self.prefilter_k, self.min_tokens_to_keep), vocab)
        top_vals, top_idx = torch.topk(scores, k, dim=-1)  # (B, k), descending
        covered = torch.exp(top_vals.to(torch.float64) - lse).sum(-1) >= p[:, 0]  # (B,)
        if k < vocab and not bool(covered.all()):
            # Exact fallback: the nucleus of these rows is wider than the prefilter, sort their whole vocabulary.
            if not bool(covered.any()):
                sorted_vals, sorted_idx = torch.sort(scores, descending=True)  # (B, V)
                out = out.scatter(1, sorted_idx, self._kept_values(sorted_vals, lse, p))
            else:
                wide = (~covered).nonzero(as_tuple=True)[0]
                sorted_vals, sorted_idx = torch.sort(scores[wide], descending=True)  # (W, V)
                wide_vals = self._kept_values(sorted_vals, lse[wide], p[wide])
                out[wide] = out[wide].scatter(1, sorted_idx, wide_vals)
            rows_done = covered
        else:
            rows_done = torch.ones(batch, dtype=torch.bool, device=scores.device)
        narrow = rows_done.nonzero(as_tuple=True)[0]
        if narrow.numel() == batch:
            out = out.scatter(1, top_idx, self._kept_values(top_vals, lse, p))
        elif narrow.numel() > 0:
            kept = self._kept_values(top_vals[narrow], lse[narrow], p[narrow])
            out[narrow] = out[narrow].scatter(1, top_idx[narrow], kept)
        # A row with top_p = 1 is returned unchanged, as a scalar 1.0 is: its cumulative sum can round to 1 before
        # the last tokens, which would otherwise drop them or nudge the last score.
        full = p >= 1.0  # (B, 1)
        return torch.where(full, scores, out) if bool(full.any()) else out

    def _kept_values(self, sorted_vals: torch.Tensor, lse: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Scores for tokens sorted by descending score: kept, boundary-adjusted or filtered. Shapes (R, K)."""
        width = sorted_vals.shape[-1]
        cumulative = torch.cumsum(torch.exp(sorted_vals.to(torch.float64) - lse), dim=-1)  # (R, K), inclusive
        # The nucleus is the prefix up to and including the first token whose inclusive mass reaches p (the
        # boundary); its size is 1 + the number of prefixes still short of p.
        nucleus_size = ((cumulative < p).sum(-1, keepdim=True) + 1).clamp(max=width)  # (R, 1)
        boundary = nucleus_size - 1
        mass_before = torch.where(
            boundary > 0, cumulative.gather(-1, (boundary - 1).clamp(min=0)), torch.zeros_like(p)
        )  # (R, 1): exact exclusive mass of the boundary token
        # min_tokens_to_keep wins when the nucleus is smaller: those tokens are kept in full, nothing is adjusted.
        adjust = (cumulative.gather(-1, boundary) >= p) & (nucleus_size >= self.min_tokens_to_keep)  # (R, 1)
        position = torch.arange(width, device=sorted_vals.device)
        keep = position < torch.clamp(nucleus_size, min=self.min_tokens_to_keep)  # (R, K)
        values = sorted_vals.masked_fill(~keep, self.filter_value)
        boundary_value = (lse + torch.log((p - mass_before).clamp(min=torch.finfo(torch.float64).tiny))).to(
            sorted_vals.dtype
        )
        boundary_value = torch.where(adjust, boundary_value, values.gather(-1, boundary))
        return values.scatter(-1, boundary, boundary_value)
