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

        Raises [`InvalidLogitsError`] when a row of the raw logits holds a NaN or is entirely `-inf`.
        """
        reference = self.pre(input_ids, logits) if self.pre else logits
        lse_reference = torch.logsumexp(reference.float(), dim=-1)  # (B,)
        if not bool(torch.isfinite(lse_reference).all()):
            self._raise_invalid(logits, reference, step)
        scores = self.warp(input_ids, reference) if self.warp else reference
        if self.warp:
            temperature = self.temperature()
            if isinstance(temperature, torch.Tensor):
                temperature = temperature.to(device=logits.device, dtype=torch.float32)
            distortion = lse_reference / temperature - torch.logsumexp(scores.float(), dim=-1)
        else:
            distortion = torch.zeros_like(lse_reference)
        if self.post:
            scores = self.post(input_ids, scores)
        return scores, distortion

    @staticmethod
    def _raise_invalid(logits: torch.Tensor, reference: torch.Tensor, step: int | None) -> None:
        where = f" at generation step {step}" if step is not None else ""
        nan_rows = torch.isnan(logits).any(-1).nonzero().flatten().tolist()
        if nan_rows:
            raise InvalidLogitsError(
                f"The model produced NaN logits{where} in batch rows {nan_rows}. Fix: check the inputs and the "
                "model weights, or run the model in float32 (half precision can overflow); transformers' "
                "`remove_invalid_values=True` replaces NaN/inf scores if you prefer to continue."
            )
        inf_rows = torch.isposinf(reference).any(-1).nonzero().flatten().tolist()
        if inf_rows:
            raise InvalidLogitsError(
                f"The scores hold +inf{where} in batch rows {inf_rows}: no distribution can be formed. Fix: check "
                "the model and any processor that adds a bias (sequence_bias, a custom logits_processor); "
                "transformers' `remove_invalid_values=True` replaces NaN/inf scores if you prefer to continue."
            )
        dead_rows = torch.isneginf(reference).all(-1).nonzero().flatten().tolist()
        raise InvalidLogitsError(
            f"Every token has score -inf{where} in batch rows {dead_rows or 'unknown'}: nothing can be sampled. "
            "Fix: a processor (bad_words_ids, sequence_bias, a constraint) removed every token; relax it."
        )
