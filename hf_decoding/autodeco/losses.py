r"""AutoDeco training losses: tempered cross-entropy and a soft top-p whose hard limit is real top-p.

For one completion position with base logits `l` (shape `(V,)`), target `y`, predicted temperature `T̂` and top-p
`P̂` (paper Sec. 2.1, official `templlm_auto.py`):

- **temperature loss**: `-w · log softmax(l / T̂)[y]`;
- **top-p loss**: `-w · log p̃(y)` with `p = softmax(l / T̂)` sorted in descending order, `c` its cumulative sum,
  the soft mask `m = exp(-α · ReLU(c - P̂))` and `p̃ = p ⊙ m / Σ p ⊙ m`.

Two cumulative sums are available:

- `cumsum="exclusive"` (default): `c_i = Σ_{j<i} p_j`, the mass *before* token `i`. As `α → ∞`, `m_i → 1` when
  `c_i < P̂` and `→ 0` otherwise, which is exactly the rule of hard top-p (keep the smallest prefix whose mass
  reaches `P̂`, the crossing token included), the rule used at inference.
- `cumsum="inclusive"`: `c_i = Σ_{j≤i} p_j`, the paper's formula. Its limit drops the crossing token that hard top-p
  keeps, and at the paper's `α = 30` the tail is leaky (an overage of 0.1 still keeps `e^{-3} ≈ 5%`).

Both are computed in log space (`log p̃(y) = log p(y) + log m(y) - logsumexp(log p + log m)`), so the official
`1e-9` floors are not needed.

**Memory.** The full-vocabulary version sorts and scatters `(N, V)` tensors. Here the sort is restricted to the
`top_k_candidates` most likely tokens (the order of `l / T̂` does not depend on `T̂ > 0`): candidate terms are exact
and the tail is aggregated into one term whose mask uses the smallest cumulative sum any tail token can have
(an upper bound on every tail mask, exact in the `α → ∞` limit). Positions whose candidate mass is below `P̂`
(the nucleus reaches into the tail) fall back to the full vocabulary, so the result never silently over-includes.
[`chunked_autodeco_loss`] processes positions in chunks under activation checkpointing, so at most one chunk of
`(chunk_size, V)` logits is alive at a time, in the forward and in the backward pass.

**Weights and masks** (paper defaults): `w` is the *detached* probability of `y` under the **base, unscaled**
distribution (dynamic fine-tuning, `dft_weight="base"`; the Megatron code uses the tempered one, `"scaled"`), and
60% of the "easy" positions (base argmax equals `y`) are dropped from the temperature loss with a seeded draw
(`mask_easy_tokens_in_top_p_loss=True` also drops them from the top-p loss, as the Megatron code does). As in the
official HF code, `T̂` enters the top-p head detached but is *not* detached inside the top-p loss, so the top-p
loss also trains the temperature head (`detach_temperature_in_top_p_loss=True` changes that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import invalid_argument

if TYPE_CHECKING:
    from .heads import AutoDecoHeads

__all__ = [
    "AutoDecoLoss",
    "AutoDecoLossConfig",
    "candidate_top_k",
    "chunked_autodeco_loss",
    "dft_weights",
    "easy_token_drop_mask",
    "hard_top_p_log_probs",
    "position_loss_terms",
    "soft_top_p_log_probs",
    "temperature_log_probs",
]

LogitsFn = Callable[[torch.Tensor, slice], torch.Tensor]


@dataclass
class AutoDecoLossConfig:
    """How the AutoDeco losses are computed (defaults: the paper's, except the exclusive cumulative sum).

    Args:
        steepness (`float`, *optional*, defaults to 30.0): `α` of the soft top-p mask.
        cumsum (`str`, *optional*, defaults to `"exclusive"`): `"exclusive"` (hard top-p in the `α → ∞` limit) or
            `"inclusive"` (the paper's leaky formula).
        top_k_candidates (`int`, *optional*, defaults to 256): candidates sorted for the soft top-p; `None` sorts the
            full vocabulary.
        dft_weight (`str`, *optional*, defaults to `"base"`): `"base"` (detached base probability of the target),
            `"scaled"` (detached tempered probability) or `"none"`.
        easy_token_mask_prob (`float`, *optional*, defaults to 0.6): probability of dropping a position whose base
            argmax equals the target, in the temperature loss.
        mask_easy_tokens_in_top_p_loss (`bool`, *optional*, defaults to `False`): also drop them in the top-p loss.
        detach_temperature_in_top_p_loss (`bool`, *optional*, defaults to `False`): stop the top-p loss from
            training the temperature head.
        temperature_loss_weight (`float`, *optional*, defaults to 1.0): weight of the temperature loss.
        top_p_loss_weight (`float`, *optional*, defaults to 1.0): weight of the top-p loss.
        chunk_size (`int`, *optional*, defaults to 1024): positions per chunk.
    """

    steepness: float = field(default=30.0, metadata={"help": "alpha of the soft top-p mask"})
    cumsum: str = field(default="exclusive", metadata={"help": "'exclusive' or 'inclusive' (paper)"})
    top_k_candidates: int | None = field(default=256, metadata={"help": "candidates of the soft top-p; None: all"})
    dft_weight: str = field(default="base", metadata={"help": "'base', 'scaled' or 'none'"})
    easy_token_mask_prob: float = field(default=0.6, metadata={"help": "drop probability of easy positions"})
    mask_easy_tokens_in_top_p_loss: bool = False
    detach_temperature_in_top_p_loss: bool = False
    temperature_loss_weight: float = 1.0
    top_p_loss_weight: float = 1.0
    chunk_size: int = field(default=1024, metadata={"help": "positions per chunk"})

    def __post_init__(self) -> None:
        if self.cumsum not in ("exclusive", "inclusive"):
            raise invalid_argument("cumsum", self.cumsum, "'exclusive' or 'inclusive'")
        if self.dft_weight not in ("base", "scaled", "none"):
            raise invalid_argument("dft_weight", self.dft_weight, "'base', 'scaled' or 'none'")
        if not self.steepness > 0:
            raise invalid_argument("steepness", self.steepness, "a positive number")
        if self.top_k_candidates is not None and self.top_k_candidates < 1:
            raise invalid_argument("top_k_candidates", self.top_k_candidates, "a positive integer or None")
        if not 0 <= self.easy_token_mask_prob <= 1:
            raise invalid_argument("easy_token_mask_prob", self.easy_token_mask_prob, "in [0, 1]")
        if self.chunk_size < 1:
            raise invalid_argument("chunk_size", self.chunk_size, "a positive integer")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class AutoDecoLoss:
    """Result of [`chunked_autodeco_loss`].

    Args:
        loss (`torch.Tensor`): weighted sum of the two losses (scalar, differentiable).
        temperature_loss (`torch.Tensor`): mean weighted temperature NLL over the kept positions.
        top_p_loss (`torch.Tensor`): mean weighted soft-top-p NLL over the kept positions.
        num_positions (`int`): positions seen.
    """

    loss: torch.Tensor
    temperature_loss: torch.Tensor
    top_p_loss: torch.Tensor
    num_positions: int


# ----------------------------------------------------------------------------------------------------------------
# Per-position log-probabilities
# ----------------------------------------------------------------------------------------------------------------


def temperature_log_probs(logits: torch.Tensor, temperature: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`log softmax(logits / T)[y]` for logits `(N, V)`, temperatures `(N,)` and labels `(N,)`; returns `(N,)`."""
    scaled = logits.float() / temperature.float().unsqueeze(-1)  # (N, V)
    return scaled.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def candidate_top_k(logits: torch.Tensor, k: int | None) -> torch.LongTensor:
    """Indices `(N, K)` of the `k` largest logits per row in descending order (`k=None`: the whole vocabulary).

    The order is the same for `logits / T` at any `T > 0`, so candidates are computed once, without gradient.
    """
    vocab = logits.shape[-1]
    k = vocab if k is None else min(int(k), vocab)
    with torch.no_grad():
        if k == vocab:
            return torch.argsort(logits, dim=-1, descending=True)
        return torch.topk(logits, k, dim=-1).indices


def soft_top_p_log_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    labels: torch.Tensor,
    *,
    steepness: float = 30.0,
    cumsum: str = "exclusive",
    top_k: int | None = 256,
) -> torch.Tensor:
    r"""`log p̃(y)` of the soft top-p distribution (see the module docstring).

    Args:
        logits (`torch.Tensor` of shape `(N, V)`): base logits.
        temperature (`torch.Tensor` of shape `(N,)`): `T̂` (gradients flow into it).
        top_p (`torch.Tensor` of shape `(N,)`): `P̂` (gradients flow into it).
        labels (`torch.LongTensor` of shape `(N,)`): targets.
        steepness (`float`): `α`.
        cumsum (`str`): `"exclusive"` or `"inclusive"`.
        top_k (`int`, *optional*): candidates; `None` for the full vocabulary.

    Returns:
        `torch.Tensor` of shape `(N,)`.
    """
    if cumsum not in ("exclusive", "inclusive"):
        raise invalid_argument("cumsum", cumsum, "'exclusive' or 'inclusive'")
    vocab = logits.shape[-1]
    scaled = logits.float() / temperature.float().unsqueeze(-1)  # (N, V)
    log_z = torch.logsumexp(scaled, dim=-1)  # (N,)
    index = candidate_top_k(logits, top_k)  # (N, K)
    k = index.shape[-1]
    log_p_top = scaled.gather(-1, index) - log_z.unsqueeze(-1)  # (N, K), descending
    p_top = log_p_top.exp()
    cum = p_top.cumsum(dim=-1)  # (N, K) inclusive
    c = cum - p_top if cumsum == "exclusive" else cum
    p_hat = top_p.float().unsqueeze(-1)  # (N, 1)
    log_m_top = -steepness * F.relu(c - p_hat)  # (N, K)
    in_top = index == labels.unsqueeze(-1)  # (N, K)
    label_in_top = in_top.any(dim=-1)  # (N,)
    log_m_label = (log_m_top * in_top).sum(dim=-1)  # (N,), 0 where the label is in the tail
    terms = log_p_top + log_m_top  # (N, K)
    if k < vocab:
        s_k = cum[:, -1]  # (N,) candidate mass
        # Every tail token has a cumulative sum >= s_k: its mask is at most that of c = s_k.
        log_m_tail = -steepness * F.relu(s_k - top_p.float())  # (N,)
        log_tail = torch.log((1 - s_k).clamp(min=1e-30))  # (N,)
        terms = torch.cat([terms, (log_tail + log_m_tail).unsqueeze(-1)], dim=-1)  # (N, K + 1)
        log_m_label = torch.where(label_in_top, log_m_label, log_m_tail)
    log_label = scaled.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - log_z  # (N,)
    out = log_label + log_m_label - torch.logsumexp(terms, dim=-1)  # (N,)
    if k < vocab:
        # The nucleus reaches into the tail: the aggregated tail would over-include, use the full vocabulary.
        reaches_tail = (s_k.detach() < top_p.detach().float()).nonzero().flatten()
        if reaches_tail.numel():
            exact = soft_top_p_log_probs(
                logits[reaches_tail],
                temperature[reaches_tail],
                top_p[reaches_tail],
                labels[reaches_tail],
                steepness=steepness,
                cumsum=cumsum,
                top_k=None,
            )
            out = out.index_put((reaches_tail,), exact)
    return out


def hard_top_p_log_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """`log q(y)` under hard top-p at temperature `T` (the inference rule; `-inf` for removed targets), `(N,)`.

    Reference for tests: [`soft_top_p_log_probs`] with `cumsum="exclusive"` tends to it as `steepness → ∞`.
    """
    scaled = logits.float() / temperature.float().unsqueeze(-1)  # (N, V)
    probs = scaled.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    exclusive = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = exclusive < top_p.float().unsqueeze(-1)
    keep_sorted[:, 0] = True
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    kept = scaled.masked_fill(~keep, float("-inf"))
    return kept.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(kept, dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Weights and masks
# ----------------------------------------------------------------------------------------------------------------


def dft_weights(
    logits: torch.Tensor, labels: torch.Tensor, mode: str = "base", temperature: torch.Tensor | None = None
) -> torch.Tensor:
    """Detached dynamic-fine-tuning weights `(N,)`: the probability of the target under the base (`"base"`) or
    tempered (`"scaled"`) distribution; ones for `"none"`."""
    with torch.no_grad():
        if mode == "none":
            return torch.ones(labels.shape, dtype=torch.float32, device=logits.device)
        if mode == "base":
            return temperature_log_probs(logits, torch.ones_like(labels, dtype=torch.float32), labels).exp()
        if mode == "scaled":
            if temperature is None:
                raise invalid_argument("temperature", None, "given when dft_weight='scaled'")
            return temperature_log_probs(logits, temperature.detach(), labels).exp()
    raise invalid_argument("dft_weight", mode, "'base', 'scaled' or 'none'")


def easy_token_drop_mask(
    logits: torch.Tensor, labels: torch.Tensor, uniform: torch.Tensor, prob: float
) -> torch.Tensor:
    """Boolean `(N,)`: positions dropped as "easy" (base argmax equals the target and `uniform < prob`).

    `uniform` (`(N,)`, values in `[0, 1)`) comes from a seeded `torch.Generator`, so the mask is reproducible
    (the official code draws from the global RNG).
    """
    with torch.no_grad():
        easy = logits.argmax(dim=-1) == labels
        return easy & (uniform.to(logits.device) < prob)


# ----------------------------------------------------------------------------------------------------------------
# Loss assembly
# ----------------------------------------------------------------------------------------------------------------


def position_loss_terms(
    heads: AutoDecoHeads,
    hidden: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    uniform: torch.Tensor,
    config: AutoDecoLossConfig,
    train_temperature: bool = True,
    train_top_p: bool = True,
) -> torch.Tensor:
    """Numerators and denominators of both losses for one chunk of positions.

    Args:
        heads ([`AutoDecoHeads`]): the heads.
        hidden (`torch.Tensor` of shape `(N, H)`): post-final-norm hidden states.
        logits (`torch.Tensor` of shape `(N, V)`): base logits at the same positions.
        labels (`torch.LongTensor` of shape `(N,)`): the next tokens.
        uniform (`torch.Tensor` of shape `(N,)`): seeded uniforms for the easy-token mask.
        config ([`AutoDecoLossConfig`]): loss options.

    Returns:
        `torch.Tensor` of shape `(4,)`: `[temperature numerator, temperature count, top-p numerator, top-p count]`.
    """
    logits = logits.float()
    predictions = heads(hidden, logits, detach_temperature=True)
    temperature, top_p = predictions.temperature, predictions.top_p  # (N,), (N,)
    drop = easy_token_drop_mask(logits, labels, uniform, config.easy_token_mask_prob)  # (N,)
    weights = dft_weights(logits, labels, config.dft_weight, temperature)  # (N,)
    zero = logits.new_zeros(())
    t_num, t_den, p_num, p_den = zero, zero, zero, zero
    if train_temperature and heads.config.enable_temperature_head:
        keep = (~drop).float()
        t_num = -(weights * temperature_log_probs(logits, temperature, labels) * keep).sum()
        t_den = keep.sum()
    if train_top_p and heads.config.enable_top_p_head:
        keep = (~drop).float() if config.mask_easy_tokens_in_top_p_loss else torch.ones_like(weights)
        t_in = temperature.detach() if config.detach_temperature_in_top_p_loss else temperature
        soft = {"steepness": config.steepness, "cumsum": config.cumsum, "top_k": config.top_k_candidates}
        log_q = soft_top_p_log_probs(logits, t_in, top_p, labels, **soft)
        p_num = -(weights * log_q * keep).sum()
        p_den = keep.sum()
    return torch.stack([t_num, t_den.detach(), p_num, p_den.detach()])


def chunked_autodeco_loss(
    heads: AutoDecoHeads,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    logits_fn: LogitsFn,
    config: AutoDecoLossConfig,
    uniform: torch.Tensor,
    train_temperature: bool = True,
    train_top_p: bool = True,
) -> AutoDecoLoss:
    r"""Both AutoDeco losses over `N` positions, `config.chunk_size` positions at a time.

    Args:
        heads ([`AutoDecoHeads`]): the heads.
        hidden (`torch.Tensor` of shape `(N, H)`): post-final-norm hidden states of the supervised positions (they
            require grad when the base is trained jointly, e.g. with LoRA).
        labels (`torch.LongTensor` of shape `(N,)`): next tokens.
        logits_fn (`Callable[[Tensor, slice], Tensor]`): `logits_fn(hidden_chunk, positions)` returns the base logits
            `(n, V)` of a chunk (the LM head applied to `hidden_chunk`, or rows of a cache).
        config ([`AutoDecoLossConfig`]): loss options.
        uniform (`torch.Tensor` of shape `(N,)`): seeded uniforms for the easy-token mask.

    Returns:
        [`AutoDecoLoss`]. With more than one chunk, every chunk runs under activation checkpointing: its `(n, V)`
        intermediates are recomputed in the backward pass instead of being kept.
    """
    n = hidden.shape[0]
    chunk = config.chunk_size
    use_checkpoint = torch.is_grad_enabled() and n > chunk
    totals = hidden.new_zeros(4, dtype=torch.float32)
    for start in range(0, n, chunk):
        positions = slice(start, min(start + chunk, n))

        def terms(h: torch.Tensor, positions: slice = positions) -> torch.Tensor:
            logits = logits_fn(h, positions)
            return position_loss_terms(
                heads, h, logits, labels[positions], uniform[positions], config, train_temperature, train_top_p
            )

        if use_checkpoint:
            totals = totals + checkpoint(terms, hidden[positions], use_reentrant=False)
        else:
            totals = totals + terms(hidden[positions])
    temperature_loss = totals[0] / totals[1].clamp(min=1.0)
    top_p_loss = totals[2] / totals[3].clamp(min=1.0)
    loss = config.temperature_loss_weight * temperature_loss + config.top_p_loss_weight * top_p_loss
    return AutoDecoLoss(loss=loss, temperature_loss=temperature_loss, top_p_loss=top_p_loss, num_positions=n)
