"""Wall-clock accounting by phase, turned into a [`~hf_decoding.DecodingCost`]."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..generation.outputs import DecodingCost

__all__ = ["PHASES", "CostMeter"]

#: Phases a particle decode reports in `cost.seconds` (plus `"total"`).
PHASES = ("prefill", "generation", "reward", "resampling", "selection")


class CostMeter:
    """Accumulates seconds per phase. On CUDA it synchronises at phase boundaries so kernels are charged to the
    phase that launched them.

    Args:
        device (`torch.device`, *optional*): the policy's device.
    """

    def __init__(self, device: torch.device | None = None):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = device is not None and device.type == "cuda" and torch.cuda.is_available()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`with meter.phase("reward"): ...` adds the block's wall time to `seconds[name]`."""
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start

    def result(
        self, *, forward_passes: int, generated_tokens: int, reward_calls: int = 0, reward_tokens: int = 0
    ) -> DecodingCost:
        """The [`DecodingCost`] with `seconds["total"]` since construction."""
        seconds = {name: float(self.seconds.get(name, 0.0)) for name in PHASES}
        seconds.update({k: float(v) for k, v in self.seconds.items() if k not in seconds})
        seconds["total"] = time.perf_counter() - self.started
        return DecodingCost(
            forward_passes=int(forward_passes),
            generated_tokens=int(generated_tokens),
            reward_calls=int(reward_calls),
            reward_tokens=int(reward_tokens),
            seconds=seconds,
        )
