"""`SelfCertainty`: a reward from the policy's own token log-probabilities; no extra model, no text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import invalid_argument
from .base import RewardModel, RewardSession

__all__ = ["SelfCertainty"]


class SelfCertainty(RewardModel):
    r"""Scores a step by how certain the policy was while writing it.

    Args:
        metric (`str`, *optional*, defaults to `"probability"`):
            - `"probability"`: the geometric-mean probability of the step's tokens, `exp(mean log p(token))`, in
              `(0, 1]` (works with every weight transform);
            - `"self_certainty"`: the mean over the step's tokens of `KL(U || p) = -log V - mean_v log p(v)`
              (Kang et al., 2025), a non-negative number: use `weight_transform="identity"`.

    The statistics come from the decoding loop (the model's own next-token distribution before any processor), so
    the decoder records them only when this reward is used. `score(prompts, texts)` cannot be computed from text
    alone and raises.
    """

    requires_text = False
    needs_token_stats = True

    def __init__(self, metric: str = "probability"):
        if metric not in ("probability", "self_certainty"):
            raise invalid_argument("metric", metric, "'probability' or 'self_certainty'")
        self.metric = metric

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(
            "SelfCertainty reads the policy's log-probabilities during decoding; use it as `reward_model=` of a "
            "particle decoder rather than calling score() on text."
        )

    def open_session(self, prompts: list[str], **options: Any) -> RewardSession:
        return _SelfCertaintySession(self, prompts, **options)

    def _value(self, stats: Sequence[dict[str, float]]) -> float:
        length = sum(s["length"] for s in stats)
        if length <= 0:
            return 1.0 if self.metric == "probability" else 0.0
        if self.metric == "probability":
            return math.exp(sum(s["logprob_sum"] for s in stats) / length)
        return sum(s["certainty_sum"] for s in stats) / length

    def __repr__(self) -> str:
        return f"SelfCertainty(metric={self.metric!r})"


class _SelfCertaintySession(RewardSession):
    def _score(self, slots: list[int], mode: str) -> list[list[float]]:
        reward: SelfCertainty = self.reward  # type: ignore[assignment]
        out = []
        for slot in slots:
            stats = self.stats[slot]
            if mode == "model":
                out.append([reward._value(stats)])
            else:
                out.append([reward._value([s]) for s in stats])
        return out
