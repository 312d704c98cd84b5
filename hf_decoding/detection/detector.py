r"""Zero-shot detection of machine-generated text from one causal LM's next-token distributions.

Every method turns a text into one number, **higher meaning more likely machine-generated**, from a single
forward pass of the scoring model over `prefix + text` (only the text's tokens are scored):

| method | score of a text `w_1..w_T` |
|---|---|
| `"loglik"` | `(1/T) sum_t log p(w_t)` |
| `"logrank"` | `-(1/T) sum_t log rank(w_t)` (rank 1 = most likely token) |
| `"fast_detectgpt"` | `(sum_t log p(w_t) - sum_t mu_t) / sqrt(sum_t sigma_t^2)`, `mu_t`, `sigma_t^2` the mean and variance of `log p(X)` for `X ~ p(. | c_t)` (analytic sampling discrepancy, the scoring model as its own sampling model) |
| `"temptest"` | `(1/T) sum_t [(1/tau - 1) log p(w_t) - log Z_tau(c_t)]`, `Z_tau = sum_v p(v)^(1/tau)`: the per-token log-likelihood ratio `log q_tau(w) / p(w)` of temperature-`tau` sampling against the model (TempTest, Kempton et al., AISTATS 2025, with the sign flipped so that machine is high) |
| `"distortion"` | the same log-likelihood ratio for temperature *and* truncation samplers: a token outside the kept set of top-k/top-p/min-p is (almost) impossible under the sampler, a kept token gains `(1/tau - 1) log p(w_t) - log Z_theta(c_t)`; the unknown setting `theta = (tau, k, p, min_p)` is maximised (`aggregate="max"`) or marginalised with a uniform prior (`aggregate="marginal"`) over a grid |

Texts are scored on their own (a start token as the only context) or after a prefix (`prefixes=`); the prefix is
never scored. A prefix string starts with the tokens the tokenizer puts before any text (the BOS token of Gemma or
Llama tokenizers, nothing for SmolLM2), so the model sees the context it was trained on. Texts are right-padded,
so scores do not depend on which other texts share a batch (up to float rounding).

```python
>>> from hf_decoding.detection import Detector
>>> detector = Detector(model, tokenizer, method="distortion")
>>> detector.score(["The cat sat on the mat.", "An essay written by someone."])
tensor([...], dtype=torch.float64)
>>> detector.score_methods(texts, methods=["loglik", "fast_detectgpt"])  # one forward pass for both
```
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import (
    EmptyTextError,
    TextTooShortError,
    TokenizerMismatchError,
    invalid_argument,
)
from .statistics import DEFAULT_GRID, SamplerSetting, fast_detectgpt_terms, log_ratio, rank, token_log_probs

__all__ = [
    "METHODS",
    "Detector",
    "EmptyTextError",
    "TextTooShortError",
    "TokenizerMismatchError",
    "leading_special_ids",
]

logger = logging.getLogger(__name__)

#: Detection methods, in the order tables list them.
METHODS: tuple[str, ...] = ("temptest", "distortion", "fast_detectgpt", "loglik", "logrank")
_AGGREGATES = ("max", "marginal")


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens `tokenizer` puts before any text by default (`[bos]` for Gemma or Llama, `[]` for GPT-2).

    Found by tokenizing a probe with and without special tokens; `[]` when the plain tokens are not a contiguous part
    of the tokenized probe.
    """
    probe = "a"
    full = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise invalid_argument("method", method, "one of " + ", ".join(repr(m) for m in METHODS))
    return method


class Detector:
    r"""Scores texts with zero-shot detectors built on one causal LM (higher score = more likely machine text).

    Args:
        model (`PreTrainedModel`): the scoring causal LM (ideally the generator itself: white-box detection).
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed by [`score`] and [`score_methods`]; token ids can
            be scored without one ([`score_ids`]).
        method (`str`, *optional*, defaults to `"distortion"`): one of [`METHODS`], used by [`score`].
        temperature (`float`, *optional*, defaults to 0.8): the scoring temperature of `"temptest"`.
        grid (sequence of [`SamplerSetting`], *optional*): settings of `"distortion"`; defaults to
            [`DEFAULT_GRID`] (5 temperatures x no truncation, top-k 20/40/50/100, top-p 0.8/0.9/0.95,
            min-p 0.05/0.1/0.2).
        aggregate (`str`, *optional*, defaults to `"max"`): `"max"` (maximum log-likelihood ratio over the grid)
            or `"marginal"` (log of the mean likelihood ratio, a uniform prior over the grid).
        epsilon (`float`, *optional*, defaults to 1e-3): weight of the plain model in the `"distortion"` sampler
            model `(1 - epsilon) q_theta + epsilon p`, so that one token outside a kept set (e.g. after
            re-tokenization) costs `log epsilon` instead of ruling the setting out. 0 makes membership strict.
        min_tokens (`int`, *optional*, defaults to 4): texts with fewer scored tokens raise [`TextTooShortError`].
        max_tokens (`int`, *optional*): only the first `max_tokens` tokens of each text are scored.
        batch_size (`int`, *optional*, defaults to 8): texts per forward pass.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar over batches.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        method: str = "distortion",
        *,
        temperature: float = 0.8,
        grid: Sequence[SamplerSetting] | None = None,
        aggregate: str = "max",
        epsilon: float = 1e-3,
        min_tokens: int = 4,
        max_tokens: int | None = None,
        batch_size: int = 8,
        progress: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.method = _check_method(method)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise invalid_argument("temperature", temperature, "a strictly positive number")
        self.temperature = float(temperature)
        self.grid = tuple(DEFAULT_GRID if grid is None else grid)
        if not self.grid or not all(isinstance(s, SamplerSetting) for s in self.grid):
            raise invalid_argument("grid", grid, "a non-empty sequence of SamplerSetting")
        if aggregate not in _AGGREGATES:
            raise invalid_argument("aggregate", aggregate, "'max' or 'marginal'")
        self.aggregate = aggregate
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 1:
            raise invalid_argument("epsilon", epsilon, "a number in [0, 1)")
        self.epsilon = float(epsilon)
        for name, value in (("min_tokens", min_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, value, "a positive integer")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < min_tokens
        ):
            raise invalid_argument("max_tokens", max_tokens, f"None or an integer >= min_tokens ({min_tokens})")
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if tokenizer is not None:
            tokenizer_vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
            if tokenizer_vocab > self.vocab_size:
                raise TokenizerMismatchError(
                    f"`tokenizer` has a vocabulary of {tokenizer_vocab} tokens but the model scores only "
                    f"{self.vocab_size}. Pass the tokenizer that was saved with this model."
                )
        self.last_settings: list[SamplerSetting] | None = None
        self._lead = leading_special_ids(tokenizer) if tokenizer is not None else []

    # ------------------------------------------------------------------------------------------------------------
    # Encoding
    # ------------------------------------------------------------------------------------------------------------

    def _start_ids(self) -> list[int]:
        """The context of a text scored without prefix: the BOS token (else EOS) of the tokenizer or model."""
        config = getattr(self.model, "config", None)
        for owner in (self.tokenizer, config):
            for name in ("bos_token_id", "eos_token_id"):
                value = getattr(owner, name, None) if owner is not None else None
                if isinstance(value, (list, tuple)):
                    value = value[0] if value else None
                if value is not None:
                    return [int(value)]
        return [0]

    def _encode(self, text: Any, index: int, name: str) -> list[int]:
        if not isinstance(text, str):
            raise invalid_argument(f"{name}[{index}]", type(text).__name__, "a string")
        if self.tokenizer is None:
            raise invalid_argument("tokenizer", None, "a tokenizer to score texts", "Use score_ids for token ids.")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(
        self, texts: Sequence[str], prefixes: Sequence[str] | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """Tokenizes texts without special tokens, and prefixes after the tokenizer's leading special tokens (BOS).

        Raises the typed errors for bad texts.

        Returns:
            `(token_ids, prefix_ids)`; `prefix_ids` is `None` when `prefixes` is.
        """
        if isinstance(texts, str):
            texts = [texts]
        if prefixes is not None:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            if len(prefixes) != len(texts):
                raise invalid_argument("prefixes", f"{len(prefixes)} prefixes", f"one prefix per text ({len(texts)})")
        ids = []
        for i, text in enumerate(texts):
            if isinstance(text, str) and not text.strip():
                raise EmptyTextError(f"`texts[{i}]` is empty ({text!r}). Remove empty texts before scoring.")
            ids.append(self._encode(text, i, "texts"))
        prefix_ids = (
            None if prefixes is None else [self._lead + self._encode(p, i, "prefixes") for i, p in enumerate(prefixes)]
        )
        return ids, prefix_ids

    # ------------------------------------------------------------------------------------------------------------
    # Scoring
    # ------------------------------------------------------------------------------------------------------------

    def score(
        self, texts: Sequence[str] | str, *, prefixes: Sequence[str] | None = None, method: str | None = None
    ) -> torch.Tensor:
        """Scores `texts` with `method` (default: the detector's).

        Args:
            texts (`str` or sequence of `str`): texts to score.
            prefixes (sequence of `str`, *optional*): one context per text, not scored.
            method (`str`, *optional*): overrides the detector's method.

        Returns:
            `torch.DoubleTensor` of shape `(len(texts),)`; higher = more likely machine-generated.
        """
        method = _check_method(method or self.method)
        return self.score_methods(texts, [method], prefixes=prefixes)[method]

    def score_methods(
        self,
        texts: Sequence[str] | str,
        methods: Sequence[str] | None = None,
        *,
        prefixes: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores `texts` with several methods from one forward pass per batch.

        Args:
            texts (`str` or sequence of `str`): texts to score.
            methods (sequence of `str`, *optional*): defaults to every method in [`METHODS`].
            prefixes (sequence of `str`, *optional*): one context per text, not scored.

        Returns:
            `dict[str, torch.DoubleTensor]`: method -> scores of shape `(len(texts),)`.
        """
        ids, prefix_ids = self.encode(texts, prefixes)
        return self.score_ids(ids, methods, prefix_ids=prefix_ids)

    def _check_ids(self, ids: Sequence[Sequence[int]], name: str) -> list[list[int]]:
        checked = []
        for i, row in enumerate(ids):
            row = [int(t) for t in (row.tolist() if isinstance(row, torch.Tensor) else row)]
            bad = [t for t in row if not 0 <= t < self.vocab_size]
            if bad:
                raise TokenizerMismatchError(
                    f"`{name}[{i}]` holds token id {bad[0]}, outside the model's vocabulary of {self.vocab_size}. "
                    "Tokenize with the model's own tokenizer."
                )
            checked.append(row)
        return checked

    def score_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        methods: Sequence[str] | None = None,
        *,
        prefix_ids: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores token-id sequences (no tokenizer needed; the sampled ids of a generation can be scored as is).

        Args:
            token_ids (sequence of sequences of `int`): the tokens to score.
            methods (sequence of `str`, *optional*): defaults to every method in [`METHODS`].
            prefix_ids (sequence of sequences of `int`, *optional*): one context per sequence, not scored; an empty
                or missing context is replaced by the start token.

        Returns:
            `dict[str, torch.DoubleTensor]`: method -> scores of shape `(len(token_ids),)`. After a call that
            includes `"distortion"`, `self.last_settings` holds the best grid setting of each sequence.
        """
        return self._score(token_ids, methods, prefix_ids, None)[0]

    def score_ids_by_length(
        self,
        token_ids: Sequence[Sequence[int]],
        lengths: Sequence[int],
        methods: Sequence[str] | None = None,
        *,
        prefix_ids: Sequence[Sequence[int]] | None = None,
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Scores of the first `L` tokens of each sequence for several `L`, from one forward pass.

        The model is causal, so the score at length `L` equals [`score_ids`] with `max_tokens=L`. Sequences shorter
        than `L` get `nan` at that length.

        Returns:
            `dict[int, dict[str, torch.DoubleTensor]]`: length -> method -> scores of shape `(len(token_ids),)`.
        """
        lengths = sorted({int(n) for n in lengths})
        if not lengths or lengths[0] < 1:
            raise invalid_argument("lengths", lengths, "a non-empty list of positive integers")
        return self._score(token_ids, methods, prefix_ids, lengths)

    @torch.no_grad()
    def _score(
        self,
        token_ids: Sequence[Sequence[int]],
        methods: Sequence[str] | None,
        prefix_ids: Sequence[Sequence[int]] | None,
        lengths: list[int] | None,
    ) -> dict[Any, Any]:
        from tqdm.auto import tqdm

        methods = list(METHODS if methods is None else methods)
        if not methods:
            raise invalid_argument("methods", methods, "a non-empty list of methods")
        for method in methods:
            _check_method(method)
        ids = self._check_ids(token_ids, "token_ids")
        if prefix_ids is None:
            contexts = [self._start_ids() for _ in ids]
        else:
            if len(prefix_ids) != len(ids):
                raise invalid_argument("prefix_ids", f"{len(prefix_ids)} prefixes", f"one per sequence ({len(ids)})")
            contexts = [row or self._start_ids() for row in self._check_ids(prefix_ids, "prefix_ids")]
        for i, row in enumerate(ids):
            if not row:
                raise EmptyTextError(f"`texts[{i}]` has no tokens. Remove empty texts before scoring.")
            if len(row) < self.min_tokens:
                raise TextTooShortError(
                    f"`texts[{i}]` has {len(row)} tokens, fewer than min_tokens={self.min_tokens}. Pass longer "
                    "texts or lower `min_tokens` (short texts give unreliable scores)."
                )
        limit = self.max_tokens if lengths is None else max(lengths)
        if limit is not None:
            ids = [row[:limit] for row in ids]

        keys = [None] if lengths is None else lengths
        scores = {key: {m: torch.full((len(ids),), math.nan, dtype=torch.float64) for m in methods} for key in keys}
        settings: list[SamplerSetting] = [self.grid[0]] * len(ids)
        # Longest first so that each batch pads little; results are written back to the input order.
        order = sorted(range(len(ids)), key=lambda i: -(len(contexts[i]) + len(ids[i])))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        device = next(self.model.parameters()).device
        for batch in tqdm(batches, desc="detect", unit="batch", disable=not self.progress or len(batches) < 2):
            rows = [contexts[i] + ids[i] for i in batch]
            width = max(len(r) for r in rows)
            input_ids = torch.zeros(len(rows), width, dtype=torch.long)
            attention = torch.zeros(len(rows), width, dtype=torch.long)
            for b, row in enumerate(rows):  # right padding: the scored positions do not move
                input_ids[b, : len(row)] = torch.tensor(row)
                attention[b, : len(row)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            for b, i in enumerate(batch):
                start = len(contexts[i]) - 1
                row_logits = logits[b, start : start + len(ids[i])].float().cpu()  # (T, V)
                row_lengths = [len(ids[i])] if lengths is None else [n for n in lengths if n <= len(ids[i])]
                row_scores, best = self._sequence_scores(row_logits, torch.tensor(ids[i]), methods, row_lengths)
                for n, values in row_scores.items():
                    key = None if lengths is None else n
                    for method, value in values.items():
                        scores[key][method][i] = value
                if best is not None:
                    settings[i] = best
        if "distortion" in methods:
            self.last_settings = settings
        return scores if lengths is not None else {0: scores[None]}

    def _sequence_scores(
        self, logits: torch.Tensor, tokens: torch.Tensor, methods: Sequence[str], lengths: Sequence[int]
    ) -> tuple[dict[int, dict[str, float]], SamplerSetting | None]:
        """Scores of the first `n` tokens of one sequence for each `n` in `lengths`, from `(T, V)` logits."""
        log_probs, observed = token_log_probs(logits, tokens)  # (T, V), (T,)
        per_token: dict[str, torch.Tensor] = {}  # method -> per-token terms, cumulated over positions
        for method in methods:
            if method == "loglik":
                per_token[method] = observed.cumsum(0)  # (T,)
            elif method == "logrank":
                per_token[method] = -rank(log_probs, tokens).log().cumsum(0)
            elif method == "fast_detectgpt":
                mean, variance = fast_detectgpt_terms(log_probs)
                per_token[method] = torch.stack([(observed - mean).cumsum(0), variance.cumsum(0)], -1)  # (T, 2)
            elif method == "temptest":
                per_token[method] = log_ratio(log_probs, tokens, [SamplerSetting(self.temperature)])[:, 0].cumsum(0)
            else:
                per_token[method] = log_ratio(log_probs, tokens, self.grid, epsilon=self.epsilon).cumsum(0)  # (T, G)
        out: dict[int, dict[str, float]] = {}
        best = None
        for n in lengths:
            values: dict[str, float] = {}
            for method, cumulative in per_token.items():
                total = cumulative[n - 1]
                if method == "fast_detectgpt":
                    values[method] = float(total[0] / total[1].clamp_min(1e-12).sqrt())
                elif method == "distortion":
                    if n == lengths[-1]:
                        best = self.grid[int(total.argmax())]
                    if self.aggregate == "max":
                        values[method] = float(total.max() / n)
                    else:
                        values[method] = float((torch.logsumexp(total, 0) - math.log(len(self.grid))) / n)
                else:
                    values[method] = float(total / n)
            out[n] = values
        return out, best
