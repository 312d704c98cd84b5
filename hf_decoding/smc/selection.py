"""Final selection among particles (`argmax | sample | weighted_vote`) and answer votes. Answers are parsed by
[`hf_decoding.rewards.answers.extract_answer`] (re-exported here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import InvalidDecodingArgument
from ..rewards.answers import extract_answer, normalize_answer
from .weights import normalize_log_weights

__all__ = [
    "SELECTION_METHODS",
    "AnswerExtractor",
    "extract_answer",
    "majority_vote",
    "normalize_answer",
    "select_particles",
    "weighted_vote",
]

SELECTION_METHODS = ("argmax", "sample", "weighted_vote")

AnswerExtractor = Callable[[str], "str | None"]


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The answer with the largest summed weight (`None` answers do not vote; ties: first seen)."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=False):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    if not totals:
        return None
    return max(totals, key=lambda a: (totals[a], -list(totals).index(a)))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (self-consistency); ties: first seen."""
    return weighted_vote(answers, [1.0] * len(answers))


def select_particles(
    method: str,
    log_weights: torch.Tensor,
    scores: torch.Tensor,
    answers: list[list[str | None]] | None = None,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Index of the returned particle of each group, shape `(B,)`.

    Args:
        method (`str`): `"argmax"` (highest final reward score, as the reference code), `"sample"` (one draw from
            the normalised weights), `"weighted_vote"` (the answer with the largest summed normalised weight, then
            its particle with the highest reward).
        log_weights (`torch.Tensor` of shape `(B, N)`): final log-weights.
        scores (`torch.Tensor` of shape `(B, N)`): each particle's final (aggregated) reward; `-inf` allowed.
        answers (`list[list[str | None]]`, *optional*): extracted answers, needed by `"weighted_vote"`.
        generator (`torch.Generator`, *optional*): for `"sample"`.
    """
    if method not in SELECTION_METHODS:
        raise InvalidDecodingArgument(f"`selection` must be one of {list(SELECTION_METHODS)}, got {method!r}.")
    scores = torch.nan_to_num(scores.to(torch.float64), nan=-float("inf"))
    if method == "argmax":
        return scores.argmax(-1)
    weights = normalize_log_weights(log_weights.to(torch.float64)).exp()  # (B, N)
    if method == "sample":
        gen_device = generator.device if generator is not None else weights.device
        return torch.multinomial(weights.to(gen_device), 1, generator=generator).squeeze(-1).to(weights.device)
    if answers is None:
        raise InvalidDecodingArgument("`selection='weighted_vote'` needs the particles' answers (an answer extractor).")
    out = []
    for b, group in enumerate(answers):
        winner = weighted_vote(group, weights[b].tolist())
        candidates = [n for n, a in enumerate(group) if a == winner] if winner is not None else list(range(len(group)))
        best = max(candidates, key=lambda n: (scores[b, n].item(), -n))
        out.append(best)
    return torch.tensor(out, dtype=torch.long, device=log_weights.device)
