"""The reward-model contract, the callable adapter, and the per-decode session the particle decoders talk to.

Contract: a reward model has `score(prompts: list[str], partial_texts: list[str]) -> list[list[float]]`, one
score per completed step of each partial answer (a probability in `[0, 1]` for the `logit`/`log` weight
transforms; any real number for `identity`). A plain callable with that signature is accepted wherever a reward
model is (`reward_model=fn`); it is wrapped in [`CallableReward`].

Decoders do not call `score` directly: they open a [`RewardSession`] for the particles of one `generate` call,
append each new step to it and ask it for scores. The default session keeps every particle's text and calls
`score` (text in, scores out; each call re-reads the whole prefix, which `cost.reward_tokens` reports); adapters
that can do better override [`RewardModel.open_session`] ([`ProcessRewardModel`] reuses its own KV cache across
steps, [`SelfCertainty`] reads the policy's log-probs and needs no text).

Failures: a reward that raises, returns NaN, or returns something of the wrong shape raises
[`~hf_decoding.RewardModelError`] naming the particle (group, index) and the step, unless the decoder was called with
`on_reward_error="neg_inf"`: then the offending particles get a `-inf` log-weight (they cannot be resampled) and an
[`~hf_decoding.HfDecodingWarning`] is emitted. Never a crash deep inside resampling.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InvalidDecodingArgument, RewardModelError, warn

__all__ = [
    "SCORE_MODES",
    "CallableReward",
    "RewardModel",
    "RewardSession",
    "as_reward_model",
    "split_steps",
]

SCORE_MODES = ("model", "last", "min", "prod")


def split_steps(text: str, delimiter: str = "\n\n") -> list[str]:
    """Splits a partial answer into its non-empty steps (stripped)."""
    steps = [s.strip() for s in text.split(delimiter)]
    steps = [s for s in steps if s]
    return steps or [text.strip()]


class RewardModel:
    """Base class of the reward adapters. Subclasses implement [`score`]; the rest has working defaults.

    Attributes:
        requires_text (`bool`): whether the model reads text (then the decoder needs `tokenizer=`).
    """

    requires_text: bool = True

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        """One score per completed step of each partial answer.

        Args:
            prompts (`list[str]`): the question of each particle.
            partial_texts (`list[str]`): each particle's answer so far.

        Returns:
            `list[list[float]]`: `len(prompts)` lists of step scores.
        """
        raise NotImplementedError

    def score_whole(self, prompts: list[str], partial_texts: list[str]) -> list[float]:
        """The model's own score of each whole partial answer (`score_mode="model"`).

        The default is the last step score, so for a plain callable `"model"` and `"last"` coincide; the adapters
        override it (a PRM scores the prefix as one step, as the reference code does).
        """
        return [steps[-1] if steps else math.nan for steps in self.score(prompts, partial_texts)]

    def open_session(self, prompts: list[str], **options: Any) -> RewardSession:
        """A session over `len(prompts)` particle slots (see [`RewardSession`])."""
        return RewardSession(self, prompts, **options)


class CallableReward(RewardModel):
    """Wraps `fn(prompts, partial_texts) -> list[list[float]]` (or an object with such a `score` method).

    Args:
        fn (`Callable`): the scoring function. Returning one float per text is accepted as a single step score.
    """

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[Any]]):
        self.fn = fn
        self.requires_text = getattr(fn, "requires_text", True)

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        out = self.fn(prompts, partial_texts)
        return [list(x) if isinstance(x, (list, tuple)) else [x] for x in out]

    def score_whole(self, prompts: list[str], partial_texts: list[str]) -> list[float]:
        whole = getattr(self.fn, "score_whole", None)
        if callable(whole):
            return list(whole(prompts, partial_texts))
        return super().score_whole(prompts, partial_texts)

    def __repr__(self) -> str:
        return f"CallableReward({getattr(self.fn, '__name__', type(self.fn).__name__)})"


def as_reward_model(reward: Any, name: str = "reward_model") -> RewardModel:
    """Turns `reward_model=` into a [`RewardModel`]: an instance is kept, an object with `score` or a callable is
    wrapped; `None` raises [`InvalidDecodingArgument`] naming the fix."""
    if isinstance(reward, RewardModel):
        return reward
    if reward is None:
        raise InvalidDecodingArgument(
            f"`{name}` is required: pass e.g. `{name}=hf_decoding.rewards.ArithmeticStepVerifier()`, a "
            "`ProcessRewardModel(prm, prm_tokenizer)`, `SelfCertainty()` (no extra model), or any callable "
            "`fn(prompts: list[str], partial_texts: list[str]) -> list[list[float]]`."
        )
    score = getattr(reward, "score", None)
    if callable(score):
        adapter = CallableReward(score)
        adapter.requires_text = getattr(reward, "requires_text", True)
        whole = getattr(reward, "score_whole", None)
        if callable(whole):
            adapter.fn = _with_whole(score, whole)
        return adapter
    if callable(reward):
        return CallableReward(reward)
    raise InvalidDecodingArgument(
        f"`{name}` must be a RewardModel, an object with `score(prompts, partial_texts)`, or a callable; got "
        f"{type(reward).__name__}."
    )


def _with_whole(score: Callable[..., Any], whole: Callable[..., Any]) -> Callable[..., Any]:
    def fn(prompts: list[str], texts: list[str]) -> Any:
        return score(prompts, texts)

    fn.score_whole = whole  # type: ignore[attr-defined]
    return fn


class RewardSession:
    r"""The reward side of one decode: per-slot texts (or state), scoring, re-indexing on resampling, cost.

    Args:
        reward ([`RewardModel`]): the adapter.
        prompts (`list[str]`): the question of every slot (B·N entries).
        prompt_tokens (`list[int]`, *optional*): policy tokens of each slot's prompt (for `reward_tokens`).
        on_error (`str`, *optional*, defaults to `"raise"`): `"raise"` or `"neg_inf"` (see the module docs).
        num_particles (`int`, *optional*): N, to report particles as `(group, index)` in errors.

    Attributes:
        calls (`int`): particle-step evaluations made (one particle scored once = one call).
        batches (`int`): batched calls of the underlying model.
        tokens (`int`): tokens the reward model read.
    """

    def __init__(
        self,
        reward: RewardModel,
        prompts: list[str],
        prompt_tokens: list[int] | None = None,
        on_error: str = "raise",
        num_particles: int = 1,
    ):
        if on_error not in ("raise", "neg_inf"):
            raise InvalidDecodingArgument(f"`on_reward_error` must be 'raise' or 'neg_inf', got {on_error!r}.")
        self.reward = reward
        self.prompts = list(prompts)
        self.prompt_tokens = list(prompt_tokens) if prompt_tokens is not None else [0] * len(prompts)
        self.on_error = on_error
        self.num_particles = num_particles
        self.steps: list[list[str]] = [[] for _ in prompts]
        self.step_tokens: list[int] = [0] * len(prompts)
        self.stats: list[list[dict[str, float]]] = [[] for _ in prompts]
        self.calls = 0
        self.batches = 0
        self.tokens = 0

    # ------------------------------------------------------------------------------------------------ bookkeeping
    def extend(
        self,
        slots: Sequence[int],
        texts: Sequence[str] | None,
        num_tokens: Sequence[int],
        stats: Sequence[dict[str, float]] | None = None,
    ) -> None:
        """Appends one new step to each of `slots` (text, its policy token count, optional token statistics)."""
        for i, slot in enumerate(slots):
            self.steps[slot].append(texts[i] if texts is not None else "")
            self.step_tokens[slot] += int(num_tokens[i])
            if stats is not None:
                self.stats[slot].append(dict(stats[i]))

    def reorder(self, src: Sequence[int]) -> None:
        """Slot `s` becomes a copy of slot `src[s]` (after resampling)."""
        self.steps = [list(self.steps[s]) for s in src]
        self.step_tokens = [self.step_tokens[s] for s in src]
        self.stats = [list(self.stats[s]) for s in src]
        self.prompts = [self.prompts[s] for s in src]
        self.prompt_tokens = [self.prompt_tokens[s] for s in src]

    def text(self, slot: int) -> str:
        """The partial answer of `slot` (its steps concatenated as generated)."""
        return "".join(self.steps[slot])

    # ------------------------------------------------------------------------------------------------ scoring
    def score(self, slots: Sequence[int], mode: str, step_index: int) -> list[list[float]]:
        """Scores of the particles in `slots`: per-step lists (`mode` last/min/prod) or `[whole]` (`"model"`).

        Returns validated lists; an invalid particle raises [`RewardModelError`] or gets `[-inf]`.
        """
        slots = list(slots)
        if not slots:
            return []
        try:
            raw = self._score(slots, mode)
        except RewardModelError:
            raise
        except Exception as err:
            where = self._where(slots, step_index)
            if self.on_error == "raise":
                raise RewardModelError(
                    f"The reward model raised {type(err).__name__}: {err} while scoring {where}. Fix the reward, or "
                    "pass on_reward_error='neg_inf' to give those particles weight 0 (log-weight -inf) instead."
                ) from err
            warn(
                f"The reward model raised {type(err).__name__}: {err} while scoring {where}; those particles get "
                "log-weight -inf (on_reward_error='neg_inf').",
            )
            return [[-math.inf] for _ in slots]
        finally:
            self.calls += len(slots)
            self.batches += 1
        return self._validate(raw, slots, step_index)

    def _score(self, slots: list[int], mode: str) -> list[list[float]]:
        prompts = [self.prompts[s] for s in slots]
        texts = [self.text(s) for s in slots]
        self.tokens += sum(self.prompt_tokens[s] + self.step_tokens[s] for s in slots)
        if mode == "model":
            return [[x] for x in self.reward.score_whole(prompts, texts)]
        return self.reward.score(prompts, texts)

    def _where(self, slots: list[int], step_index: int) -> str:
        n = self.num_particles
        particles = ", ".join(f"(group {s // n}, particle {s % n})" for s in slots[:8])
        more = f" and {len(slots) - 8} more" if len(slots) > 8 else ""
        return f"particles {particles}{more} at step {step_index}"

    def _validate(self, raw: Any, slots: list[int], step_index: int) -> list[list[float]]:
        if not isinstance(raw, (list, tuple)) or len(raw) != len(slots):
            got = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
            raise RewardModelError(
                f"The reward model returned {got} results for {len(slots)} partial answers at step {step_index}; "
                "`score` must return one list of step scores per partial answer."
            )
        out: list[list[float]] = []
        bad: list[int] = []
        for slot, item in zip(slots, raw, strict=False):
            values = list(item) if isinstance(item, (list, tuple)) else [item]
            wrong = [v for v in values if not _is_number(v)]
            if wrong:  # a bug of the reward, not a score: raised whatever `on_reward_error` says
                raise RewardModelError(
                    f"The reward model returned {type(wrong[0]).__name__} ({wrong[0]!r:.60}) instead of a number for "
                    f"{self._where([slot], step_index)}. Fix: `score` must return lists of floats (convert parsed "
                    "text with float(...), tensors with .item())."
                )
            values = [float(v) for v in values]
            if not values or any(math.isnan(v) or v == math.inf for v in values):
                bad.append(slot)
                values = [-math.inf]
            out.append(values)
        if bad:
            where = self._where(bad, step_index)
            if self.on_error == "raise":
                raise RewardModelError(
                    f"The reward model returned NaN, +inf or no score for {where}. Fix the reward, or pass "
                    "on_reward_error='neg_inf' to give those particles weight 0 (log-weight -inf) instead."
                )
            warn(
                f"The reward model returned NaN, +inf or no score for {where}; those particles get log-weight -inf "
                "(on_reward_error='neg_inf').",
            )
        return out


def _is_number(value: Any) -> bool:
    """A real number (bools count as 0 / 1), a NumPy scalar or a one-element tensor; not a string or a container."""
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()
