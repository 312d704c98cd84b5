"""Per-step pieces of a masked-diffusion sampler: which token each masked position would take, and which positions
are committed.

The parts compose (LLaDA, Dream, Fast-dLLM and the EB-sampler are combinations of them):

- [`sample_candidates`]: one candidate token per masked position, greedy or Gumbel-max at a temperature. The
  Gumbel noise is drawn in float32 on the top-k candidates only (LLaDA draws float64 noise over the whole
  vocabulary for every position, about 1 GB per 1k positions at V = 126k).
- [`position_scores`]: how much each masked position "wants" to be committed under a rule.
- [`commit_counts`]: how many positions each row commits this step (the schedule's count, or more for the
  adaptive rules `threshold` and `entropy_bound`).
- [`select_positions`]: the top-scoring masked positions, `counts[b]` of them in row `b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import invalid_argument

__all__ = [
    "ADAPTIVE_RULES",
    "CONFIDENCE_SOURCES",
    "POSITION_RULES",
    "Candidates",
    "commit_counts",
    "position_scores",
    "sample_candidates",
    "select_positions",
]

#: Valid values of `unmasking=`. `random` is the setting of Li & Cai's theorems; the others choose by confidence.
POSITION_RULES = ("entropy", "entropy_bound", "low_confidence", "margin", "random", "threshold")
#: Rules that commit a data-dependent number of positions per step (at least the schedule's count, at least one).
ADAPTIVE_RULES = ("entropy_bound", "threshold")
#: What `low_confidence` and `threshold` rank by: the drawn candidate's probability or the distribution's maximum.
CONFIDENCE_SOURCES = ("candidate", "max_prob")

# Scores of EOS candidates are lowered by this much under `defer_eos` (every score lies in [-log V, 1]).
_EOS_DEFERRAL = 1.0e4


@dataclass
class Candidates:
    """Candidate tokens of the masked positions of one step.

    Args:
        tokens (`torch.LongTensor` of shape `(B, N)`): the sampled (or greedy) token of every position.
        confidence (`torch.FloatTensor` of shape `(B, N)`): the model's probability of that token (untempered, as
            LLaDA and Fast-dLLM use it).
        probs (`torch.FloatTensor` of shape `(B, N, V)`): the model's float32 distribution at every position.
    """

    tokens: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor

    def max_prob(self) -> torch.Tensor:
        """The distribution's own confidence `max_v p(v)`, shape `(B, N)`; independent of the draw."""
        return self.probs.max(-1).values

    def score(self, confidence: str = "candidate") -> torch.Tensor:
        """`confidence="candidate"`: probability of the drawn token; `"max_prob"`: [`max_prob`]."""
        return self.confidence if confidence == "candidate" else self.max_prob()

    def margin(self) -> torch.Tensor:
        """Top-1 minus top-2 probability, shape `(B, N)` (Dream's `topk_margin`)."""
        top2 = self.probs.topk(min(2, self.probs.shape[-1]), dim=-1).values  # (B, N, 2)
        if top2.shape[-1] == 1:
            return top2[..., 0]
        return top2[..., 0] - top2[..., 1]

    def entropy(self) -> torch.Tensor:
        """Shannon entropy in nats, shape `(B, N)`."""
        logp = torch.log(self.probs.clamp_min(1e-30))
        return -(self.probs * logp).sum(-1)


def sample_candidates(
    logits: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Candidates:
    r"""Draws one candidate token per position.

    With `do_sample=False` the candidate is the argmax. Otherwise it is a Gumbel-max draw from
    `softmax(logits / temperature)` restricted to the `top_k` most likely tokens and then to the nucleus `top_p`:
    `argmax_k(logit_k / temperature + g_k)` with `g_k = -log(-log u_k)`, in float32, on the kept candidates only.
    `top_k` of `0` or `None` keeps the whole vocabulary (exact sampling, V noise values per position).

    Args:
        logits (`torch.FloatTensor` of shape `(B, N, V)`): scores of the positions to fill.
        do_sample (`bool`): sample (`True`) or take the argmax.
        temperature (`float`, *optional*, defaults to 1.0): strictly positive when sampling.
        top_k (`int`, *optional*): candidates per position (`0`/`None`: all).
        top_p (`float`, *optional*): nucleus mass among the candidates (`None` or `1.0`: all).
        generator (`torch.Generator`, *optional*): source of the uniform noise.

    Returns:
        [`Candidates`].
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)  # (B, N, V)
    if not do_sample:
        tokens = logits.argmax(-1)  # (B, N)
    else:
        if temperature is None or temperature <= 0:
            raise invalid_argument(
                "temperature", temperature, "strictly positive when do_sample=True", "Pass do_sample=False for greedy."
            )
        vocab = logits.shape[-1]
        k = vocab if not top_k or top_k >= vocab else int(top_k)
        values, indices = logits.topk(k, dim=-1)  # (B, N, k), sorted descending
        values = values / temperature
        if top_p is not None and top_p < 1.0:
            cumulative = torch.softmax(values, dim=-1).cumsum(-1)  # (B, N, k)
            # drop a candidate once the mass before it already reaches top_p; the first always stays
            drop = (cumulative - torch.softmax(values, dim=-1)) >= top_p
            values = values.masked_fill(drop, float("-inf"))
        uniform = torch.rand(values.shape, generator=generator, device=values.device, dtype=torch.float32)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))  # (B, N, k)
        choice = (values + gumbel).argmax(-1, keepdim=True)  # (B, N, 1)
        tokens = indices.gather(-1, choice).squeeze(-1)  # (B, N)
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, N)
    return Candidates(tokens=tokens, confidence=confidence, probs=probs)


def position_scores(
    rule: str, candidates: Candidates, generator: torch.Generator | None = None, confidence: str = "candidate"
) -> torch.Tensor:
    r"""Priority of every position under `rule` (higher is committed first), shape `(B, N)`.

    - `random`: i.i.d. uniform noise (the theorem's random-position unmasking; LLaDA `remasking="random"`,
      Dream `alg="origin"`).
    - `low_confidence`, `threshold`: probability of the candidate token (LLaDA `low_confidence`, Dream
      `maskgit_plus`, Fast-dLLM), or with `confidence="max_prob"` the distribution's `max_v p(v)`. The two agree
      for greedy decoding; when sampling, the candidate's probability favours positions whose *draw* was likely,
      which biases the output even at one token per step (see `hf_decoding.analysis.convergence`).
    - `margin`: top-1 minus top-2 probability (Dream `topk_margin`).
    - `entropy`, `entropy_bound`: minus the entropy (Dream `entropy`, the EB-sampler).
    """
    if rule == "random":
        return torch.rand(candidates.confidence.shape, generator=generator, device=candidates.confidence.device)
    if rule in ("low_confidence", "threshold"):
        return candidates.score(confidence)
    if rule == "margin":
        return candidates.margin()
    if rule in ("entropy", "entropy_bound"):
        return -candidates.entropy()
    raise invalid_argument("unmasking", rule, f"one of {', '.join(map(repr, POSITION_RULES))}")


def commit_counts(
    rule: str,
    candidates: Candidates,
    masked: torch.Tensor,
    scheduled: int,
    *,
    threshold: float = 0.9,
    entropy_bound: float = 0.1,
    confidence: str = "candidate",
) -> torch.Tensor:
    r"""How many positions each row commits this step, shape `(B,)`.

    Fixed rules commit `scheduled` positions. Adaptive rules commit at least one and at least `scheduled`:
    `threshold` (Fast-dLLM) every masked position whose candidate probability is `>= threshold`; `entropy_bound`
    (EB-sampler, arXiv 2505.24857) the largest set of lowest-entropy positions `U` with
    `sum_{i in U} H_i - max_{i in U} H_i <= entropy_bound`. Counts never exceed the row's masked positions.

    Args:
        rule (`str`): one of [`POSITION_RULES`].
        candidates ([`Candidates`]): this step's candidates.
        masked (`torch.BoolTensor` of shape `(B, N)`): which positions are still masked.
        scheduled (`int`): the schedule's count for this step.
        threshold (`float`, *optional*, defaults to 0.9): `threshold`'s confidence level.
        entropy_bound (`float`, *optional*, defaults to 0.1): `entropy_bound`'s budget in nats.
        confidence (`str`, *optional*, defaults to `"candidate"`): what `threshold` compares, see [`position_scores`].
    """
    available = masked.sum(-1)  # (B,)
    counts = torch.full_like(available, scheduled)
    if rule == "threshold":
        confident = ((candidates.score(confidence) >= threshold) & masked).sum(-1)  # (B,)
        counts = torch.maximum(counts, confident.clamp_min(1))
    elif rule == "entropy_bound":
        entropy = candidates.entropy().masked_fill(~masked, float("inf"))  # (B, N)
        ordered = entropy.sort(dim=-1).values  # ascending; masked positions first
        finite = torch.isfinite(ordered)
        prefix = torch.where(finite, ordered, torch.zeros_like(ordered)).cumsum(-1)
        # the prefix's maximum is its last element because the entropies are sorted
        within = (prefix - torch.where(finite, ordered, torch.zeros_like(ordered)) <= entropy_bound) & finite
        counts = torch.maximum(counts, within.sum(-1).clamp_min(1))
    return torch.minimum(counts, available)


def select_positions(
    scores: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor, defer: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Marks the `counts[b]` highest-scoring masked positions of each row.

    Ties go to the leftmost position (a stable sort), so the choice of a row does not depend on its batch.

    Args:
        scores (`torch.FloatTensor` of shape `(B, N)`): priorities from [`position_scores`].
        masked (`torch.BoolTensor` of shape `(B, N)`): candidates for commitment.
        counts (`torch.LongTensor` of shape `(B,)`): positions to commit per row.
        defer (`torch.BoolTensor` of shape `(B, N)`, *optional*): positions to commit only after all others
            (LLaDA's `confidence_eos_eot_inf`, done explicitly).

    Returns:
        `torch.BoolTensor` of shape `(B, N)`.
    """
    scores = scores.float()
    if defer is not None:
        scores = scores - _EOS_DEFERRAL * defer.float()
    scores = scores.masked_fill(~masked, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, N)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < counts.unsqueeze(-1)) & masked
