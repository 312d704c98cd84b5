"""The particle methods driven through a vLLM engine: `particle_filter`, `best_of_n`, `weighted_best_of_n` and
`self_consistency`, with the HF decoders' arguments, defaults, rewards and output fields.

The HF path keeps B·N particles as rows of one batched KV cache. Here every live particle is one vLLM request per
step that continues its own prefix: `TokensPrompt(prompt ids + the particle's tokens so far)` with
`SamplingParams(stop=[delimiter], include_stop_str_in_output=True, max_tokens=..., seed=...)`. Token ids are carried
from step to step (no text round trip, so a particle's tokens are exactly what it sampled), and vLLM's prefix cache
serves the part of each prompt it has seen, so a step costs only its new tokens (`out.prefix_cache` reports the hit
rate vLLM measured per request, `RequestOutput.num_cached_tokens`).

What is shared with the HF path (imported, not copied): option resolution and validation
([`~hf_decoding.smc.options`], the `"paper"` preset), the step options ([`~hf_decoding.smc.decoding.step_config_from`]),
the reward adapters and their sessions ([`~hf_decoding.rewards.RewardSession`]: callables, the arithmetic verifier,
PRMs with their own KV cache), score aggregation and weight transforms ([`~hf_decoding.smc.potentials`]), log-space
weights and the evidence estimate ([`~hf_decoding.smc.weights`]), the resampling policy and schemes
([`~hf_decoding.smc.ResamplingPolicy`]), final selection and votes ([`~hf_decoding.smc.selection`]), phase timing
([`~hf_decoding.smc.CostMeter`]) and the output records ([`~hf_decoding.ParticleTrace`], [`~hf_decoding.DecodingCost`]).
What is rewritten for token lists instead of cache rows: the step loop (vLLM generates) and the incremental-weight
bookkeeping of `ParticleSweep._increments` (private to the HF sweep; same rules).

Differences from the HF path, by construction:

- randomness: vLLM samples with per-request seeds drawn from the run's `torch.Generator` (`seed=`); the same seed
  reproduces a run on the same engine and batch shape, but does not reproduce the HF path's tokens;
- a step ends at the first occurrence of a delimiter in vLLM's detokenized output (`stop=`), the HF path matches it
  on token ids: the same boundaries, merged tokens included (the whole token is kept); a step whose text before the
  delimiter is blank continues, as in the HF path;
- `generator=`, `autodeco_heads=` / `autodeco_proposal=` (serve an AutoDeco checkpoint with `export_for_vllm`
  instead) and rewards that read the policy's token statistics (`SelfCertainty`) are not supported and raise
  [`~hf_decoding.errors.InvalidDecodingArgument`];
- `cost.forward_passes` counts engine calls (`LLM.generate` rounds): vLLM schedules its own forward passes.

On CPU (vLLM 0.32) start the engine with `block_size=32` (the CPU default of 128 tokens never hits the prefix cache
on short prefixes) and, for seeded runs with many particles, `enable_chunked_prefill=False` (a seeded request whose
prefill is chunked crashes the CPU runner: "CPU Generator does not use offset").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from ..decoders.particle_filter import PARTICLE_FILTER_DEFAULTS
from ..errors import InvalidDecodingArgument, invalid_argument, warn
from ..generation.loop import make_generator
from ..generation.outputs import DecodingCost, ParticleTrace
from ..rewards.base import RewardModel, RewardSession, as_reward_model
from ..smc.arguments import (
    INDEPENDENT_ARGUMENTS,
    INDEPENDENT_DEFAULTS,
    INDEPENDENT_FIXED,
    SELF_CONSISTENCY_ARGUMENTS,
    SWEEP_ARGUMENTS,
)
from ..smc.cost import CostMeter
from ..smc.decoding import STEP_DEFAULTS, step_config_from
from ..smc.options import ParticleOptions, particle_options, resolve_options
from ..smc.potentials import aggregate_scores, log_potentials
from ..smc.selection import extract_answer, majority_vote, select_particles, weighted_vote
from ..smc.steps import StepConfig
from ..smc.sweep import NoResampling, ResamplingPolicy
from ..smc.weights import add_log_increments, ess, log_evidence, reset_after_resampling

__all__ = ["METHODS", "PrefixCacheStats", "VllmDecodingOutput", "generate"]

#: Sampling arguments of the vLLM path (the HF path takes them from the generation config).
SAMPLING_ARGUMENTS: dict[str, Any] = {
    "max_new_tokens": 256,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "sampling_params": None,
}

#: Arguments of the HF decoders that the vLLM path does not take, with the reason.
UNSUPPORTED: dict[str, str] = {
    "generator": "vLLM draws from per-request seeds; pass `seed=` instead",
    "autodeco_heads": "serve an AutoDeco checkpoint instead (`hf_decoding.vllm.export_for_vllm`, `LLM(model=out_dir)`)",
    "autodeco_proposal": "serve an AutoDeco checkpoint instead (`hf_decoding.vllm.export_for_vllm`)",
}


@dataclass(frozen=True)
class _Method:
    arguments: tuple[str, ...]
    defaults: dict[str, Any]
    fixed: dict[str, Any] = field(default_factory=dict)
    require_reward: bool = True
    resamples: bool = False


#: The methods `generate` runs, with the HF decoder's argument names and defaults.
METHODS: dict[str, _Method] = {
    "particle_filter": _Method(SWEEP_ARGUMENTS, PARTICLE_FILTER_DEFAULTS, resamples=True),
    "best_of_n": _Method(INDEPENDENT_ARGUMENTS, INDEPENDENT_DEFAULTS, INDEPENDENT_FIXED),
    "weighted_best_of_n": _Method(INDEPENDENT_ARGUMENTS, INDEPENDENT_DEFAULTS, INDEPENDENT_FIXED),
    "self_consistency": _Method(
        SELF_CONSISTENCY_ARGUMENTS, {"num_particles": 8}, INDEPENDENT_FIXED, require_reward=False
    ),
}


@dataclass
class PrefixCacheStats:
    """Prompt tokens of the engine calls and how many of them vLLM served from its prefix cache.

    Args:
        prompt_tokens (`int`): prompt tokens over every request (the prompt plus the particle's tokens so far).
        cached_tokens (`int`): of those, the tokens vLLM reported as prefix-cache hits (`num_cached_tokens`).
        requests (`int`): requests sent.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        """`cached_tokens / prompt_tokens` (NaN before any request)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else math.nan


@dataclass
class VllmDecodingOutput:
    """What [`generate`] returns: the HF path's `DecodingOutput` fields plus texts and the prefix-cache record.

    Args:
        sequences (`torch.LongTensor` of shape `(B, P + L)`): the returned particle of each prompt, prompt left-padded
            and completion right-padded with the pad token (as the HF path returns them).
        texts (`list[str]`): the returned completion of each prompt (special tokens skipped).
        particles ([`ParticleTrace`]): every particle: `sequences (B, N, P + L)`, final `log_weights`, `ess` before
            each resampling check, `ancestors (B, steps, N)`, `selected`, `log_normalizer`.
        cost ([`DecodingCost`]): `generated_tokens`, `reward_calls`, `reward_tokens`, `seconds` by phase;
            `forward_passes` counts engine calls.
        resampled (`torch.BoolTensor` of shape `(B, steps)`): the resampling events (which group resampled after
            which step).
        particle_texts (`list[list[str]]`): every particle's completion text.
        scores (`torch.FloatTensor` of shape `(B, N)`): every particle's final aggregated reward (`-inf`: none).
        answers (`list[str | None]`, *optional*): the winning answer of each prompt (the voting methods).
        prefix_cache ([`PrefixCacheStats`]): prompt tokens sent and served from vLLM's prefix cache.
    """

    sequences: torch.LongTensor
    texts: list[str]
    particles: ParticleTrace
    cost: DecodingCost
    resampled: torch.Tensor
    particle_texts: list[list[str]]
    scores: torch.Tensor
    answers: list[str | None] | None = None
    prefix_cache: PrefixCacheStats = field(default_factory=PrefixCacheStats)


def generate(
    llm: Any, prompts: str | Sequence[str] | Sequence[Sequence[int]], decoding: str = "particle_filter", **kwargs: Any
) -> VllmDecodingOutput:
    """Runs a particle method on a vLLM engine.

    Args:
        llm (`vllm.LLM`): the engine (prefix caching on, vLLM's default; a warning-free start also needs no more).
        prompts (`str`, `list[str]` or `list[list[int]]`): the prompts, as text (tokenized as vLLM tokenizes a
            text prompt) or token ids. Apply a chat template first if the model needs one.
        decoding (`str`, defaults to `"particle_filter"`): one of `particle_filter`, `best_of_n`,
            `weighted_best_of_n`, `self_consistency`.
        **kwargs: the HF decoder's arguments, with its defaults (`num_particles`, `reward_model`, `step_delimiter`,
            `tokens_per_step`, `max_steps`, `stop_pattern`, `score_mode`, `weight_transform`,
            `softmax_temperature`, `weight_update`, `resampling`, `ess_threshold`, `finished_particles`,
            `selection`, `answer_extractor`, `on_reward_error`, `preset`, `reward_prompts`, `seed`, `tokenizer`,
            `progress`, as each method takes them), and the sampling arguments the HF path reads from the
            generation config: `max_new_tokens` (256), `temperature` (1.0), `top_p` (1.0), `top_k` (0: off) and
            `sampling_params` (a dict of further `vllm.SamplingParams` keywords, e.g. `extra_args` for the
            distortion-aware nucleus, `repetition_penalty`).

    Returns:
        [`VllmDecodingOutput`].

    Raises:
        [`~hf_decoding.errors.InvalidDecodingArgument`]: an unknown method, an argument the method does not take or
            the vLLM path does not support (named in the message), or an invalid value.
    """
    if decoding not in METHODS:
        raise InvalidDecodingArgument(
            f"`decoding={decoding!r}` is not driven through vLLM; use one of {sorted(METHODS)} (the other methods run "
            "on the transformers path: `model.generate(decoding=...)`)."
        )
    method = METHODS[decoding]
    _check_arguments(decoding, method, kwargs)
    call = {name: kwargs.get(name) for name in (*method.arguments, *SAMPLING_ARGUMENTS)}
    for name, default in SAMPLING_ARGUMENTS.items():
        if call[name] is None:
            call[name] = default
    meter = CostMeter()
    runner = _Runner(llm, prompts, decoding, method, call, meter)
    return runner.run()


def _check_arguments(decoding: str, method: _Method, kwargs: dict[str, Any]) -> None:
    unsupported = sorted(name for name in kwargs if name in UNSUPPORTED and kwargs[name] is not None)
    if unsupported:
        reasons = "; ".join(f"`{name}`: {UNSUPPORTED[name]}" for name in unsupported)
        raise InvalidDecodingArgument(f"The vLLM path of `{decoding}` does not support {unsupported}: {reasons}.")
    known = set(method.arguments) | set(SAMPLING_ARGUMENTS)
    unknown = sorted(name for name in kwargs if name not in known)
    if unknown:
        raise InvalidDecodingArgument(
            f"`{decoding}` takes no argument(s) {unknown} on the vLLM path. It takes: "
            + ", ".join(sorted(known - set(UNSUPPORTED)))
            + "."
        )


def _step_delimiter(resolved: dict[str, Any]) -> None:
    # As the HF path's `prepare`: unset -> "\n\n" unless fixed-size steps were asked for; "" / False -> none.
    if resolved["step_delimiter"] is None:
        resolved["step_delimiter"] = None if resolved["tokens_per_step"] is not None else "\n\n"
    elif resolved["step_delimiter"] in ("", False):
        resolved["step_delimiter"] = None


@dataclass
class _Particle:
    """One slot: its tokens so far, step texts, and whether it finished."""

    tokens: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    finished: bool = False

    def copy(self) -> _Particle:
        return _Particle(list(self.tokens), list(self.steps), self.finished)


class _Runner:
    """One `generate` call: resolved options, the prompts' token ids, the reward session, the sweep."""

    def __init__(self, llm: Any, prompts: Any, decoding: str, method: _Method, call: dict[str, Any], meter: CostMeter):
        self.llm, self.decoding, self.method, self.call, self.meter = llm, decoding, method, call, meter
        self.tokenizer = call["tokenizer"] if call["tokenizer"] is not None else llm.get_tokenizer()
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise invalid_argument("prompts", prompts, "a non-empty list of prompts")
        if all(isinstance(p, str) for p in prompts):
            self.prompt_ids = [list(self.tokenizer.encode(p)) for p in prompts]
            default_reward_prompts = list(prompts)
        elif all(isinstance(p, Sequence) and all(isinstance(t, int) for t in p) for p in prompts):
            self.prompt_ids = [list(p) for p in prompts]
            default_reward_prompts = self.tokenizer.batch_decode(self.prompt_ids, skip_special_tokens=True)
        else:
            raise invalid_argument("prompts", type(prompts[0]).__name__, "texts (`str`) or token-id lists")
        reward_prompts = call.get("reward_prompts")
        if reward_prompts is not None:
            if isinstance(reward_prompts, str):
                reward_prompts = [reward_prompts]
            if len(reward_prompts) != len(prompts):
                raise invalid_argument(
                    "reward_prompts", f"{len(reward_prompts)} prompts", f"one text per prompt ({len(prompts)})"
                )
            default_reward_prompts = list(reward_prompts)
        self.reward_prompts = default_reward_prompts

        values = {name: call.get(name) for name in (*STEP_DEFAULTS, *method.defaults)}
        values.update(method.fixed)
        defaults = {**STEP_DEFAULTS, **method.defaults, **method.fixed}
        resolved = resolve_options(SimpleNamespace(), call.get("preset"), values, defaults)
        _step_delimiter(resolved)
        self.options: ParticleOptions = particle_options(resolved)
        max_new = call["max_new_tokens"]
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise invalid_argument("max_new_tokens", max_new, "a positive integer")
        self.step_config: StepConfig = step_config_from(resolved, max_new)
        self.stop = re.compile(self.step_config.stop_pattern) if self.step_config.stop_pattern else None

        reward_model = call.get("reward_model")
        self.reward: RewardModel | None = None
        if reward_model is not None or method.require_reward:
            self.reward = as_reward_model(reward_model)
        if self.reward is not None and getattr(self.reward, "needs_token_stats", False):
            raise InvalidDecodingArgument(
                f"The reward model {self.reward!r} reads the policy's per-token distribution, which vLLM does not "
                "return: use a text reward (a callable, `ArithmeticStepVerifier`, a PRM) or the transformers path."
            )
        self.generator = make_generator(call.get("seed"), None, torch.device("cpu"))
        self.answer_extractor: Callable[[str], str | None] = call.get("answer_extractor") or extract_answer
        self.sampling = _sampling_kwargs(call)
        self.pad_token_id = _pad_token_id(self.tokenizer)
        self.cache = PrefixCacheStats()
        self.engine_calls = 0
        self.generated = 0
        self._warn_if_no_prefix_cache()

    # ------------------------------------------------------------------------------------------------ engine
    def _warn_if_no_prefix_cache(self) -> None:
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        cache = getattr(config, "cache_config", None)
        if cache is not None and getattr(cache, "enable_prefix_caching", True) is False:
            warn(
                "The engine runs with prefix caching off: every step re-reads each particle's whole prefix. Start "
                "it with `LLM(..., enable_prefix_caching=True)`.",
            )

    def _seed(self) -> int | None:
        if self.generator is None:
            return None
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))

    def _expand(self, requests: list[tuple[int, list[int], int]]) -> list[Any]:
        """One engine call: `(group, particle tokens, max_tokens)` per request; returns the `CompletionOutput`s."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        delimiters = list(self.step_config.step_delimiter or ())
        prompts, params = [], []
        for group, tokens, max_tokens in requests:
            prompts.append(TokensPrompt(prompt_token_ids=self.prompt_ids[group] + tokens))
            params.append(
                SamplingParams(
                    n=1,
                    max_tokens=max_tokens,
                    seed=self._seed(),
                    stop=delimiters or None,
                    include_stop_str_in_output=True,
                    **self.sampling,
                )
            )
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except RuntimeError as err:
            if "does not use offset" not in str(err):
                raise
            raise RuntimeError(
                "vLLM's CPU runner cannot resume a seeded request whose prefill was split across engine steps "
                f"({err}). Fix: start the engine with `LLM(..., enable_chunked_prefill=False)` (or pass no seed)."
            ) from err
        self.engine_calls += 1
        for prompt, out in zip(prompts, outputs, strict=True):
            self.cache.requests += 1
            self.cache.prompt_tokens += len(prompt["prompt_token_ids"])
            self.cache.cached_tokens += int(getattr(out, "num_cached_tokens", 0) or 0)
        return [out.outputs[0] for out in outputs]

    def _run_step(self, particles: list[_Particle], slots: list[int], step_index: int) -> tuple[list[str], list[int]]:
        """Generates one step for each of `slots`; marks finished particles. Returns each slot's step text and
        token count."""
        config, n = self.step_config, self.options.num_particles
        new_tokens: dict[int, list[int]] = {s: [] for s in slots}
        pending = list(slots)
        while pending:
            requests = []
            for s in pending:
                p = particles[s]
                budget = config.max_new_tokens - len(p.tokens) - len(new_tokens[s])
                if config.tokens_per_step is not None:
                    budget = min(budget, config.tokens_per_step - len(new_tokens[s]))
                requests.append((s // n, p.tokens + new_tokens[s], budget))
            outputs = self._expand(requests)
            again = []
            for s, out in zip(pending, outputs, strict=True):
                produced = list(out.token_ids)
                new_tokens[s].extend(produced)
                total = len(particles[s].tokens) + len(new_tokens[s])
                by_delimiter = out.finish_reason == "stop" and isinstance(out.stop_reason, str)
                eos = out.finish_reason == "stop" and not by_delimiter  # EOS or a stop token
                if eos or total >= config.max_new_tokens:
                    particles[s].finished = True
                elif by_delimiter and not self.tokenizer.decode(new_tokens[s], skip_special_tokens=True).strip():
                    again.append(s)  # a blank step before the delimiter: the step goes on (as on the HF path)
            pending = again
        texts, lengths = [], []
        for s in slots:
            p = particles[s]
            text = self.tokenizer.decode(new_tokens[s], skip_special_tokens=True)
            p.tokens.extend(new_tokens[s])
            p.steps.append(text)
            if config.max_steps is not None and step_index + 1 >= config.max_steps:
                p.finished = True
            if self.stop is not None and self.stop.search(text):
                p.finished = True
            texts.append(text)
            lengths.append(len(new_tokens[s]))
        self.generated += sum(lengths)
        return texts, lengths

    # ------------------------------------------------------------------------------------------------ the sweep
    def run(self) -> VllmDecodingOutput:
        opts, n, groups = self.options, self.options.num_particles, len(self.prompt_ids)
        num_slots = groups * n
        particles = [_Particle() for _ in range(num_slots)]
        session = self._session(num_slots)
        policy = (
            ResamplingPolicy(opts.resampling, opts.ess_threshold, self.generator)
            if self.method.resamples
            else NoResampling()
        )
        log_weights = torch.zeros(groups, n, dtype=torch.float64)
        history: list[list[float]] = [[] for _ in range(num_slots)]
        no_reference = torch.zeros(groups, dtype=torch.bool)
        ess_history, ancestor_history, resampled_history = [], [], []
        progress = _progress(bool(self.call.get("progress")))
        step = 0
        while any(not p.finished for p in particles):
            slots = [s for s, p in enumerate(particles) if not p.finished]
            with self.meter.phase("generation"):
                texts, lengths = self._run_step(particles, slots, step)
            new_scores: dict[int, float] = {}
            if session is not None:
                session.extend(slots, texts, lengths)
                with self.meter.phase("reward"):
                    raw = session.score(slots, opts.score_mode, step)
                for slot, values in zip(slots, raw, strict=True):
                    new_scores[slot] = aggregate_scores(values, opts.score_mode)
            with self.meter.phase("resampling"):
                if session is not None:
                    increments = self._increments(slots, new_scores, history)
                    log_weights = add_log_increments(log_weights, increments)
                ess_history.append(ess(log_weights))
                live = torch.tensor([not p.finished for p in particles]).view(groups, n)
                scores_now = _current_scores(history, groups, n)
                ancestors, resampled = None, torch.zeros(groups, dtype=torch.bool)
                if bool(live.any()):
                    ancestors, resampled = policy.choose(log_weights, live, scores_now, no_reference)
                if ancestors is not None:
                    if policy.reset_weights:
                        log_weights = reset_after_resampling(log_weights, resampled)
                    src = (torch.arange(groups)[:, None] * n + ancestors).reshape(-1).tolist()
                    particles = [particles[s].copy() for s in src]
                    history = [list(history[s]) for s in src]
                    if session is not None:
                        session.reorder(src)
                else:
                    ancestors = torch.arange(n).expand(groups, n)
                ancestor_history.append(ancestors.clone())
                resampled_history.append(resampled)
            step += 1
            progress.update(1)
        progress.close()
        scores = _current_scores(history, groups, n)
        return self._output(particles, log_weights, scores, ess_history, ancestor_history, resampled_history, session)

    def _session(self, num_slots: int) -> RewardSession | None:
        if self.reward is None:
            return None
        n = self.options.num_particles
        texts = [self.reward_prompts[s // n] for s in range(num_slots)]
        tokens = [len(self.prompt_ids[s // n]) for s in range(num_slots)]
        return self.reward.open_session(
            texts, prompt_tokens=tokens, on_error=self.options.on_reward_error, num_particles=n
        )

    def _g(self, values: list[float]) -> torch.Tensor:
        scores = torch.tensor(values, dtype=torch.float64)
        return log_potentials(scores, self.options.weight_transform, float(self.options.softmax_temperature))

    def _increments(self, stepped: list[int], new_scores: dict[int, float], history: list[list[float]]) -> torch.Tensor:
        """Incremental log-weights `(B, N)` of this step (the rules of the HF sweep); appends the new scores to
        `history`."""
        opts, n = self.options, self.options.num_particles
        num_slots = len(history)
        increments = torch.zeros(num_slots, dtype=torch.float64)
        stepped_set = set(stepped)
        slots, now, prev, idle, idle_last = [], [], [], [], []
        for slot in range(num_slots):
            if slot in stepped_set:
                if slot not in new_scores:
                    continue
                slots.append(slot)
                now.append(new_scores[slot])
                prev.append(history[slot][-1] if history[slot] else math.nan)
                history[slot].append(new_scores[slot])
            elif opts.finished_particles == "reference" and opts.weight_update == "potential" and history[slot]:
                idle.append(slot)
                idle_last.append(history[slot][-1])
        if slots:
            g_now = self._g(now)
            if opts.weight_update == "twisted":
                g_prev = self._g(prev)
                g_prev = torch.where(torch.isnan(g_prev), torch.zeros_like(g_prev), g_prev)
                inc = torch.where(torch.isneginf(g_prev), torch.full_like(g_now, -math.inf), g_now - g_prev)
            else:
                inc = g_now
            increments[slots] = inc
        if idle:
            increments[idle] = self._g(idle_last)
        return increments.view(num_slots // n, n)

    # ------------------------------------------------------------------------------------------------ output
    def _select(
        self, log_weights: torch.Tensor, scores: torch.Tensor, texts: list[list[str]]
    ) -> tuple[torch.Tensor, list[str | None] | None]:
        decoding, opts = self.decoding, self.options
        if decoding == "particle_filter":
            answers = None
            if opts.selection == "weighted_vote":
                answers = [[self.answer_extractor(t) for t in group] for group in texts]
            selected = select_particles(opts.selection, log_weights, scores, answers, self.generator)
            winners = None
            if answers is not None:
                winners = [answers[b][int(i)] for b, i in enumerate(selected)]
            return selected, winners
        if decoding == "best_of_n":
            return select_particles("argmax", log_weights, scores), None
        answers = [[self.answer_extractor(t) for t in group] for group in texts]
        selected, winners = [], []
        for b, group in enumerate(answers):
            if decoding == "weighted_best_of_n":  # as `decoders.weighted_best_of_n`
                winner = weighted_vote(group, scores[b].clamp(min=0).tolist())
                members = [i for i, a in enumerate(group) if a == winner] or list(range(len(group)))
            else:  # self_consistency, as `decoders.self_consistency`
                winner = majority_vote(group)
                members = [i for i, a in enumerate(group) if a == winner] or [0]
            selected.append(max(members, key=lambda i: (scores[b, i].item(), -i)))
            winners.append(winner)
        return torch.tensor(selected, dtype=torch.long), winners

    def _output(
        self,
        particles: list[_Particle],
        log_weights: torch.Tensor,
        scores: torch.Tensor,
        ess_history: list[torch.Tensor],
        ancestor_history: list[torch.Tensor],
        resampled_history: list[torch.Tensor],
        session: RewardSession | None,
    ) -> VllmDecodingOutput:
        groups, n = log_weights.shape
        texts = [
            [self.tokenizer.decode(particles[b * n + i].tokens, skip_special_tokens=True) for i in range(n)]
            for b in range(groups)
        ]
        with self.meter.phase("selection"):
            selected, answers = self._select(log_weights, scores, texts)
            prompt_len = max(len(p) for p in self.prompt_ids)
            length = max(len(p.tokens) for p in particles)
            pad = self.pad_token_id
            sequences = torch.full((groups, n, prompt_len + length), pad, dtype=torch.long)
            for s, p in enumerate(particles):
                prompt = self.prompt_ids[s // n]
                row = sequences[s // n, s % n]
                row[prompt_len - len(prompt) : prompt_len] = torch.tensor(prompt, dtype=torch.long)
                if p.tokens:
                    row[prompt_len : prompt_len + len(p.tokens)] = torch.tensor(p.tokens, dtype=torch.long)
            chosen = sequences[torch.arange(groups), selected]
            width = max(len(particles[b * n + int(selected[b])].tokens) for b in range(groups))
            chosen = chosen[:, : prompt_len + width]
        cost = self.meter.result(
            forward_passes=self.engine_calls,
            generated_tokens=self.generated,
            reward_calls=session.calls if session is not None else 0,
            reward_tokens=session.tokens if session is not None else 0,
        )
        steps = len(ess_history)
        trace = ParticleTrace(
            sequences=sequences,
            log_weights=log_weights.float(),
            ess=torch.stack(ess_history, dim=-1).float() if steps else torch.zeros(groups, 0),
            ancestors=torch.stack(ancestor_history, dim=1) if steps else torch.zeros(groups, 0, n, dtype=torch.long),
            selected=selected,
            log_normalizer=log_evidence(log_weights).float(),
        )
        return VllmDecodingOutput(
            sequences=chosen,
            texts=[texts[b][int(selected[b])] for b in range(groups)],
            particles=trace,
            cost=cost,
            resampled=torch.stack(resampled_history, dim=-1) if steps else torch.zeros(groups, 0, dtype=torch.bool),
            particle_texts=texts,
            scores=scores.float(),
            answers=answers,
            prefix_cache=self.cache,
        )


def _current_scores(history: list[list[float]], groups: int, n: int) -> torch.Tensor:
    values = [h[-1] if h else -math.inf for h in history]
    return torch.tensor(values, dtype=torch.float64).view(groups, n)


def _sampling_kwargs(call: dict[str, Any]) -> dict[str, Any]:
    extra = dict(call["sampling_params"] or {})
    clash = sorted(set(extra) & {"n", "max_tokens", "seed", "stop", "include_stop_str_in_output"})
    if clash:
        raise invalid_argument(
            "sampling_params",
            clash,
            "free of the keys the particle loop sets itself",
            "Use max_new_tokens=, seed=, step_delimiter= instead.",
        )
    temperature = call["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise invalid_argument("temperature", temperature, "a number > 0 (the particles are sampled)")
    top_k = call["top_k"]
    return {
        "temperature": float(temperature),
        "top_p": float(call["top_p"]),
        "top_k": int(top_k or 0),
        "skip_special_tokens": True,
        **extra,
    }


def _pad_token_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


class _NoBar:
    def update(self, _: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="particle steps", unit="step", leave=False)
