"""Applying a `LogitsProcessorList` while measuring the distortion it introduces."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import InvalidLogitsError
from ..processors.distortion import is_normalization, is_warper, warper_temperature

__all__ = ["ProcessorChain"]


class ProcessorChain:
    r"""A processor list split into `pre` (penalties and other non-warpers), `warp` and `post` segments.

    transformers orders processors as `[penalties..., user processors..., warpers..., normalization]`; the first
    and last warper delimit the warping segment. `__call__` applies the whole list and returns the final scores
    together with the per-row distortion `d_t = LSE(pre-warp scores) / tau - LSE(warped scores)`.

    Args:
        processors (`LogitsProcessorList` or `list[LogitsProcessor]`): the chain, in order.
    """

    def __init__(self, processors: list[LogitsProcessor] | LogitsProcessorList | None):
        processors = list(processors or [])
        warp_positions = [i for i, p in enumerate(processors) if is_warper(p)]
        if warp_positions:
            first, last = warp_positions[0], warp_positions[-1]
        else:
            first = last = len(processors)
            while first > 0 and is_normalization(processors[first - 1]):
                first -= 1
            last = first - 1
        self.pre = LogitsProcessorList(processors[:first])
        self.warp = LogitsProcessorList(processors[first : last + 1])
        self.post = LogitsProcessorList(processors[last + 1 :])

    @property
    def processors(self) -> list[LogitsProcessor]:
        """The full chain, in order."""
        return [*self.pre, *self.warp, *self.post]

    def temperature(self) -> float | torch.Tensor:
        """Product of the temperatures of the warping segment (a float or a `(B,)` float64 tensor)."""
        total: float | torch.Tensor = 1.0
        for processor in self.warp:
            t = warper_temperature(processor)
            if t is not None:
                total = total * t
        return total

    def __call__(
        self, input_ids: torch.LongTensor, logits: torch.FloatTensor, step: int | None = None
    ) -> tuple[torch.FloatTensor, torch.FloatTensor]:
        """Applies the chain to `logits` of shape `(B, V)`; returns `(scores (B, V), distortion (B,))`.

        Raises [`InvalidLogitsError`] when a row of the raw logits or of the scores after any processor holds a NaN
        or a `+inf`, or has every token at `-inf`; the message names the rows and the processor that produced it.
        """
        reference = self.pre(input_ids, logits) if self.pre else logits
        lse_reference = torch.logsumexp(reference.float(), dim=-1)  # (B,)
        scores = self.warp(input_ids, reference) if self.warp else reference
        lse_scores = torch.logsumexp(scores.float(), dim=-1) if self.warp else lse_reference
        if self.warp:
            temperature = self.temperature()
            if isinstance(temperature, torch.Tensor):
                temperature = temperature.to(device=logits.device, dtype=torch.float32)
            distortion = lse_reference / temperature - lse_scores
        else:
            distortion = torch.zeros_like(lse_reference)
        if self.post:
            scores = self.post(input_ids, scores)
        # NaN and +inf propagate into the log-sum-exp and an all -inf row gives -inf: one check, one sync.
        finite = torch.isfinite(lse_reference) & torch.isfinite(lse_scores)
        if self.post:
            finite &= ~torch.isnan(scores).any(-1)
        if not bool(finite.all()):
            self._raise_invalid(input_ids, logits, step, _rows(~finite))
        return scores, distortion

    def _raise_invalid(
        self, input_ids: torch.LongTensor, logits: torch.Tensor, step: int | None, bad_rows: list[int]
    ) -> None:
        """Finds where the scores went bad (the model, or the first processor whose output is invalid) and raises."""
        where = f" at generation step {step}" if step is not None else ""
        nan_rows = _rows(torch.isnan(logits).any(-1))
        if nan_rows:
            raise InvalidLogitsError(
                f"The model produced NaN logits{where} in batch rows {nan_rows}. Fix: check the inputs and the "
                "model weights, or run the model in float32 (half precision can overflow); transformers' "
                "`remove_invalid_values=True` replaces NaN/inf scores if you prefer to continue."
            )
        scores, source = logits, "the model's logits"
        for processor in [None, *self.processors]:
            if processor is not None:
                scores, source = processor(input_ids, scores), f"`{type(processor).__name__}`"
            problem = _invalid(scores)
            if problem is None:
                continue
            kind, rows = problem
            if kind == "nan":
                raise InvalidLogitsError(
                    f"The scores hold NaN after {source}{where} in batch rows {rows}. Fix: that processor "
                    "produced NaN (e.g. 0/0, log(0) - log(0), inf - inf); correct it, or pass "
                    "`remove_invalid_values=True` to replace NaN/inf scores."
                )
            if kind == "+inf":
                raise InvalidLogitsError(
                    f"The scores hold +inf after {source}{where} in batch rows {rows}: no distribution can be "
                    "formed. Fix: check the model and any processor that adds a bias (sequence_bias, a custom "
                    "logits_processor); `remove_invalid_values=True` replaces NaN/inf scores if you prefer to "
                    "continue."
                )
            raise InvalidLogitsError(
                f"Every token has score -inf after {source}{where} in batch rows {rows}: nothing can be sampled. "
                "Fix: that processor (bad_words_ids, sequence_bias, a constraint) removed every token; relax it."
            )
        raise InvalidLogitsError(  # a processor with state that did not reproduce its output when re-run
            f"The scores are NaN, +inf or all -inf{where} in batch rows {bad_rows} after the logits processors "
            f"({', '.join(type(p).__name__ for p in self.processors)}). Fix: check the custom processors; "
            "`remove_invalid_values=True` replaces NaN/inf scores if you prefer to continue."
        )


def _rows(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _invalid(scores: torch.Tensor) -> tuple[str, list[int]] | None:
    """`(kind, rows)` of the first kind of invalid score found in `scores (B, V)`, else `None`."""
    for kind, mask in (
        ("nan", torch.isnan(scores).any(-1)),
        ("+inf", torch.isposinf(scores).any(-1)),
        ("-inf", torch.isneginf(scores).all(-1)),
    ):
        rows = _rows(mask)
        if rows:
            return kind, rows
    return None
