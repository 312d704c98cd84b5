"""The state-space model over reasoning steps: where a step ends, when a particle finishes, and one batched step.

A **step** ends at a step delimiter (default `"\\n\\n"`) or after `tokens_per_step` tokens. Delimiters are found
on **token ids**, not on re-decoded text: every vocabulary entry's text is run once through a small automaton
(KMP) per delimiter, giving `(states, vocab)` lookup tables. A delimiter merged inside a token (`".\\n\\n"`,
`"\\n\\n\\n"`), or split over two tokens (`"\\n"` + `"\\n"`), is found by a table lookup per sampled token, on the
device, for every row at once. A delimiter only ends a step that already has some non-whitespace content, so a
step cannot be empty.

A **particle finishes** on EOS, on a `stop_pattern` (a regular expression searched in each completed step's
text, e.g. a closed `\\boxed{...}`), on a `generate` stopping criterion (e.g. `stop_strings`), after `max_steps`
steps, or at `max_new_tokens`.

[`StepRunner.run`] advances every live row of a [`~hf_decoding.smc.ParticleBatch`] by one step in lockstep: a row
that reached the end of its step waits with holes (masked pad tokens) until every row has, so that the next
resampling sees whole steps.
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from ..errors import InvalidDecodingArgument, invalid_argument, warn
from ..generation.cache import decode_forward, eos_token_tensor
from ..generation.loop import select_tokens
from ..generation.processing import ProcessorChain

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .proposal import RowProposal
    from .state import ParticleBatch

__all__ = [
    "StepBoundaryDetector",
    "StepConfig",
    "StepResult",
    "StepRunner",
    "token_texts",
]

BOXED_PATTERN = r"\\boxed\{(?:[^{}]|\{[^{}]*\})*\}"
"""A closed `\\boxed{...}` (one level of nested braces allowed)."""


# ------------------------------------------------------------------------------------------------------ configuration
@dataclass
class StepConfig:
    """How a reasoning step ends and when a particle finishes.

    Args:
        step_delimiter (`tuple[str, ...]` or `None`, defaults to `("\\n\\n",)`): strings that end a step, matched on
            token ids (needs the tokenizer's vocabulary). `None`: only `tokens_per_step` ends a step.
        tokens_per_step (`int`, *optional*): a step also ends after this many tokens (fixed chunks when
            `step_delimiter` is `None`; a cap on step length otherwise).
        max_steps (`int`, *optional*): a particle finishes after this many steps.
        stop_pattern (`str`, *optional*): regular expression; a particle whose completed step matches finishes.
        max_new_tokens (`int`): a particle finishes after this many generated tokens.
    """

    step_delimiter: tuple[str, ...] | None = ("\n\n",)
    tokens_per_step: int | None = None
    max_steps: int | None = None
    stop_pattern: str | None = None
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.step_delimiter, str):
            self.step_delimiter = (self.step_delimiter,)
        if self.step_delimiter is not None:
            self.step_delimiter = tuple(self.step_delimiter)
            if not self.step_delimiter or not all(isinstance(d, str) and d for d in self.step_delimiter):
                raise invalid_argument(
                    "step_delimiter",
                    self.step_delimiter,
                    "a non-empty string or list of non-empty strings",
                    "Use None with tokens_per_step=k for fixed-length steps.",
                )
        for name in ("tokens_per_step", "max_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise invalid_argument(name, value, "a positive integer or None")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise invalid_argument("max_new_tokens", self.max_new_tokens, "a positive integer")
        if self.stop_pattern is not None:
            try:
                re.compile(self.stop_pattern)
            except (re.error, TypeError) as err:
                raise invalid_argument(
                    "stop_pattern", self.stop_pattern, "a valid regular expression", str(err)
                ) from None

    @property
    def needs_text(self) -> bool:
        """Whether the step machinery itself needs the tokenizer."""
        return self.step_delimiter is not None or self.stop_pattern is not None


# ---------------------------------------------------------------------------------------------- delimiter detection
_TEXT_CACHE: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()
_DETECTOR_CACHE: dict[tuple[int, tuple[str, ...], int], StepBoundaryDetector] = {}


def token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> list[str]:
    """The decoded text of every token id (special tokens included), padded with `""` to `vocab_size`."""
    try:
        texts = _TEXT_CACHE.get(tokenizer)
    except TypeError:
        texts = None
    if texts is None:
        n = len(tokenizer)
        texts = tokenizer.batch_decode(
            [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        with contextlib.suppress(TypeError):
            _TEXT_CACHE[tokenizer] = texts
    if vocab_size is not None and vocab_size > len(texts):
        texts = texts + [""] * (vocab_size - len(texts))
    return texts


def _failure(pattern: str) -> list[int]:
    fail = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i + 1] = k
    return fail


class StepBoundaryDetector:
    r"""Finds step delimiters on token ids with per-delimiter automaton tables.

    For a delimiter of `m` characters the automaton state is the length of the longest delimiter prefix that
    ends the text so far (`0..m-1`). `next_state[d][s, v]` and `matched[d][s, v]` give, for state `s` and token
    `v`, the state after the token's text and whether the delimiter occurred inside it (merged tokens such as
    `".\n\n"` included).

    Args:
        texts (`list[str]`): text of every token id (see [`token_texts`]).
        delimiters (`tuple[str, ...]`): the step delimiters.
    """

    def __init__(self, texts: list[str], delimiters: tuple[str, ...]):
        self.delimiters = tuple(delimiters)
        vocab = len(texts)
        self.vocab_size = vocab
        self.blank = torch.tensor([t.strip() == "" for t in texts], dtype=torch.bool)  # (V,)
        self.next_state: list[torch.Tensor] = []
        self.matched: list[torch.Tensor] = []
        for delim in self.delimiters:
            m = len(delim)
            fail = _failure(delim)
            chars = set(delim)
            nxt = torch.zeros(m, vocab, dtype=torch.long)
            hit = torch.zeros(m, vocab, dtype=torch.bool)
            for v, text in enumerate(texts):
                if not chars.intersection(text):
                    continue  # state 0, no match, for every start state
                for s in range(m):
                    k, found = s, False
                    for ch in text:
                        while k and ch != delim[k]:
                            k = fail[k]
                        if ch == delim[k]:
                            k += 1
                        if k == m:
                            found = True
                            k = fail[m]
                    nxt[s, v] = k
                    hit[s, v] = found
            self.next_state.append(nxt)
            self.matched.append(hit)
        self._device = torch.device("cpu")

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, delimiters: tuple[str, ...], vocab_size: int
    ) -> StepBoundaryDetector:
        """Builds (and caches per tokenizer) the detector for `delimiters` over `vocab_size` token ids."""
        key = (id(tokenizer), tuple(delimiters), vocab_size)
        detector = _DETECTOR_CACHE.get(key)
        if detector is None:
            detector = cls(token_texts(tokenizer, vocab_size), tuple(delimiters))
            if len(_DETECTOR_CACHE) > 16:
                _DETECTOR_CACHE.clear()
            _DETECTOR_CACHE[key] = detector
        return detector

    def to(self, device: torch.device) -> StepBoundaryDetector:
        """Moves the tables to `device` (in place; returns self)."""
        if device != self._device:
            self.blank = self.blank.to(device)
            self.next_state = [t.to(device) for t in self.next_state]
            self.matched = [t.to(device) for t in self.matched]
            self._device = device
        return self

    def initial_state(self, rows: int, device: torch.device) -> torch.LongTensor:
        """Start-of-step automaton state, shape `(rows, num_delimiters)`."""
        return torch.zeros(rows, len(self.delimiters), dtype=torch.long, device=device)

    def advance(self, state: torch.LongTensor, tokens: torch.LongTensor) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Feeds one token per row; returns `(new_state (R, D), matched (R,))`."""
        tokens = tokens.clamp(0, self.vocab_size - 1)
        new_state = torch.empty_like(state)
        matched = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for d in range(len(self.delimiters)):
            new_state[:, d] = self.next_state[d][state[:, d], tokens]
            matched |= self.matched[d][state[:, d], tokens]
        return new_state, matched

    def is_blank(self, tokens: torch.LongTensor) -> torch.BoolTensor:
        """Whether each token's text is whitespace only, shape `(R,)`."""
        return self.blank[tokens.clamp(0, self.vocab_size - 1)]


# ------------------------------------------------------------------------------------------------------- one step
@dataclass
class StepResult:
    """What one call of [`StepRunner.run`] did, per live row (shapes `(R,)`, rows as they were during the step).

    Args:
        start_col (`int`): first token column of the step (every row started there).
        lengths (`torch.LongTensor`): tokens each row generated in this step.
        finished (`torch.BoolTensor`): rows whose particle finished during the step.
        hit_limit (`torch.BoolTensor`): rows that finished at `max_new_tokens` without ever ending a step.
        texts (`list[str]`, *optional*): the step's text per row (when a tokenizer is available).
        logprob_sum (`torch.FloatTensor`, *optional*): sum of the model's log-probabilities of the step's tokens.
        certainty_sum (`torch.FloatTensor`, *optional*): sum over the step's tokens of `KL(U || p)` (self-certainty).
    """

    start_col: int
    lengths: torch.Tensor
    finished: torch.Tensor
    hit_limit: torch.Tensor
    texts: list[str] | None = None
    logprob_sum: torch.Tensor | None = None
    certainty_sum: torch.Tensor | None = None


class StepRunner:
    r"""Advances every live row of a particle batch by one reasoning step.

    Args:
        model: the policy (causal LM).
        logits_processor (`LogitsProcessorList`): `generate`'s processors (temperature, top-p, penalties...).
        stopping_criteria (`StoppingCriteriaList`): `generate`'s criteria; EOS and max-length are handled here on
            real (hole-free) token counts, the others (stop strings, max time, user criteria) are applied per row.
        generation_config (`GenerationConfig`): the call's merged config (EOS ids).
        step_config ([`StepConfig`]): delimiters, `tokens_per_step`, `max_steps`, `stop_pattern`, `max_new_tokens`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for delimiters, stop patterns and step texts.
        generator (`torch.Generator`, *optional*): the source of randomness.
        record_token_stats (`bool`, *optional*, defaults to `False`): also sum per-token log-probs and
            self-certainty (for [`~hf_decoding.rewards.SelfCertainty`]).
        proposal ([`~hf_decoding.smc.proposal.RowProposal`], *optional*): per-row sampling parameters (e.g.
            AutoDeco's heads) recomputed after every forward pass; its chain replaces `logits_processor`.
    """

    def __init__(
        self,
        model: Any,
        logits_processor: LogitsProcessorList | None,
        stopping_criteria: StoppingCriteriaList | None,
        generation_config: GenerationConfig,
        step_config: StepConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        generator: torch.Generator | None = None,
        record_token_stats: bool = False,
        decode_texts: bool = True,
        proposal: RowProposal | None = None,
    ):
        self.model = model
        self.proposal = proposal
        self.chain = ProcessorChain(proposal.processors if proposal is not None else logits_processor)
        self.criteria = StoppingCriteriaList(
            c for c in (stopping_criteria or []) if not isinstance(c, (EosTokenCriteria, MaxLengthCriteria))
        )
        self.config = step_config
        self.tokenizer = tokenizer
        self.generator = generator
        self.record_token_stats = record_token_stats
        self.decode_texts = decode_texts and tokenizer is not None
        self.eos = eos_token_tensor(generation_config)
        self.generation_config = generation_config
        self._forward: Any | None = None  # the decode call, chosen at the first step (it depends on the cache)
        self.detector: StepBoundaryDetector | None = None
        if step_config.step_delimiter is not None:
            if tokenizer is None:
                raise InvalidDecodingArgument(
                    f"`step_delimiter={step_config.step_delimiter!r}` is matched on token ids through the "
                    "tokenizer's vocabulary, but no tokenizer was given. Fix: pass `tokenizer=tokenizer` to "
                    "`generate` (with `decoding=...` after `hf_decoding.enable(model)`; with "
                    "`custom_generate=fn` bind it: `functools.partial(fn, tokenizer=tokenizer)`), or use "
                    "`step_delimiter=None` with `tokens_per_step=k`."
                )
            vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
            self.detector = StepBoundaryDetector.from_tokenizer(
                tokenizer, step_config.step_delimiter, max(vocab or 0, len(tokenizer))
            )
        if step_config.stop_pattern is not None and tokenizer is None:
            raise InvalidDecodingArgument(
                f"`stop_pattern={step_config.stop_pattern!r}` is searched in the step text, which needs the "
                "tokenizer. Fix: pass `tokenizer=tokenizer` to `generate`, or drop `stop_pattern`."
            )
        self._stop = re.compile(step_config.stop_pattern) if step_config.stop_pattern else None

    def run(
        self,
        batch: ParticleBatch,
        step_index: int,
        forced: dict[int, tuple[torch.LongTensor, bool]] | None = None,
    ) -> StepResult:
        """Generates one step for every live row of `batch`.

        Args:
            batch ([`~hf_decoding.smc.ParticleBatch`]): the particles; its rows are all live particles.
            step_index (`int`): 0-based index of this step (for `max_steps`).
            forced (`dict[int, tuple[torch.LongTensor, bool]]`, *optional*): rows whose step is given instead of
                sampled (particle Gibbs' reference particle): `row -> (tokens, finishes)`. The step ends after
                the given tokens and the particle finishes if `finishes`.
        """
        device = batch.device
        rows = batch.num_rows
        start_col = batch.input_ids.shape[1]
        active = torch.ones(rows, dtype=torch.bool, device=device)
        lengths = torch.zeros(rows, dtype=torch.long, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        ended_by_step = torch.zeros(rows, dtype=torch.bool, device=device)
        has_content = torch.zeros(rows, dtype=torch.bool, device=device)
        new_tokens = batch.row_state.setdefault("new_tokens", torch.zeros(rows, dtype=torch.long, device=device))
        detector = self.detector.to(device) if self.detector is not None else None
        state = detector.initial_state(rows, device) if detector is not None else None
        eos = self.eos.to(device) if self.eos is not None else None
        logprob_sum = certainty_sum = None
        if self.record_token_stats:
            logprob_sum = torch.zeros(rows, dtype=torch.float32, device=device)
            certainty_sum = torch.zeros(rows, dtype=torch.float32, device=device)
        forced_tokens = forced_len = forced_finish = None
        if forced:
            width = max(t.numel() for t, _ in forced.values())
            forced_tokens = torch.full((rows, max(width, 1)), batch.pad_token_id, dtype=torch.long, device=device)
            forced_len = torch.full((rows,), -1, dtype=torch.long, device=device)
            forced_finish = torch.zeros(rows, dtype=torch.bool, device=device)
            for row, (tokens, finishes) in forced.items():
                forced_tokens[row, : tokens.numel()] = tokens.to(device)
                forced_len[row] = tokens.numel()
                forced_finish[row] = finishes
        k = 0
        proposal = self.proposal
        while True:
            if proposal is not None:
                proposal.before_token(batch.row_state)
            scores, _ = self.chain(batch.input_ids, batch.next_logits, step_index)  # (R, V)
            tokens = select_tokens(scores, True, self.generator)  # (R,)
            if forced_tokens is not None:
                is_forced = forced_len >= 0
                column = forced_tokens[:, min(k, forced_tokens.shape[1] - 1)]
                tokens = torch.where(is_forced, column, tokens)
            if self.record_token_stats:
                log_probs = torch.log_softmax(batch.next_logits, dim=-1)  # (R, V): the model's own distribution
                token_lp = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
                kl_uniform = -math.log(log_probs.shape[-1]) - log_probs.mean(-1)
                logprob_sum += torch.where(active, token_lp, 0.0)
                certainty_sum += torch.where(active, kl_uniform, 0.0)
            batch.append_tokens(tokens, active, proposal.token_values(batch.row_state) if proposal else None)
            lengths += active.long()
            new_tokens += active.long()

            boundary = torch.zeros_like(active)
            if detector is not None:
                next_state, matched = detector.advance(state, tokens)
                state = torch.where(active[:, None], next_state, state)
                has_content |= active & ~detector.is_blank(tokens)
                boundary |= matched & has_content
            if self.config.tokens_per_step is not None:
                boundary |= lengths >= self.config.tokens_per_step
            done = new_tokens >= self.config.max_new_tokens
            if eos is not None:
                done |= torch.isin(tokens, eos)
            if len(self.criteria):
                done |= self.criteria(batch.input_ids, None).to(device)
            if forced_tokens is not None:
                is_forced = forced_len >= 0
                forced_end = is_forced & (lengths >= forced_len)
                boundary = torch.where(is_forced, forced_end & ~forced_finish, boundary)
                done = torch.where(is_forced, forced_end & forced_finish, done)
            done &= active
            ended = active & (boundary | done)
            finished |= done
            ended_by_step |= active & boundary & ~done
            still_active = active & ~ended
            # Feed the column unless every row that produced a real token just finished (its logits are unused).
            if bool((active & ~done).any()):
                if self._forward is None:
                    self._forward = decode_forward(self.model, self.generation_config, batch.model_kwargs)
                batch.feed(self.model, forward=self._forward)
                if proposal is not None:
                    proposal.after_forward(batch.row_state, batch.next_logits, active)
            active = still_active
            k += 1
            if not bool(active.any()):
                break

        hit_limit = finished & ~ended_by_step & (new_tokens >= self.config.max_new_tokens)
        if self.config.max_steps is not None and step_index + 1 >= self.config.max_steps:
            finished = torch.ones_like(finished)
        texts = None
        if self.decode_texts:
            texts = self.tokenizer.batch_decode(
                [batch.row_columns(r, start_col, int(n)).tolist() for r, n in enumerate(lengths.tolist())],
                skip_special_tokens=True,
            )
            if self._stop is not None:
                stop = torch.tensor([bool(self._stop.search(t)) for t in texts], dtype=torch.bool, device=device)
                finished |= stop
        if detector is not None and self.config.tokens_per_step is None and bool(hit_limit.any()) and step_index == 0:
            warn(
                f"{int(hit_limit.sum())} particle(s) reached max_new_tokens={self.config.max_new_tokens} without "
                f"producing the step delimiter {self.config.step_delimiter!r}: their whole completion is one step. "
                "Set `tokens_per_step` to cap step length, or change `step_delimiter`.",
            )
        return StepResult(
            start_col=start_col,
            lengths=lengths,
            finished=finished,
            hit_limit=hit_limit,
            texts=texts,
            logprob_sum=logprob_sum,
            certainty_sum=certainty_sum,
        )
