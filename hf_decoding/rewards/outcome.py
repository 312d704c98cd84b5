"""`OutcomeRewardModel`: a sequence-classification reward model scoring a whole (partial) answer."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import invalid_argument
from .base import RewardModel

__all__ = ["OutcomeRewardModel"]


class OutcomeRewardModel(RewardModel):
    r"""Scores `question + answer` with an `AutoModelForSequenceClassification`-style model.

    With one output logit the score is `sigmoid(logit)`; with several, the softmax probability of
    `positive_index`. An outcome model has no notion of steps: `score` returns one score per text (a one-element
    list), so every `score_mode` uses that same value.

    Args:
        model (`PreTrainedModel`): returns `logits` of shape `(batch, classes)`.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (left or right padding both work).
        positive_index (`int`, *optional*, defaults to 1): class of "good answer" when there are several.
        use_chat_template (`bool`, *optional*, defaults to `True`): format as a user/assistant conversation when
            the tokenizer has a chat template, else `question + "\n" + answer`.
        batch_size (`int`, *optional*, defaults to 16): rows per forward pass.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        positive_index: int = 1,
        use_chat_template: bool = True,
        batch_size: int = 16,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise invalid_argument("batch_size", batch_size, "a positive integer")
        self.model = model
        self.tokenizer = tokenizer
        self.positive_index = positive_index
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def _format(self, prompt: str, text: str) -> str:
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + "\n" + text

    @torch.no_grad()
    def score_whole(self, prompts: list[str], partial_texts: list[str]) -> list[float]:
        device = next(self.model.parameters()).device
        texts = [self._format(p, t) for p, t in zip(prompts, partial_texts, strict=False)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True)
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits.float()  # (b, C)
            if logits.shape[-1] == 1:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = logits.softmax(-1)[:, self.positive_index]
            out += probs.cpu().tolist()
        return out

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        return [[s] for s in self.score_whole(prompts, partial_texts)]

    def __repr__(self) -> str:
        return f"OutcomeRewardModel({type(self.model).__name__})"
