"""`MaskedDiffusionConfig`: the options of the masked-diffusion sampler, validated once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidDecodingArgument, invalid_argument
from .schedules import SCHEDULES
from .selection import CONFIDENCE_SOURCES, POSITION_RULES

__all__ = ["MaskedDiffusionConfig"]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_argument(name, value, "a positive integer")


@dataclass
class MaskedDiffusionConfig:
    r"""Options of `decoding="masked_diffusion"` (the decoder's keyword arguments of the same names).

    None of the names is a `GenerationConfig` field, so `generate` passes them through to the decoder; sampling
    itself (`do_sample`, `temperature`, `top_k`, `top_p`, `eos_token_id`, `pad_token_id`) keeps its
    `GenerationConfig` meaning.

    Args:
        gen_length (`int`, *optional*, defaults to 128):
            Tokens to generate (LLaDA's `gen_length`). All start as `[MASK]` after the prompt.
        diffusion_steps (`int`, *optional*):
            Denoising steps over the whole generation (default: `gen_length`, one token per step, which is exact
            for a perfect denoiser). Spread over the blocks: block `b` gets `steps // num_blocks` steps, plus one
            for the first `steps % num_blocks` blocks.
        block_length (`int`, *optional*):
            Semi-autoregressive block size (default: `gen_length`, one block). Blocks are filled left to right;
            `gen_length` must be a multiple of it.
        unmasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions to commit: `"random"` (the setting of Li & Cai's theorems), `"low_confidence"`,
            `"margin"`, `"entropy"`, `"entropy_bound"` (EB-sampler) or `"threshold"` (Fast-dLLM).
        unmasking_confidence (`str`, *optional*, defaults to `"candidate"`): what `"low_confidence"` and
            `"threshold"` rank by: the probability of the drawn candidate (LLaDA, Fast-dLLM) or `"max_prob"`, the
            distribution's `max_v p(v)`. Identical for greedy decoding; when sampling, `"max_prob"` keeps one token
            per step exact while `"candidate"` biases towards likely tokens (docs/methods/masked_diffusion.md).
        unmasking_schedule (`str`, *optional*, defaults to `"linear"`): `"linear"` (LLaDA), `"cosine"`
            (MaskGIT) or `"dream"` (Dream's eps schedule). For the adaptive rules it is a per-step minimum.
        schedule_eps (`float`, *optional*, defaults to 1e-3): the final time of the `"dream"` schedule.
        unmasking_threshold (`float`, *optional*, defaults to 0.9): `"threshold"` commits every masked position
            whose candidate has probability `>= unmasking_threshold` (always at least one).
        unmasking_entropy_bound (`float`, *optional*, defaults to 0.1): `"entropy_bound"` commits the largest set of
            lowest-entropy positions whose entropies sum to at most this (nats) plus the largest of them.
        cfg_scale (`float`, *optional*, defaults to 0.0): classifier-free guidance. The unconditional input replaces
            every prompt token by the mask token (LLaDA); `logits = u + (cfg_scale + 1) * (c - u)`. Conditional and
            unconditional rows share one batched forward pass.
        suppress_eos (`bool`, *optional*, defaults to `False`): EOS logits to `-inf` (LLaDA's `logits_eos_inf`).
        defer_eos (`bool`, *optional*, defaults to `False`): positions whose candidate is an EOS id are committed
            after all others (LLaDA's `confidence_eos_eot_inf`, written explicitly so that it also works when
            sampling).
        stop_at_eos (`bool`, *optional*, defaults to `True`): after a block, a row whose generation holds an EOS is
            finished: the remaining blocks are not denoised for it, and every token after its first EOS becomes
            `pad_token_id` (as in autoregressive `generate`).
        logits_shift (`bool`, *optional*): the model's output `i` predicts token `i + 1` (Dream). Default: inferred
            from the interface (`diffusion_generate` or `config.logits_shift`).
        mask_token_id (`int`, *optional*): default from `model.config` or the tokenizer.
        output_history (`bool`, *optional*, defaults to `False`): keep the generated region after every step in
            `out.history` (for a denoising streamer or an animation).
    """

    gen_length: int = 128
    diffusion_steps: int | None = None
    block_length: int | None = None
    unmasking: str = "low_confidence"
    unmasking_confidence: str = "candidate"
    unmasking_schedule: str = "linear"
    schedule_eps: float = 1e-3
    unmasking_threshold: float = 0.9
    unmasking_entropy_bound: float = 0.1
    cfg_scale: float = 0.0
    suppress_eos: bool = False
    defer_eos: bool = False
    stop_at_eos: bool = True
    logits_shift: bool | None = None
    mask_token_id: int | None = None
    output_history: bool = False

    def __post_init__(self) -> None:
        _positive_int("gen_length", self.gen_length)
        if self.diffusion_steps is None:
            self.diffusion_steps = self.gen_length
        if self.block_length is None:
            self.block_length = self.gen_length
        _positive_int("diffusion_steps", self.diffusion_steps)
        _positive_int("block_length", self.block_length)
        if self.gen_length % self.block_length:
            raise InvalidDecodingArgument(
                f"`gen_length={self.gen_length}` is not divisible by `block_length={self.block_length}`: "
                "semi-autoregressive blocks must tile the generation. Fix: pick a block_length that divides "
                f"gen_length (e.g. {_divisor_near(self.gen_length, self.block_length)}) or "
                f"gen_length={math.ceil(self.gen_length / self.block_length) * self.block_length}."
            )
        if self.diffusion_steps < self.num_blocks:
            raise InvalidDecodingArgument(
                f"`diffusion_steps={self.diffusion_steps}` is smaller than the number of blocks "
                f"({self.gen_length} / {self.block_length} = {self.num_blocks}); every block needs a step. Fix: "
                f"pass diffusion_steps >= {self.num_blocks} or a larger block_length."
            )
        if self.unmasking not in POSITION_RULES:
            raise invalid_argument("unmasking", self.unmasking, f"one of {', '.join(map(repr, POSITION_RULES))}")
        if self.unmasking_confidence not in CONFIDENCE_SOURCES:
            raise invalid_argument(
                "unmasking_confidence", self.unmasking_confidence, f"one of {', '.join(map(repr, CONFIDENCE_SOURCES))}"
            )
        if self.unmasking_schedule not in SCHEDULES:
            raise invalid_argument(
                "unmasking_schedule", self.unmasking_schedule, f"one of {', '.join(map(repr, SCHEDULES))}"
            )
        if not _number(self.schedule_eps) or not 0 < self.schedule_eps < 1:
            raise invalid_argument("schedule_eps", self.schedule_eps, "a number in (0, 1)", "Dream uses 1e-3.")
        if not _number(self.unmasking_threshold) or not 0 < self.unmasking_threshold <= 1:
            raise invalid_argument(
                "unmasking_threshold", self.unmasking_threshold, "a number in (0, 1]", "Fast-dLLM uses 0.9."
            )
        if not _number(self.unmasking_entropy_bound) or self.unmasking_entropy_bound < 0:
            raise invalid_argument("unmasking_entropy_bound", self.unmasking_entropy_bound, "a non-negative number")
        if not _number(self.cfg_scale) or self.cfg_scale < 0:
            raise invalid_argument("cfg_scale", self.cfg_scale, "a non-negative number", "Use 0.0 to disable CFG.")
        if self.mask_token_id is not None and (
            isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or self.mask_token_id < 0
        ):
            raise invalid_argument("mask_token_id", self.mask_token_id, "a non-negative integer")

    @property
    def num_blocks(self) -> int:
        """`gen_length // block_length`."""
        return self.gen_length // self.block_length

    def steps_per_block(self) -> list[int]:
        """Steps of each block: `steps // num_blocks`, one more for the first `steps % num_blocks` blocks."""
        base, remainder = divmod(self.diffusion_steps, self.num_blocks)
        return [base + (1 if b < remainder else 0) for b in range(self.num_blocks)]

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict."""
        return asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _divisor_near(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))
