"""Scale chosen tokens' probabilities by a ratio: the exact counterpart of steering through the output embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from ..errors import invalid_argument

__all__ = ["TOKEN_PROBABILITY_MODES", "TokenProbabilityLogitsProcessor"]

TOKEN_PROBABILITY_MODES = ("probability", "logit")


class TokenProbabilityLogitsProcessor(LogitsProcessor):
    r"""Multiplies the probability of chosen tokens by a ratio `r` at every step.

    This is the exact, context-free counterpart of editing the output embeddings
    ([`~hf_decoding.analysis.embeddings.steer_token_probability`]), whose effect depends on the hidden state. What
    "ratio" means is set by `mode`; with `p` the distribution of the incoming scores and `S` the chosen tokens:

    - `mode="probability"` (default): the ratio holds **after** renormalisation. `p'(w) = r_w·p(w)` exactly for
      every `w ∈ S`, and the other tokens share the remaining mass in proportion to `p`:
      `p'(v) = p(v)·(1 − Σ_{w∈S} r_w p(w)) / (1 − Σ_{w∈S} p(w))`. Where the target is infeasible,
      `Σ_{w∈S} r_w p(w) ≥ 1` (or the other tokens have no mass left to give or take), the chosen tokens get all the
      mass, in proportion to `r_w·p(w)`, and the achieved ratio is below `r`. The output is the log of `p'`
      (normalised log-probabilities: later warpers, such as temperature, act on it exactly as on logits).
    - `mode="logit"`: the ratio holds **before** renormalisation: `log r_w` is added to the score of `w`, so
      `exp(z'_w)/exp(z_w) = r_w` and, after renormalisation, `p'(w)/p(w) = r_w / (1 + Σ_{v∈S} (r_v − 1) p(v))`.
      This is a plain logit bias, the shift an embedding edit would need to make at every position.

    Args:
        token_ids (`int` or `Sequence[int]`):
            Distinct, non-negative ids of the tokens to scale; each must be below the vocabulary size of the scores.
        ratio (`float` or `Sequence[float]`):
            Strictly positive, finite ratio(s): one for every token, or one per entry of `token_ids`.
        mode (`str`, *optional*, defaults to `"probability"`):
            `"probability"` or `"logit"`, see above.

    Shapes:
        `scores` of shape `(batch_size, vocab_size)` in, same shape and dtype out (computed in float64 in
        `"probability"` mode); the input is never modified.

    Example:

    ```python
    >>> from hf_decoding.processors.token_probability import TokenProbabilityLogitsProcessor
    >>> cat = tokenizer.convert_tokens_to_ids("Ġcat")
    >>> out = model.generate(**inputs, logits_processor=[TokenProbabilityLogitsProcessor(cat, 5.0)])
    ```
    """

    def __init__(
        self,
        token_ids: int | Sequence[int] | torch.Tensor,
        ratio: float | Sequence[float] | torch.Tensor,
        mode: str = "probability",
    ):
        fix_ids = "Pass distinct token ids, e.g. `tokenizer.convert_tokens_to_ids([...])`."
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.reshape(-1).tolist()
        elif isinstance(token_ids, int) and not isinstance(token_ids, bool):
            token_ids = [token_ids]
        try:
            ids = [int(t) for t in token_ids if not isinstance(t, bool)]
        except (TypeError, ValueError):
            raise invalid_argument("token_ids", token_ids, "a token id or a sequence of token ids", fix_ids) from None
        if not ids or len(ids) != len(token_ids) or min(ids) < 0 or len(set(ids)) != len(ids):
            raise invalid_argument("token_ids", token_ids, "a non-empty sequence of distinct non-negative ids", fix_ids)
        if mode not in TOKEN_PROBABILITY_MODES:
            raise invalid_argument("mode", mode, f"one of {TOKEN_PROBABILITY_MODES}")
        fix_ratio = "A ratio of 2 doubles the probability, 0.5 halves it."
        if isinstance(ratio, bool):
            raise invalid_argument("ratio", ratio, "a positive number", fix_ratio)
        try:
            ratios = torch.as_tensor(ratio, dtype=torch.float64).reshape(-1).clone()
        except (TypeError, ValueError):
            raise invalid_argument("ratio", ratio, "a positive number or one per token", fix_ratio) from None
        if ratios.numel() == 1:
            ratios = ratios.expand(len(ids)).clone()
        if ratios.numel() != len(ids):
            raise invalid_argument("ratio", ratio, f"one number or {len(ids)} numbers (one per token)", fix_ratio)
        if bool((~torch.isfinite(ratios) | (ratios <= 0)).any()):
            raise invalid_argument("ratio", ratio, "strictly positive and finite", fix_ratio)
        self.token_ids = torch.tensor(ids, dtype=torch.long)
        self.ratio = ratios
        self.log_ratio = ratios.log()
        self.mode = mode

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        if int(self.token_ids.max()) >= vocab:
            raise invalid_argument(
                "token_ids", self.token_ids.tolist(), f"ids below the vocabulary size of the scores ({vocab})"
            )
        ids = self.token_ids.to(scores.device)
        log_ratio = self.log_ratio.to(scores.device)  # (K,)
        if self.mode == "logit":
            return scores.index_add(-1, ids, log_ratio.to(scores.dtype).expand(*scores.shape[:-1], -1))

        logp = torch.log_softmax(scores.double(), dim=-1)  # (B, V)
        chosen = logp.index_select(-1, ids)  # (B, K)
        target = chosen + log_ratio  # log(r_w p(w))
        log_mass = torch.logsumexp(chosen, dim=-1, keepdim=True)  # log Σ_S p
        log_target_mass = torch.logsumexp(target, dim=-1, keepdim=True)  # log Σ_S r p
        mass, target_mass = log_mass.exp(), log_target_mass.exp()
        feasible = (target_mass < 1) & (mass < 1)  # (B, 1)
        # Others: scaled by (1 − Σ r p) / (1 − Σ p); infeasible rows: no mass left for them.
        rest_shift = torch.log1p(-target_mass.clamp(max=1.0)) - torch.log1p(-mass.clamp(max=1.0))
        others = torch.where(feasible, logp + torch.nan_to_num(rest_shift, nan=0.0), torch.full_like(logp, -torch.inf))
        chosen_new = torch.where(feasible, target, target - log_target_mass)  # renormalised among S if infeasible
        return others.index_copy(-1, ids, chosen_new).to(scores.dtype)
