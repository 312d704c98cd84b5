"""`MaskedDiffusionOutput`: what `decoding="masked_diffusion"` returns with `return_dict_in_generate=True`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.outputs import DecodingOutput

__all__ = ["MaskedDiffusionOutput"]


@dataclass
class MaskedDiffusionOutput(DecodingOutput):
    """A [`DecodingOutput`] with the denoising trajectory.

    Args:
        sequences (`torch.LongTensor` of shape `(B, P + gen_length)`): prompt and generation.
        cost ([`DecodingCost`]): `forward_passes` is the exact number of model calls (a classifier-free-guidance
            step is one call on `2 * B` rows); `generated_tokens` counts tokens up to and including each row's
            first EOS.
        history (`tuple[torch.LongTensor]`, *optional*): with `output_history=True`, the generated region
            `(B, gen_length)` after every step, mask tokens where still unknown.
        steps (`torch.LongTensor` of shape `(B,)`, *optional*): denoising steps in which each row committed tokens.
    """

    history: tuple[torch.Tensor, ...] | None = None
    steps: torch.Tensor | None = None

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per model call, over the batch."""
        if self.cost is None or not self.cost.forward_passes:
            return 0.0
        return self.cost.generated_tokens / self.cost.forward_passes
