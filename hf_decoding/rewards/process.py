"""`ProcessRewardModel`: Hugging Face PRMs that score each step at a separator token (Qwen2.5-Math-PRM layout).

Layout: the conversation `system + user(question) + assistant(step_1 <tag> step_2 <tag> ...)`, with the step tag
`<extra_0>`; the model returns per-position class logits `(batch, length, 2)` (a token-classification head, as
`Qwen2.5-Math-PRM-7B` does) and the step score is the positive-class probability at each tag. A causal LM that
scores with two label tokens at the tag (Math-Shepherd style) is supported with `label_token_ids=(neg, pos)`.

Scoring is batched, and a decode's session reuses the PRM's own KV cache: each particle's prefix (question and
earlier steps) stays in a batched cache whose rows follow the particles through resampling, so each call feeds
only the new step and its tag. `score_mode="model"` scores the whole partial answer as one step (one tag at the
end, the earlier steps joined by a newline, as the reference code effectively does); the session then drops the
tag from its cache after reading it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import invalid_argument
from ..generation.cache import crop_cache, forward_cache_kwargs, get_cache, new_dynamic_cache, reorder_rows, with_cache
from .base import RewardModel, RewardSession, split_steps

__all__ = ["QWEN_PRM_SYSTEM_PROMPT", "ProcessRewardModel"]

QWEN_PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
_SENTINEL = "\u2063HFD_ASSISTANT\u2063"


class ProcessRewardModel(RewardModel):
    r"""A process reward model scored at step tags.

    Args:
        model (`PreTrainedModel`): the PRM (e.g. `AutoModel.from_pretrained("Qwen/Qwen2.5-Math-PRM-7B",
            trust_remote_code=True)`, or any model returning logits of shape `(batch, length, classes)`).
        tokenizer (`PreTrainedTokenizerBase`): the PRM's tokenizer.
        step_tag (`str`, *optional*, defaults to `"<extra_0>"`): the separator token after each step.
        positive_index (`int`, *optional*, defaults to 1): class index of "step is correct".
        label_token_ids (`tuple[int, int]`, *optional*): for causal-LM PRMs, the (negative, positive) token ids
            whose softmax at the tag is the score.
        system_prompt (`str`, *optional*): system message of the chat layout (Qwen2.5-Math-PRM's by default).
        use_chat_template (`bool`, *optional*, defaults to `True`): use the tokenizer's chat template (when it has
            one); otherwise the layout is `question + "\n" + steps`.
        step_delimiter (`str`, *optional*, defaults to `"\n\n"`): how `score` splits a text into steps.
        batch_size (`int`, *optional*, defaults to 16): rows per PRM forward pass in `score`.

    Example:

    ```python
    >>> prm = ProcessRewardModel(prm_model, prm_tokenizer)
    >>> prm.score(["What is 2+3?"], ["2 + 3 = 5\n\nThe answer is \\boxed{5}"])   # one probability per step
    [[0.97, 0.99]]
    ```
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        step_tag: str = "<extra_0>",
        positive_index: int = 1,
        label_token_ids: tuple[int, int] | None = None,
        system_prompt: str | None = QWEN_PRM_SYSTEM_PROMPT,
        use_chat_template: bool = True,
        step_delimiter: str = "\n\n",
        batch_size: int = 16,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.step_tag = step_tag
        tag_ids = tokenizer.encode(step_tag, add_special_tokens=False)
        if len(tag_ids) != 1:
            raise invalid_argument(
                "step_tag",
                step_tag,
                "a single token of the PRM tokenizer",
                "Add it as a special token (tokenizer.add_special_tokens) or pass the PRM's own tag.",
            )
        self.tag_id = tag_ids[0]
        self.positive_index = positive_index
        self.label_token_ids = tuple(label_token_ids) if label_token_ids is not None else None
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.step_delimiter = step_delimiter
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise invalid_argument("batch_size", batch_size, "a positive integer")
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0
        self._prefix_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------------------------------------ tokenization
    def prefix_ids(self, prompt: str) -> list[int]:
        """Token ids of everything before the first step (system, question, assistant header)."""
        ids = self._prefix_cache.get(prompt)
        if ids is None:
            if self.use_chat_template:
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _SENTINEL}]
                if self.system_prompt is not None:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
                text = self.tokenizer.apply_chat_template(messages, tokenize=False)
                text = text[: text.index(_SENTINEL)]
            else:
                text = prompt + "\n"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._prefix_cache[prompt] = ids
        return list(ids)

    def segment_ids(self, step: str, first: bool, whole: bool) -> list[int]:
        """Token ids of one step (without its tag). In `whole` mode (one tag for the whole answer) steps after the
        first are joined with a newline."""
        text = step.strip()
        if whole and not first:
            text = "\n" + text
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ------------------------------------------------------------------------------------------------ model calls
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _positive(self, logits: torch.Tensor) -> torch.Tensor:
        """Positive-class probability from logits `(..., C)`."""
        logits = logits.float()
        if self.label_token_ids is not None:
            logits = logits[..., list(self.label_token_ids)]
            return logits.softmax(-1)[..., 1]
        return logits.softmax(-1)[..., self.positive_index]

    def _logits(self, outputs: Any) -> torch.Tensor:
        return outputs.logits if hasattr(outputs, "logits") else outputs[0]

    @torch.no_grad()
    def _score_sequences(self, sequences: list[list[int]], positions: list[list[int]]) -> list[list[float]]:
        """Runs full sequences (left padded, in chunks) and reads the score at the given positions."""
        out: list[list[float]] = []
        device = self._device()
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, seq in enumerate(chunk):
                ids[i, width - len(seq) :] = torch.tensor(seq)
                mask[i, width - len(seq) :] = 1
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self._logits(
                self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device)
                )
            )  # (b, width, C)
            probs = self._positive(logits).cpu()  # (b, width)
            for i, seq in enumerate(chunk):
                offset = width - len(seq)
                out.append([float(probs[i, offset + p]) for p in positions[start + i]])
        return out

    def _layout(self, prompt: str, steps: list[str], whole: bool) -> tuple[list[int], list[int]]:
        ids = self.prefix_ids(prompt)
        positions: list[int] = []
        for k, step in enumerate(steps):
            ids += self.segment_ids(step, first=k == 0, whole=whole)
            if not whole:
                ids.append(self.tag_id)
                positions.append(len(ids) - 1)
        if whole:
            ids.append(self.tag_id)
            positions.append(len(ids) - 1)
        return ids, positions

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        layouts = [
            self._layout(p, split_steps(t, self.step_delimiter), whole=False)
            for p, t in zip(prompts, partial_texts, strict=False)
        ]
        return self._score_sequences([ids for ids, _ in layouts], [pos for _, pos in layouts])

    def score_whole(self, prompts: list[str], partial_texts: list[str]) -> list[float]:
        layouts = [
            self._layout(p, split_steps(t, self.step_delimiter), whole=True)
            for p, t in zip(prompts, partial_texts, strict=False)
        ]
        return [s[-1] for s in self._score_sequences([ids for ids, _ in layouts], [pos for _, pos in layouts])]

    def open_session(self, prompts: list[str], **options: Any) -> RewardSession:
        return _PRMSession(self, prompts, **options)

    def __repr__(self) -> str:
        return f"ProcessRewardModel({type(self.model).__name__}, step_tag={self.step_tag!r})"


class _PRMSession(RewardSession):
    """Keeps the PRM's KV cache per particle slot; each call feeds only the new steps and a tag."""

    def __init__(self, reward: ProcessRewardModel, prompts: list[str], **options: Any):
        super().__init__(reward, prompts, **options)
        self.fed_steps = [0] * len(prompts)  # steps of each slot already in the PRM cache
        self.kwargs: dict[str, Any] | None = None
        self.real_len: torch.Tensor | None = None
        self.step_scores: list[list[float]] = [[] for _ in prompts]

    def _start(self) -> None:
        prm: ProcessRewardModel = self.reward  # type: ignore[assignment]
        device = prm._device()
        unique = list(dict.fromkeys(self.prompts))
        prefixes = [prm.prefix_ids(p) for p in unique]
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(unique), width), prm.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(unique), width), dtype=torch.long, device=device)
        for i, p in enumerate(prefixes):
            ids[i, width - len(p) :] = torch.tensor(p, device=device)
            mask[i, width - len(p) :] = 1
        cache = new_dynamic_cache(prm.model)
        with torch.no_grad():
            prm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                **forward_cache_kwargs(prm.model, cache),
            )
        self.tokens += int(mask.sum())
        index = torch.tensor([unique.index(p) for p in self.prompts], device=device)
        self.kwargs = reorder_rows(with_cache({"attention_mask": mask}, cache), index)
        self.real_len = self.kwargs["attention_mask"].sum(-1)

    def reorder(self, src: Sequence[int]) -> None:
        super().reorder(src)
        self.fed_steps = [self.fed_steps[s] for s in src]
        self.step_scores = [list(self.step_scores[s]) for s in src]
        if self.kwargs is not None:
            index = torch.as_tensor(list(src), dtype=torch.long, device=self.real_len.device)
            self.kwargs = reorder_rows(self.kwargs, index)
            self.real_len = self.real_len.index_select(0, index)

    @torch.no_grad()
    def _score(self, slots: list[int], mode: str) -> list[list[float]]:
        prm: ProcessRewardModel = self.reward  # type: ignore[assignment]
        if self.kwargs is None:
            self._start()
        whole = mode == "model"
        rows = len(self.prompts)
        device = self.real_len.device
        segments: dict[int, list[int]] = {}
        inline_tags: dict[int, list[int]] = {}
        for slot in slots:
            ids: list[int] = []
            tags: list[int] = []
            for k in range(self.fed_steps[slot], len(self.steps[slot])):
                ids += prm.segment_ids(self.steps[slot][k], first=k == 0, whole=whole)
                if not whole and k < len(self.steps[slot]) - 1:
                    ids.append(prm.tag_id)
                    tags.append(len(ids) - 1)
            segments[slot] = ids
            inline_tags[slot] = tags
        width = max((len(s) for s in segments.values()), default=0)
        # Block layout per row: [step tokens, pads (mask 0)] + [tag]: the tag is the last column of every row.
        block = torch.full((rows, width + 1), prm.pad_id, dtype=torch.long)
        block_mask = torch.zeros((rows, width + 1), dtype=torch.long)
        for slot, ids in segments.items():
            block[slot, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            block_mask[slot, : len(ids)] = 1
            block[slot, width] = prm.tag_id
            block_mask[slot, width] = 1
        block, block_mask = block.to(device), block_mask.to(device)
        mask = torch.cat([self.kwargs["attention_mask"], block_mask], dim=-1)
        position_ids = self.real_len[:, None] + (block_mask.cumsum(-1) - 1).clamp(min=0)
        cache = get_cache(self.kwargs)
        logits = prm._logits(
            prm.model(
                input_ids=block,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                **forward_cache_kwargs(prm.model, cache),
            )
        )  # (rows, width + 1, C)
        probs = prm._positive(logits).cpu()  # (rows, width + 1)
        self.tokens += int(block_mask.sum())
        if whole:
            # The whole-answer tag must not stay in the cache: the next step continues the text without it.
            crop_cache(cache, 1)
            self.kwargs["attention_mask"] = mask[:, :-1]
            self.real_len = self.real_len + block_mask[:, :-1].sum(-1)
        else:
            self.kwargs["attention_mask"] = mask
            self.real_len = self.real_len + block_mask.sum(-1)
        out = []
        for slot in slots:
            self.fed_steps[slot] = len(self.steps[slot])
            last = float(probs[slot, width])
            if whole:
                out.append([last])
                continue
            self.step_scores[slot] += [float(probs[slot, p]) for p in inline_tags[slot]] + [last]
            out.append(list(self.step_scores[slot]))
        if any(math.isnan(v) for row in out for v in row):
            return out  # validated (and reported with the particle and step) by the caller
        return out
