"""The shared decoding loop and its pieces: prefill, one decode step, cache row re-indexing, token selection.

Every decoder builds on these instead of growing its own copy. The loop follows transformers' `_sample` step
for step (same forward inputs, same processor order, same `softmax` + `multinomial` draw), so with the same
torch seed it returns exactly the tokens of the built-in greedy and sampling paths, while also measuring the
distortion of every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig

from ..errors import invalid_argument
from .arguments import DecoderCall
from .cache import decode_forward, decode_step, get_cache, output_cache_kwargs, pad_token_tensor, prefill
from .outputs import DecodingCost, DecodingOutput, DistortionTrace
from .processing import ProcessorChain

__all__ = [
    "StepHook",
    "call_generator",
    "make_generator",
    "option",
    "sampling_loop",
    "select_tokens",
]

#: Called before the processors at every step: `hook(outputs, chain, unfinished)`; may re-parameterise the chain
#: (AutoDeco sets per-row temperature and top-p there). Whatever it returns is ignored.
StepHook = Callable[[Any, ProcessorChain, torch.Tensor], None]


def option(generation_config: GenerationConfig, name: str, value: Any, default: Any) -> Any:
    """A decoder option: the call's value, else `generation_config.<name>`, else `default`."""
    if value is not None:
        return value
    stored = getattr(generation_config, name, None)
    return default if stored is None else stored


def make_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The generator a decoder draws from: `generator`, else a fresh one seeded with `seed`, else `None`.

    `None` means torch's global generator, exactly as transformers' own sampling uses it, so
    `torch.manual_seed(s)` before `generate` reproduces the built-in results.
    """
    if generator is not None:
        if seed is not None:
            raise invalid_argument(
                "seed", seed, "unset when `generator` is given", "Pass either `seed` or `generator`."
            )
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise invalid_argument("seed", seed, "an integer")
    return torch.Generator(device=device).manual_seed(seed)


def select_tokens(scores: torch.FloatTensor, do_sample: bool, generator: torch.Generator | None) -> torch.LongTensor:
    """Draws one token per row: `multinomial(softmax(scores))` when sampling, else `argmax` (as transformers)."""
    if do_sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return torch.argmax(scores, dim=-1)


def call_generator(call: DecoderCall) -> torch.Generator | None:
    """The generator of a decoder call: its `generator`, else one seeded with its `seed` (or
    `generation_config.seed`), else `None` (torch's global generator)."""
    return make_generator(option(call.generation_config, "seed", call["seed"], None), call["generator"], call.device)


def sampling_loop(
    call: DecoderCall,
    *,
    generator: torch.Generator | None = None,
    step_hook: StepHook | None = None,
    step_records: dict[str, list[torch.Tensor]] | None = None,
) -> tuple[torch.LongTensor | DecodingOutput, dict[str, Any]]:
    r"""Token-by-token sampling (or greedy) with distortion accounting; the reference loop of `hf_decoding`.

    Args:
        call ([`DecoderCall`]): the decoder call: the model, the prepared (left-padded) `(B, L)` prompt, the
            processors and stopping criteria `generate` built, the merged config, the model kwargs (attention
            mask, cache, ...) and, among its arguments, an optional `streamer` (receives each new token column and
            `end()`).
        generator (`torch.Generator`, *optional*): source of randomness (`None`: torch's global generator).
        step_hook (`StepHook`, *optional*): called before the processors at every step.
        step_records (`dict[str, list[torch.Tensor]]`, *optional*): lists a hook appends per-step `(B,)` values to;
            masked to NaN after a row finished and returned stacked as `(B, steps)` in the second return value.

    Returns:
        `(result, records)`: `result` is the `(B, L + new)` token tensor, or a [`DecodingOutput`] when
        `generation_config.return_dict_in_generate`; `records` holds the stacked `step_records`.
    """
    started = time.perf_counter()
    model, input_ids, generation_config = call.model, call.input_ids, call.generation_config
    stopping_criteria, model_kwargs, streamer = call.stopping_criteria, call.model_kwargs, call["streamer"]
    chain = ProcessorChain(call.logits_processor)
    pad_token_id = pad_token_tensor(generation_config)
    if pad_token_id is not None:
        pad_token_id = pad_token_id.to(input_ids.device)
    has_eos_criteria = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    return_dict = generation_config.return_dict_in_generate
    keep_scores = return_dict and generation_config.output_scores
    keep_logits = return_dict and generation_config.output_logits
    keep_attentions = return_dict and generation_config.output_attentions
    keep_hidden = return_dict and generation_config.output_hidden_states
    scores: tuple[torch.Tensor, ...] | None = () if keep_scores else None
    raw_logits: list[torch.Tensor] = []
    attentions: list[Any] = []
    hidden_states: list[Any] = []
    distortion: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    batch_size = input_ids.shape[0]
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=input_ids.device)
    forward_passes = 1
    generated = torch.zeros((), dtype=torch.long, device=input_ids.device)

    outputs, model_kwargs = prefill(model, input_ids, generation_config, model_kwargs)
    forward = decode_forward(model, generation_config, model_kwargs)  # compiled where `generate` would compile
    step = 0
    while True:
        # A copy in float32: the prefill logits can be large and must not stay referenced.
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)  # (B, V)
        if step_hook is not None:
            step_hook(outputs, chain, unfinished)
        next_scores, step_distortion = chain(input_ids, logits, step)  # (B, V), (B,)
        if keep_scores:
            scores += (next_scores,)
        if keep_logits:
            raw_logits.append(logits)
        if keep_attentions:
            attentions.append(outputs.attentions)
        if keep_hidden:
            hidden_states.append(outputs.hidden_states)

        next_tokens = select_tokens(next_scores, generation_config.do_sample, generator)  # (B,)
        if has_eos_criteria:
            next_tokens = torch.where(unfinished, next_tokens, pad_token_id)
        distortion.append(torch.where(unfinished, step_distortion, 0.0))
        alive.append(unfinished)
        generated = generated + unfinished.sum()
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, scores)
        step += 1
        if not bool(unfinished.any()):
            break
        del outputs
        outputs, model_kwargs = decode_step(model, input_ids, model_kwargs, forward=forward)
        forward_passes += 1

    if streamer is not None:
        streamer.end()

    records = _stack_records(step_records, alive)
    if not return_dict:
        return input_ids, records
    per_step = torch.stack(distortion, dim=-1)  # (B, new)
    result = DecodingOutput(
        sequences=input_ids,
        scores=scores,
        logits=tuple(raw_logits) if keep_logits else None,
        attentions=tuple(attentions) if keep_attentions else None,
        hidden_states=tuple(hidden_states) if keep_hidden else None,
        **output_cache_kwargs(get_cache(model_kwargs)),
        distortion=DistortionTrace(per_step=per_step, total=per_step.sum(-1)),
        cost=DecodingCost(
            forward_passes=forward_passes,
            generated_tokens=int(generated),
            seconds={"total": time.perf_counter() - started},
        ),
    )
    return result, records


def _stack_records(
    step_records: dict[str, list[torch.Tensor]] | None, alive: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Stacks per-step `(B,)` records into `(B, steps)`, NaN after each row finished (nothing was predicted there)."""
    if not step_records:
        return {}
    mask = torch.stack(alive, dim=-1)  # (B, steps)
    out = {}
    for key, values in step_records.items():
        stacked = torch.stack(values, dim=-1).float() if values else torch.zeros_like(mask, dtype=torch.float32)
        out[key] = torch.where(mask, stacked, torch.full((), float("nan"), dtype=stacked.dtype, device=stacked.device))
    return out
