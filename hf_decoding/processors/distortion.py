"""Measuring local-normalization distortion `d_t = -log Z_t` from a processor chain.

For raw (pre-warp) scores `l` and the warped scores `s` (with `s_v = l_v / tau` on the kept set and `-inf`
elsewhere), `Z_t = sum_{v kept} p(v) ** (1 / tau)` and

    d_t = -log Z_t = LSE(l) / tau - LSE(s),

two logsumexps per step, exact for any chain of temperature and truncation warpers (a partially kept token, as
in the distortion-aware nucleus, counts with its kept fraction).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

__all__ = ["DistortionTracker", "distortion_from_scores", "is_warper", "warper_temperature"]

#: transformers' warpers: they only rescale or truncate the distribution.
TRANSFORMERS_WARPERS: tuple[type, ...] = (
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
)


def is_warper(processor: LogitsProcessor) -> bool:
    """Whether `processor` rescales or truncates the distribution (and so enters the distortion)."""
    return isinstance(processor, TRANSFORMERS_WARPERS) or bool(getattr(processor, "is_warper", False))


def is_normalization(processor: LogitsProcessor) -> bool:
    """Whether `processor` only renormalizes (log-softmax); it changes no probability."""
    return isinstance(processor, LogitNormalization)


def warper_temperature(processor: LogitsProcessor) -> float | torch.Tensor | None:
    """The temperature a warper divides by (a float or a `(B,)` tensor), or `None` if it does not rescale."""
    if isinstance(processor, TemperatureLogitsWarper):
        return float(processor.temperature)
    from .per_row import PerRowTemperatureLogitsWarper

    if isinstance(processor, PerRowTemperatureLogitsWarper):
        return processor.temperature
    return getattr(processor, "distortion_temperature", None)


def distortion_from_scores(
    logits: torch.Tensor, scores: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Per-step distortion `LSE(logits) / tau - LSE(scores)` for tensors of shape `(..., V)`.

    Args:
        logits (`torch.Tensor` of shape `(..., vocab_size)`): raw scores (after penalties, before warpers).
        scores (`torch.Tensor` of shape `(..., vocab_size)`): warped scores.
        temperature (`float` or `torch.Tensor` broadcastable to `logits.shape[:-1]`, *optional*, defaults to 1):
            the temperature of the warping chain.
    Returns:
        `torch.Tensor` of shape `logits.shape[:-1]` (float32).
    """
    lse_logits = torch.logsumexp(logits.float(), dim=-1)
    lse_scores = torch.logsumexp(scores.float(), dim=-1)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device=lse_logits.device, dtype=torch.float32)
    return lse_logits / temperature - lse_scores


class _Reference(LogitsProcessor):
    """Records `LSE(scores)` of the pre-warp scores; returns them unchanged."""

    def __init__(self, tracker: DistortionTracker):
        self.tracker = tracker

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.tracker._pending = torch.logsumexp(scores.float(), dim=-1)
        return scores


class DistortionTracker(LogitsProcessor):
    r"""Records the per-step distortion `d_t` of a warping chain without changing any score.

    Our decoders measure distortion automatically; this processor brings the same measurement to plain
    `model.generate`. Place `tracker.reference` before the warpers and `tracker` after them. transformers inserts
    its own warpers *after* user processors, so disable them and pass the chain yourself:

    ```python
    tracker = DistortionTracker(temperature=0.7)
    model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                   logits_processor=[tracker.reference, TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), tracker])
    tracker.per_step  # (B, steps)
    ```

    Args:
        temperature (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*, defaults to 1.0):
            Temperature of the chain between the two markers.

    Rows that finished early keep being recorded (transformers still computes their scores); mask them with the
    sequences' EOS positions if needed.
    """

    def __init__(self, temperature: float | torch.Tensor = 1.0):
        self.temperature = temperature
        self.reference = _Reference(self)
        self.reset()

    def reset(self) -> None:
        """Forgets every recorded step."""
        self._steps: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is None:
            raise RuntimeError(
                "DistortionTracker saw no reference scores: put `tracker.reference` before the warpers in "
                "`logits_processor`."
            )
        temperature = self.temperature
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(device=scores.device, dtype=torch.float32)
        self._steps.append(self._pending / temperature - torch.logsumexp(scores.float(), dim=-1))
        self._pending = None
        return scores

    @property
    def per_step(self) -> torch.Tensor:
        """Recorded distortion, shape `(batch_size, steps)`."""
        if not self._steps:
            return torch.zeros(0, 0)
        return torch.stack(self._steps, dim=-1)

    @property
    def total(self) -> torch.Tensor:
        """Sum over steps, shape `(batch_size,)`."""
        return self.per_step.sum(-1)
