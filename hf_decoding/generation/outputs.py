"""`DecodingOutput` and the trace dataclasses every decoder fills.

`DecodingOutput` subclasses transformers' `GenerateDecoderOnlyOutput`, so `.sequences`, `.scores`, `.logits`,
`.past_key_values` keep their meaning; the extra fields are optional traces that a decoder fills when it has
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

__all__ = ["AutoDecoTrace", "DecodingCost", "DecodingOutput", "DistortionTrace", "ParticleTrace"]


@dataclass
class DistortionTrace:
    """Per-step local-normalization distortion of each generated sequence.

    Args:
        per_step (`torch.FloatTensor` of shape `(batch_size, new_tokens)`):
            `per_step[b, t] = d_t = -log Z_t` with `Z_t = sum_{v kept} p_t(v) ** (1 / tau_t)`: `p_t` is the model's
            next-token distribution after the non-warping processors (penalties), `tau_t` the temperature and the
            kept set the tokens the warpers leave finite (a partially kept token counts with its kept fraction).
            Steps after a row finished are `0`.
        total (`torch.FloatTensor` of shape `(batch_size,)`):
            `per_step.sum(-1)`: the log distortion `log eps(w)` of each sequence.
    """

    per_step: torch.Tensor
    total: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Mean distortion per generated (unfinished) step, shape `(batch_size,)`."""
        steps = (self.per_step != 0).sum(-1).clamp(min=1)
        return self.total / steps

    def log_ratio(self, i: int, j: int) -> torch.Tensor:
        """Log distortion ratio `|log eps(w_i) - log eps(w_j)|` between rows `i` and `j`."""
        return (self.total[i] - self.total[j]).abs()


@dataclass
class AutoDecoTrace:
    """Temperatures and top-p values that AutoDeco actually applied.

    For the particle decoders (and `globally_normalized`) driven by AutoDeco heads, row `b` holds the values applied
    to each generated token of the particle returned for prompt `b` (the one in `sequences[b]`), carried along with
    it through resampling.

    Args:
        temperature (`torch.FloatTensor` of shape `(batch_size, new_tokens)`): applied temperature per token; NaN at
            positions after the row finished (no prediction was made there), 0 under greedy decoding.
        top_p (`torch.FloatTensor` of shape `(batch_size, new_tokens)`): applied top-p per token; NaN after the row
            finished.
    """

    temperature: torch.Tensor
    top_p: torch.Tensor


@dataclass
class ParticleTrace:
    """All particles of a particle method.

    Args:
        sequences (`torch.LongTensor` of shape `(batch_size, num_particles, length)`): every particle's tokens.
        log_weights (`torch.FloatTensor` of shape `(batch_size, num_particles)`): final log-weights.
        ess (`torch.FloatTensor` of shape `(batch_size, steps)`): effective sample size before each resampling check.
        ancestors (`torch.LongTensor` of shape `(batch_size, steps, num_particles)`, *optional*): ancestor indices.
        selected (`torch.LongTensor` of shape `(batch_size,)`): index of the particle returned in `sequences`.
        log_normalizer (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): SMC estimate of the log normalizer.
    """

    sequences: torch.Tensor
    log_weights: torch.Tensor
    ess: torch.Tensor
    ancestors: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    log_normalizer: torch.Tensor | None = None


@dataclass
class DecodingCost:
    """Compute spent by one `generate` call.

    Args:
        forward_passes (`int`): forward calls of the policy model (prefill counts as one).
        generated_tokens (`int`): tokens sampled over all rows, finished rows excluded.
        reward_calls (`int`): calls of the reward model.
        reward_tokens (`int`): tokens the reward model read.
        seconds (`dict[str, float]`): wall time split by phase (`"total"` always present).
    """

    forward_passes: int = 0
    generated_tokens: int = 0
    reward_calls: int = 0
    reward_tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class DecodingOutput(GenerateDecoderOnlyOutput):
    """Output of every `hf_decoding` decoder when `return_dict_in_generate=True`.

    Args:
        sequences, scores, logits, attentions, hidden_states, past_key_values:
            As in transformers' `GenerateDecoderOnlyOutput`.
        distortion ([`DistortionTrace`], *optional*): per-step and total distortion of each row.
        autodeco ([`AutoDecoTrace`], *optional*): the temperatures and top-p values AutoDeco applied.
        particles ([`ParticleTrace`], *optional*): every particle of a particle method.
        cost ([`DecodingCost`], *optional*): forward passes, tokens, reward calls and time.
    """

    distortion: DistortionTrace | None = None
    autodeco: AutoDecoTrace | None = None
    particles: ParticleTrace | None = None
    cost: DecodingCost | None = None
