"""What every particle decoder does before and after its method-specific part: resolve options, check the
tokenizer and reward, prefill once, build the step runner and the reward session, and pick the returned
particle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from ..errors import InvalidDecodingArgument, invalid_argument, warn
from ..generation.cache import eos_token_tensor, pad_token_tensor
from ..generation.loop import make_generator, option
from ..generation.outputs import DecodingOutput
from ..rewards.base import RewardModel, RewardSession, as_reward_model
from .arguments import INDEPENDENT_DEFAULTS, INDEPENDENT_FIXED, DecoderCall
from .cost import CostMeter
from .options import ParticleOptions, particle_options, resolve_options
from .proposal import RowProposal, build_proposal
from .selection import extract_answer, select_particles
from .state import ParticleBatch, PrefilledPrompts
from .steps import StepConfig, StepRunner
from .sweep import NoResampling, ParticleSweep, ResamplingPolicy, SweepResult, assemble_output

__all__ = [
    "STEP_DEFAULTS",
    "ParticleSetup",
    "conditional_sweeps",
    "independent_samples",
    "merge_groups",
    "positive_int_option",
    "prepare",
    "run_sweep",
    "select_final",
    "slot_texts",
    "step_config_from",
]

#: Defaults of the step options shared by every step-level decoder.
STEP_DEFAULTS: dict[str, Any] = {
    "step_delimiter": None,
    "tokens_per_step": None,
    "max_steps": None,
    "stop_pattern": None,
}


@dataclass
class ParticleSetup:
    """Everything a particle decoder needs, built by [`prepare`]."""

    generation_config: GenerationConfig
    options: ParticleOptions
    step_config: StepConfig
    runner: StepRunner
    reward: RewardModel | None
    prompts: PrefilledPrompts
    prompt_texts: list[str]
    prompt_tokens: list[int]
    tokenizer: Any
    generator: torch.Generator | None
    meter: CostMeter
    pad_token_id: int
    answer_extractor: Any
    proposal: RowProposal | None = None

    def new_batch(self, num_particles: int, copies: int = 1, reuse: bool = True) -> ParticleBatch:
        """B·copies groups of `num_particles` fanned out of the single prefill."""
        batch = ParticleBatch.from_prefilled(self.prompts, num_particles * copies, self.pad_token_id, copy=reuse)
        if copies > 1:
            batch.split_groups(copies)
        return batch

    def new_session(self, batch: ParticleBatch) -> RewardSession | None:
        """A reward session over the batch's slots (`None` without a reward model)."""
        if self.reward is None:
            return None
        n = batch.num_particles
        per_group = batch.num_groups // len(self.prompt_texts)
        texts = [self.prompt_texts[g // per_group] for g in range(batch.num_groups) for _ in range(n)]
        tokens = [self.prompt_tokens[g // per_group] for g in range(batch.num_groups) for _ in range(n)]
        return self.reward.open_session(
            texts, prompt_tokens=tokens, on_error=self.options.on_reward_error, num_particles=n
        )

    def output(
        self,
        result: SweepResult,
        selected: torch.Tensor,
        session: RewardSession | None,
        forward_passes: int,
        generated_tokens: int | None = None,
    ) -> torch.LongTensor | DecodingOutput:
        """The selected particle of each group as `generate`'s output ([`assemble_output`]); with a proposal,
        its recorded per-token values of the returned particles too (`out.<proposal.output_field>`)."""
        out = assemble_output(
            result=result,
            selected=selected,
            generation_config=self.generation_config,
            meter=self.meter,
            session=session,
            forward_passes=forward_passes,
            generated_tokens=result.generated_tokens if generated_tokens is None else generated_tokens,
        )
        if self.proposal is not None and isinstance(out, DecodingOutput):
            batch = result.batch
            width = out.sequences.shape[1] - batch.prompt_len
            rows: dict[str, list[torch.Tensor]] = {}
            for b in range(batch.num_groups):
                values = batch.slot_values(b * batch.num_particles + int(selected[b]))
                for key, value in values.items():
                    row = torch.full((width,), float("nan"), device=out.sequences.device)
                    row[: value.numel()] = value[:width].to(row.device)
                    rows.setdefault(key, []).append(row)
            setattr(
                out, self.proposal.output_field, self.proposal.make_trace({k: torch.stack(v) for k, v in rows.items()})
            )
        return out

    def answers(self, result: SweepResult) -> list[list[str | None]]:
        """Extracted answer of every particle, `(B, N)` nested lists."""
        texts = slot_texts(result, self.tokenizer)
        n = result.batch.num_particles
        if self.answer_extractor is None:
            raise InvalidDecodingArgument("An answer extractor is needed for voting; pass `answer_extractor=`.")
        flat = [self.answer_extractor(t) for t in texts]
        return [flat[b * n : (b + 1) * n] for b in range(result.batch.num_groups)]


def slot_texts(result: SweepResult, tokenizer: Any) -> list[str]:
    """The completion text of every slot (decoded from its tokens)."""
    batch = result.batch
    if tokenizer is None:
        raise InvalidDecodingArgument(
            "Answer voting reads the particles' text: pass `tokenizer=tokenizer` to `generate`."
        )
    return tokenizer.batch_decode(
        [batch.slot_tokens(s).tolist() for s in range(batch.num_slots)], skip_special_tokens=True
    )


def step_config_from(resolved: dict[str, Any], max_new_tokens: int) -> StepConfig:
    """A [`StepConfig`] from resolved option values."""
    return StepConfig(
        step_delimiter=resolved["step_delimiter"],
        tokens_per_step=resolved["tokens_per_step"],
        max_steps=resolved["max_steps"],
        stop_pattern=resolved["stop_pattern"],
        max_new_tokens=max_new_tokens,
    )


def _max_new_tokens(generation_config: GenerationConfig, prompt_len: int) -> int:
    if generation_config.max_new_tokens is not None:
        return int(generation_config.max_new_tokens)
    return max(1, int(generation_config.max_length) - prompt_len)


def prepare(
    call: DecoderCall,
    *,
    method: str,
    defaults: dict[str, Any],
    require_reward: bool = True,
    fixed: dict[str, Any] | None = None,
) -> tuple[ParticleSetup, dict[str, Any]]:
    """Resolves and validates options, checks the inputs, prefills the prompts once.

    Args:
        call ([`DecoderCall`]): the decoder's inputs, arguments (see [`~hf_decoding.smc.arguments`]) and model
            kwargs.
        method (`str`): the decoder's name, for messages.
        defaults (`dict`): the decoder's option defaults (the shared step options are added).
        require_reward (`bool`): a reward model must be given.
        fixed (`dict`, *optional*): option values the method sets itself (they override the call).

    Returns `(setup, resolved)` where `resolved` also holds the method's own options.
    """
    model, input_ids, generation_config = call.model, call.input_ids, call.generation_config
    logits_processor, stopping_criteria, model_kwargs = call.logits_processor, call.stopping_criteria, call.model_kwargs
    values = {name: call[name] for name in (*STEP_DEFAULTS, *defaults)}
    values.update(fixed or {})
    preset = call["preset"]
    reward_model, tokenizer = call["reward_model"], call["tokenizer"]
    seed, generator = call["seed"], call["generator"]
    reward_prompts, answer_extractor = call["reward_prompts"], call["answer_extractor"]
    meter = CostMeter(input_ids.device)
    resolved = resolve_options(generation_config, preset, values, {**STEP_DEFAULTS, **defaults})
    # Unset delimiter: "\n\n", unless fixed-size steps were asked for. "" / False: no delimiter.
    if resolved["step_delimiter"] is None:
        resolved["step_delimiter"] = None if resolved["tokens_per_step"] is not None else "\n\n"
    elif resolved["step_delimiter"] in ("", False):
        resolved["step_delimiter"] = None
    options = particle_options(resolved)
    step_config = step_config_from(resolved, _max_new_tokens(generation_config, input_ids.shape[1]))
    reward_model = option(generation_config, "reward_model", reward_model, None)
    reward = None
    if reward_model is not None or require_reward:
        reward = as_reward_model(reward_model)
    if reward is not None and reward.requires_text and tokenizer is None:
        raise InvalidDecodingArgument(
            f"The reward model {reward!r} scores text, so `{method}` needs the tokenizer. Fix: pass "
            "`tokenizer=tokenizer` to `generate` (after `hf_decoding.enable(model)` it is forwarded to the decoder; "
            f"with `custom_generate=` bind it: `functools.partial(hf_decoding.decoders.{method}, tokenizer=tok)`)."
        )
    if options.selection == "weighted_vote" and tokenizer is None:
        raise InvalidDecodingArgument(
            "`selection='weighted_vote'` extracts answers from the particles' text: pass `tokenizer=tokenizer`."
        )
    if not generation_config.do_sample:
        warn(
            f"`{method}` samples its particles; do_sample=False only means transformers built no temperature / "
            "top-k / top-p warpers, so particles are drawn from the model's untempered distribution. Pass "
            "do_sample=True (with e.g. temperature=0.8) to set the proposal.",
        )
    generator = make_generator(option(generation_config, "seed", seed, None), generator, input_ids.device)
    pad = pad_token_tensor(generation_config)
    if pad is None:
        eos = eos_token_tensor(generation_config)
        pad = eos[0] if eos is not None else torch.tensor(0)
    pad_token_id = int(pad.reshape(-1)[0]) if isinstance(pad, torch.Tensor) else int(pad)
    if reward_prompts is not None:
        if isinstance(reward_prompts, str):
            reward_prompts = [reward_prompts]
        if len(reward_prompts) != input_ids.shape[0]:
            raise invalid_argument(
                "reward_prompts", f"{len(reward_prompts)} prompts", f"one text per prompt ({input_ids.shape[0]})"
            )
        prompt_texts = list(reward_prompts)
    elif tokenizer is not None:
        prompt_texts = tokenizer.batch_decode(input_ids, skip_special_tokens=True)
    else:
        prompt_texts = [""] * input_ids.shape[0]
    mask = model_kwargs.get("attention_mask")
    prompt_tokens = (
        mask.sum(-1) if mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1])
    ).tolist()
    proposal = build_proposal(call, logits_processor)
    runner = StepRunner(
        model,
        logits_processor,
        stopping_criteria,
        generation_config,
        step_config,
        tokenizer=tokenizer,
        generator=generator,
        record_token_stats=bool(getattr(reward, "needs_token_stats", False)),
        proposal=proposal,
    )
    with meter.phase("prefill"):
        prompts = PrefilledPrompts.prefill(model, input_ids, generation_config, model_kwargs, proposal=proposal)
    extractor = answer_extractor if answer_extractor is not None else extract_answer
    setup = ParticleSetup(
        generation_config=generation_config,
        options=options,
        step_config=step_config,
        runner=runner,
        reward=reward,
        prompts=prompts,
        prompt_texts=prompt_texts,
        prompt_tokens=[int(t) for t in prompt_tokens],
        tokenizer=tokenizer,
        generator=generator,
        meter=meter,
        pad_token_id=pad_token_id,
        answer_extractor=extractor,
        proposal=proposal,
    )
    return setup, resolved


def select_final(setup: ParticleSetup, result: SweepResult, method: str) -> torch.LongTensor:
    """The returned particle of each group with `method` (`argmax | sample | weighted_vote`)."""
    with setup.meter.phase("selection"):
        answers = setup.answers(result) if method == "weighted_vote" else None
        return select_particles(method, result.log_weights, result.scores, answers, setup.generator)


def run_sweep(
    setup: ParticleSetup,
    policy: Any,
    num_particles: int,
    *,
    copies: int = 1,
    references: list[Any] | None = None,
    temperatures: torch.Tensor | None = None,
    keep_steps: bool = False,
    progress: bool = False,
    reuse_prefill: bool = False,
) -> tuple[SweepResult, RewardSession | None, int]:
    """Builds a batch (B·copies groups of `num_particles`) and a session, runs one sweep.

    Returns `(result, session, forward_passes)`.
    """
    batch = setup.new_batch(num_particles, copies=copies, reuse=reuse_prefill)
    session = setup.new_session(batch)
    sweep = ParticleSweep(
        batch,
        setup.runner,
        session,
        setup.options,
        policy,
        setup.meter,
        temperatures=temperatures,
        keep_steps=keep_steps,
        progress=progress,
    )
    result = sweep.run(references)
    return result, session, batch.forward_passes


def positive_int_option(call: DecoderCall, name: str, default: int) -> int:
    """A decoder's own positive-integer option: the call's value, else `generation_config.<name>`, else `default`."""
    value = option(call.generation_config, name, call[name], default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_argument(name, value, "a positive integer")
    return value


def conditional_sweeps(
    setup: ParticleSetup,
    call: DecoderCall,
    iterations: int,
    chains: int,
    next_references: Callable[[SweepResult], list[Any]],
    temperatures: torch.Tensor | None = None,
) -> tuple[SweepResult, RewardSession | None, int, int]:
    """`iterations` (conditional) SMC sweeps over `chains` groups per prompt (particle Gibbs, parallel tempering).

    The first sweep is a plain particle filter; each later one keeps the references that `next_references` drew
    from the previous result. Returns `(last result, session, forward passes, generated tokens)`, the session's
    reward calls and tokens summed over all sweeps.
    """
    options = setup.options
    policy = ResamplingPolicy(options.resampling, options.ess_threshold, setup.generator)
    references = None
    forward_passes, generated, calls, tokens = 1, 0, 0, 0
    for _ in range(iterations):
        result, session, passes = run_sweep(
            setup,
            policy,
            options.num_particles,
            copies=chains,
            references=references,
            temperatures=temperatures,
            keep_steps=True,
            progress=bool(call["progress"]),
            reuse_prefill=True,
        )
        forward_passes += passes
        generated += result.generated_tokens
        calls += session.calls
        tokens += session.tokens
        references = next_references(result)
    session.calls, session.tokens = calls, tokens
    return result, session, forward_passes, generated


def merge_groups(result: SweepResult, copies: int) -> SweepResult:
    """Views B·copies groups of N as B groups of copies·N (the inverse of `ParticleBatch.split_groups`)."""
    if copies == 1:
        return result
    batch = result.batch
    b = batch.num_groups // copies
    n = batch.num_particles * copies
    batch.num_groups, batch.num_particles = b, n
    batch.prompt_ids = batch.prompt_ids[::copies]
    steps = result.ess.shape[-1]
    result.log_weights = result.log_weights.reshape(b, n)
    result.scores = result.scores.reshape(b, n)
    result.ess = result.ess.reshape(b, copies, steps).sum(1)
    result.ancestors = (
        (
            result.ancestors.reshape(b, copies, steps, -1)
            + (torch.arange(copies, device=result.ancestors.device) * (n // copies))[None, :, None, None]
        )
        .permute(0, 2, 1, 3)
        .reshape(b, steps, n)
    )
    result.log_normalizer = result.log_normalizer.reshape(b, copies).logsumexp(-1) - float(
        torch.log(torch.tensor(copies))
    )
    return result


def independent_samples(
    call: DecoderCall,
    *,
    method: str,
    require_reward: bool,
) -> tuple[ParticleSetup, SweepResult, RewardSession | None, int]:
    """N independent completions per prompt from one prefill, each scored once when it finishes (best-of-N,
    weighted best-of-N, self-consistency). Returns `(setup, result, session, forward_passes)`."""
    defaults = {**INDEPENDENT_DEFAULTS, **INDEPENDENT_FIXED}
    setup, _ = prepare(call, method=method, defaults=defaults, require_reward=require_reward, fixed=INDEPENDENT_FIXED)
    result, session, passes = run_sweep(setup, NoResampling(), setup.options.num_particles)
    return setup, result, session, 1 + passes
