"""The masked-diffusion sampling loop, independent of `generate`.

Start from the prompt followed by `gen_length` mask tokens; fill semi-autoregressive blocks left to right; in
each step, one forward pass gives a distribution at every masked position of the current block, a candidate
token is drawn for each, and a rule picks which candidates are committed (never re-masked).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import invalid_argument
from .adapters import MaskedDiffusionAdapter
from .config import MaskedDiffusionConfig
from .schedules import unmasking_schedule
from .selection import ADAPTIVE_RULES, commit_counts, position_scores, sample_candidates, select_positions

__all__ = ["DenoisingResult", "masked_diffusion_sample"]


@dataclass
class DenoisingResult:
    """Raw result of [`masked_diffusion_sample`].

    Args:
        sequences (`torch.LongTensor` of shape `(B, P + G)`): prompt and generation.
        forward_passes (`int`): model calls.
        generated_tokens (`int`): tokens up to and including each row's first EOS (all `G` without one).
        steps (`torch.LongTensor` of shape `(B,)`): steps in which each row committed tokens.
        history (`list[torch.LongTensor]`): the generated region `(B, G)` after each step (when requested).
        seconds (`float`): wall time.
    """

    sequences: torch.Tensor
    forward_passes: int
    generated_tokens: int
    steps: torch.Tensor
    history: list[torch.Tensor]
    seconds: float


def masked_diffusion_sample(
    adapter: MaskedDiffusionAdapter,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    config: MaskedDiffusionConfig,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Any | None = None,
) -> DenoisingResult:
    r"""Runs the masked-diffusion sampler.

    Args:
        adapter ([`MaskedDiffusionAdapter`]): the denoiser call.
        input_ids (`torch.LongTensor` of shape `(B, P)`): left-padded prompts (`P` may be 0 without logit shift).
        attention_mask (`torch.LongTensor` of shape `(B, P)`, *optional*): 0 on padding.
        config ([`MaskedDiffusionConfig`]): the sampler options.
        do_sample, temperature, top_k, top_p: the candidate draw (see [`sample_candidates`]).
        eos_token_ids (`Sequence[int]`): EOS ids for `suppress_eos`, `defer_eos` and `stop_at_eos`.
        pad_token_id (`int`, *optional*): written after a row's first EOS (default: the first EOS id).
        generator (`torch.Generator`, *optional*): source of all randomness.
        streamer (`BaseStreamer`, *optional*): receives every finished block through `put`, the current block after
            each step through `put_draft` when it has that method (`TextDiffusionStreamer`), and `end()`.

    Returns:
        [`DenoisingResult`].
    """
    started = time.perf_counter()
    batch_size, prompt_length = input_ids.shape
    device = input_ids.device
    mask_id = adapter.mask_token_id
    gen_length, block_length = config.gen_length, config.block_length
    if adapter.logits_shift and prompt_length == 0:
        raise invalid_argument(
            "input_ids",
            tuple(input_ids.shape),
            "a prompt of at least one token when logits are shifted",
            "Dream-style models predict token i from output i - 1; start from a BOS token.",
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    x = torch.cat([input_ids, input_ids.new_full((batch_size, gen_length), mask_id)], dim=1)  # (B, P + G)
    attention = torch.cat([attention_mask.long(), attention_mask.new_ones((batch_size, gen_length)).long()], dim=1)
    unconditional_prompt = None
    if config.cfg_scale > 0:
        # LLaDA's unconditional input: every real prompt token masked; padding stays padding
        unconditional_prompt = torch.where(attention_mask.bool(), torch.full_like(input_ids, mask_id), input_ids)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    fill_id = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos.numel() else mask_id)
    adaptive = config.unmasking in ADAPTIVE_RULES
    forward_passes = 0
    steps = torch.zeros(batch_size, dtype=torch.long, device=device)
    history: list[torch.Tensor] = []
    positions = torch.arange(gen_length, device=device)

    for block, block_steps in enumerate(config.steps_per_block()):
        start = prompt_length + block * block_length
        end = start + block_length
        counts = unmasking_schedule(block_length, block_steps, config.unmasking_schedule, config.schedule_eps)
        step = 0
        while True:
            masked = x[:, start:end] == mask_id  # (B, N)
            active = masked.any(-1)  # (B,)
            if not bool(active.any()):
                break
            scheduled = counts[step] if step < len(counts) else block_length
            step += 1
            if scheduled == 0 and not adaptive:
                continue  # nothing to reveal: skip the forward pass (Dream pays for it)
            rows = active.nonzero().squeeze(-1)  # (R,)
            logits = _block_logits(adapter, x, attention, rows, start, end, config, unconditional_prompt)  # (R,N,V)
            logits[..., mask_id] = float("-inf")  # committing [MASK] would leave the position masked forever
            if config.suppress_eos and eos.numel():
                logits[..., eos] = float("-inf")
            forward_passes += 1
            row_masked = masked[rows]  # (R, N)
            candidates = sample_candidates(
                logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            scores = position_scores(config.unmasking, candidates, generator, config.unmasking_confidence)  # (R, N)
            n_commit = commit_counts(
                config.unmasking,
                candidates,
                row_masked,
                scheduled,
                threshold=config.unmasking_threshold,
                entropy_bound=config.unmasking_entropy_bound,
                confidence=config.unmasking_confidence,
            )  # (R,)
            defer = torch.isin(candidates.tokens, eos) if config.defer_eos and eos.numel() else None
            chosen = select_positions(scores, row_masked, n_commit, defer)  # (R, N)
            x[rows, start:end] = torch.where(chosen, candidates.tokens, x[rows, start:end])
            steps[rows] += 1
            if config.output_history:
                history.append(x[:, prompt_length:].detach().clone().cpu())
            if streamer is not None and hasattr(streamer, "put_draft"):
                streamer.put_draft(x[:, start:end].cpu())
        if config.stop_at_eos and eos.numel():
            generated = x[:, prompt_length:]  # (B, G)
            is_eos = torch.isin(generated, eos) & (positions < end - prompt_length)
            has_eos = is_eos.any(-1)  # (B,)
            first = torch.where(
                has_eos, is_eos.long().argmax(-1), torch.full_like(has_eos, gen_length, dtype=torch.long)
            )
            after = positions[None] > first[:, None]  # (B, G)
            x[:, prompt_length:] = torch.where(after, torch.full_like(generated, fill_id), generated)
        if streamer is not None:
            streamer.put(x[:, start:end].cpu())
        if config.stop_at_eos and eos.numel() and not bool((x[:, end:] == mask_id).any()):
            break  # every row finished with an EOS: the remaining blocks are already padding

    if streamer is not None:
        streamer.end()
    generated = x[:, prompt_length:]
    if eos.numel():
        is_eos = torch.isin(generated, eos)
        lengths = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, torch.full_like(steps, gen_length))
    else:
        lengths = torch.full_like(steps, gen_length)
    return DenoisingResult(
        sequences=x,
        forward_passes=forward_passes,
        generated_tokens=int(lengths.sum()),
        steps=steps,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _block_logits(
    adapter: MaskedDiffusionAdapter,
    x: torch.LongTensor,
    attention: torch.Tensor,
    rows: torch.LongTensor,
    start: int,
    end: int,
    config: MaskedDiffusionConfig,
    unconditional_prompt: torch.Tensor | None,
) -> torch.Tensor:
    """One model call on the active rows; float32 logits of the current block, shape `(R, N, V)`."""
    tokens, mask = x[rows], attention[rows]  # (R, L)
    if unconditional_prompt is None:
        return adapter(tokens, mask)[:, start:end].float()
    prompt_length = unconditional_prompt.shape[1]
    unconditional = tokens.clone()
    unconditional[:, :prompt_length] = unconditional_prompt[rows]
    logits = adapter(torch.cat([tokens, unconditional]), torch.cat([mask, mask]))[:, start:end].float()  # (2R,N,V)
    conditional, free = logits.chunk(2)
    return free + (config.cfg_scale + 1.0) * (conditional - free)
