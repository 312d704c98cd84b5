"""AutoDeco training data: prompt/completion JSONL, offline task generators and rejection sampling.

The paper trains the heads on the base model's *own* correct samples (rejection sampling on DeepMath problems).
[`build_rejection_sampled_data`] does the same on offline, seeded task generators: the built-in
[`ArithmeticTask`] / [`WordProblemTask`], or any `reasoning-gym` dataset (`"reasoning_gym:<name>"`, needs the
`eval` extra). A training row is `{"prompt": [chat messages] | str, "completion": str}`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import invalid_argument
from ..generation.cache import copy_cache, forward_cache_kwargs, new_dynamic_cache, reorder_rows, with_cache
from ..registry import get_decoder

__all__ = [
    "ArithmeticTask",
    "EncodedExample",
    "Problem",
    "ReasoningGymTask",
    "WordProblemTask",
    "build_rejection_sampled_data",
    "encode_example",
    "extract_answer",
    "generate_samples",
    "get_task",
    "prompt_text",
    "read_jsonl",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = Messages | str


# --------------------------------------------------------------------------------------------------------------------
# JSONL and encoding
# --------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; each must have `prompt` and `completion`."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
                raise invalid_argument(
                    f"{os.fspath(path)}:{number}", line.strip()[:80], "a JSON object with `prompt` and `completion`"
                )
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Writes rows as JSONL; returns the number written."""
    count = 0
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def prompt_text(tokenizer: Any, prompt: Prompt) -> str:
    """The text fed to the model: the chat template (with the generation prompt) for messages, else `prompt`."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return "\n".join(message["content"] for message in prompt) + "\n"


@dataclass
class EncodedExample:
    """A tokenized example: `labels` is `-100` on the prompt (completion-only loss)."""

    input_ids: list[int]
    labels: list[int]


def encode_example(
    tokenizer: Any, prompt: Prompt, completion: str, max_length: int = 1024, add_eos: bool = True
) -> EncodedExample:
    """Tokenizes one prompt/completion pair.

    The prompt keeps every token (tokenizers without a BOS lose nothing, unlike the official `[1:]`); a chat
    template already holds its special tokens, so none are added to it. The completion ends with EOS when
    `add_eos`. Sequences longer than `max_length` lose the end of the completion.
    """
    text = prompt_text(tokenizer, prompt)
    templated = not isinstance(prompt, str)
    prompt_ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids = [*completion_ids, eos]
    input_ids = (list(prompt_ids) + list(completion_ids))[:max_length]
    labels = ([-100] * len(prompt_ids) + list(completion_ids))[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels)


# --------------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------------

_INT = re.compile(r"-?\d[\d,]*")


def extract_answer(text: str) -> str | None:
    r"""The final answer of a completion: the last `\boxed{...}`, else the first number after the first `=`, else
    the last number (commas removed)."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        return boxed[-1].strip().replace(",", "")
    if "=" in text:
        after = _INT.findall(text.split("=", 1)[1])
        if after:
            return after[0].replace(",", "")
    numbers = _INT.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


@dataclass
class Problem:
    """One task instance: chat `messages` to prompt with and the reference `answer`."""

    messages: Messages
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, completion: str) -> bool:
        """Whether `completion`'s extracted answer equals the reference."""
        return extract_answer(completion) == self.answer


class ArithmeticTask:
    r"""Seeded one-operation arithmetic: `a + b`, `a - b` (non-negative) with operands in `[2, 50]`, `a * b` in
    `[2, 12]`, asked as "What is a op b? Reply with only the number."

    Args:
        max_operand (`int`, *optional*, defaults to 50): largest operand of `+` and `-`.
        max_factor (`int`, *optional*, defaults to 12): largest factor of `*`.
    """

    name = "arithmetic"

    def __init__(self, max_operand: int = 50, max_factor: int = 12):
        self.max_operand = max_operand
        self.max_factor = max_factor

    def generate(self, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems from a `random.Random(seed)` stream (the same seed gives the same problems)."""
        rng = random.Random(seed)
        problems = []
        for _ in range(n):
            op = rng.choice("+-*")
            if op == "*":
                a, b = rng.randint(2, self.max_factor), rng.randint(2, self.max_factor)
                value = a * b
            else:
                a, b = rng.randint(2, self.max_operand), rng.randint(2, self.max_operand)
                if op == "-":
                    a, b = max(a, b), min(a, b)
                value = a + b if op == "+" else a - b
            question = f"What is {a} {op} {b}? Reply with only the number."
            problems.append(Problem([{"role": "user", "content": question}], str(value), {"a": a, "b": b, "op": op}))
        return problems


class WordProblemTask:
    """Seeded GSM-style one- or two-step word problems from templates (integer answers)."""

    name = "word_problems"
    _NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana")
    _ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers")

    def generate(self, n: int, seed: int = 0) -> list[Problem]:
        rng = random.Random(seed)
        problems = []
        for _ in range(n):
            name, item = rng.choice(self._NAMES), rng.choice(self._ITEMS)
            kind = rng.randrange(3)
            a, b = rng.randint(3, 30), rng.randint(2, 20)
            if kind == 0:
                text, value = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
            elif kind == 1:
                a = a + b
                text, value = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
            else:
                a, b = rng.randint(2, 9), rng.randint(2, 9)
                text, value = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} is that?", a * b
            question = text + " Reply with only the number."
            problems.append(Problem([{"role": "user", "content": question}], str(value), {"kind": kind}))
        return problems


class ReasoningGymTask:
    """A `reasoning-gym` dataset (`pip install "hf-decoding[eval]"`), e.g. `"basic_arithmetic"`, `"gsm_symbolic"`.

    Args:
        dataset (`str`): reasoning-gym dataset name.
        kwargs: dataset options passed to `reasoning_gym.create_dataset`.
    """

    def __init__(self, dataset: str, **kwargs: Any):
        self.dataset = dataset
        self.kwargs = kwargs
        self.name = f"reasoning_gym:{dataset}"

    def generate(self, n: int, seed: int = 0) -> list[Problem]:
        try:
            import reasoning_gym
        except ImportError as err:
            raise ImportError(
                f'Task {self.name!r} needs the reasoning-gym package: pip install "hf-decoding[eval]"'
            ) from err
        data = reasoning_gym.create_dataset(self.dataset, size=n, seed=seed, **self.kwargs)
        problems = []
        for entry in data:
            question = f"{entry['question']}\nReply with only the final answer."
            problems.append(Problem([{"role": "user", "content": question}], str(entry["answer"]).strip()))
        return problems


def get_task(name: str) -> ArithmeticTask | WordProblemTask | ReasoningGymTask:
    """A task by name: `"arithmetic"`, `"word_problems"` or `"reasoning_gym:<dataset>"`."""
    if name == "arithmetic":
        return ArithmeticTask()
    if name == "word_problems":
        return WordProblemTask()
    if isinstance(name, str) and name.startswith("reasoning_gym:"):
        return ReasoningGymTask(name.split(":", 1)[1])
    raise invalid_argument("task", name, "'arithmetic', 'word_problems' or 'reasoning_gym:<dataset>'")


# --------------------------------------------------------------------------------------------------------------------
# Sampling with a shared prompt prefix
# --------------------------------------------------------------------------------------------------------------------


class PromptPrefix:
    """A batch of left-padded prompts whose KV cache (all but the last token) is computed once and reused.

    Every `generate` call that starts from these prompts (any method, any seed, `n` samples per prompt) then
    only feeds the last prompt token and the new ones, which is what makes multi-method evaluations affordable
    on a CPU. Positions follow `generate` (`cumsum(mask) - 1`), so results match a fresh `generate` up to
    floating-point summation order.

    Args:
        model: the causal LM whose cache is built.
        input_ids (`torch.LongTensor` of shape `(B, L)`), attention_mask (`torch.Tensor` of shape `(B, L)`).
    """

    def __init__(self, model: Any, input_ids: torch.LongTensor, attention_mask: torch.Tensor):
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        cache = new_dynamic_cache(model)
        if input_ids.shape[1] > 1:
            mask = attention_mask[:, :-1]
            position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
            with torch.no_grad():
                model(
                    input_ids=input_ids[:, :-1],
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=True,
                    logits_to_keep=1,
                    **forward_cache_kwargs(model, cache),
                )
        self.cache = cache

    def inputs(self, num_samples: int = 1) -> dict[str, Any]:
        """`generate` kwargs for `num_samples` rows per prompt (row `i * num_samples + j` is sample `j` of
        prompt `i`), with a private copy of the cache."""
        kwargs = copy_cache(with_cache({"attention_mask": self.attention_mask}, self.cache))
        input_ids = self.input_ids
        if num_samples > 1:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(num_samples)
            kwargs = reorder_rows(kwargs, rows)
            input_ids = input_ids.index_select(0, rows)
        return {"input_ids": input_ids, **kwargs}


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    num_samples: int = 1,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    progress: bool = False,
    prefixes: list[PromptPrefix] | None = None,
    generate_fn: Callable[..., Any] | None = None,
    return_traces: bool = False,
    return_finished: bool = False,
    **generate_kwargs: Any,
) -> Any:
    """`num_samples` completions per prompt, batched, reusing each batch's prompt cache.

    Args:
        model: a causal LM (or an [`AutoDecoModelForCausalLM`]; its base's cache is used).
        prompts (`Sequence`): chat messages or raw strings.
        prefixes (`list[PromptPrefix]`, *optional*): caches of earlier calls with the same prompts and batch size.
        generate_fn (`Callable`, *optional*): called as `generate_fn(**inputs, **generate_kwargs)`; defaults to
            `model.generate`.
        return_traces (`bool`): also return the applied AutoDeco values per sample (`{"temperature": [...],
            "top_p": [...]}` over the generated tokens), when the output has them.
        return_finished (`bool`): also return whether each sample ended with EOS (`False`: cut by
            `max_new_tokens`).
        generate_kwargs: flags for `generate` (`do_sample`, `temperature`, `seed`, `decoding`, ...).

    Returns:
        `completions[i][j]`: sample `j` of prompt `i` (special tokens removed); with `return_traces` /
        `return_finished`, a tuple that also holds the traces / the finished flags in the same layout.
    """
    generate_fn = generate_fn or model.generate
    base = getattr(model, "llm", model)
    completions: list[list[str]] = []
    traces: list[list[dict[str, Any]]] = []
    finished: list[list[bool]] = []
    eos = tokenizer.eos_token_id
    starts = list(range(0, len(prompts), batch_size))
    for number, start in enumerate(tqdm(starts, desc="generate", disable=not progress)):
        batch = list(prompts[start : start + batch_size])
        if prefixes is not None and number < len(prefixes):
            prefix = prefixes[number]
        else:
            texts = [prompt_text(tokenizer, p) for p in batch]
            templated = not isinstance(batch[0], str)
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)
            device = next(base.parameters()).device
            prefix = PromptPrefix(base, encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            if prefixes is not None:
                prefixes.append(prefix)
        inputs = prefix.inputs(num_samples)
        out = generate_fn(**inputs, max_new_tokens=max_new_tokens, return_dict_in_generate=True, **generate_kwargs)
        sequences = out.sequences[:, inputs["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        trace = getattr(out, "autodeco", None)
        for i in range(len(batch)):
            rows = range(i * num_samples, (i + 1) * num_samples)
            completions.append([texts[r] for r in rows])
            if return_traces:
                traces.append([_row_trace(trace, sequences, r, tokenizer) for r in rows])
            finished.append([eos is not None and bool((sequences[r] == eos).any()) for r in rows])
    extras = ([traces] if return_traces else []) + ([finished] if return_finished else [])
    return (completions, *extras) if extras else completions


def _row_trace(trace: Any, sequences: torch.Tensor, row: int, tokenizer: Any) -> dict[str, Any]:
    if trace is None:
        return {}
    pad = tokenizer.pad_token_id
    length = int((sequences[row] != pad).sum()) if pad is not None else sequences.shape[1]
    eos = tokenizer.eos_token_id
    tokens = sequences[row].tolist()
    if eos is not None and eos in tokens:
        length = tokens.index(eos) + 1
    return {
        "temperature": trace.temperature[row, :length].tolist(),
        "top_p": trace.top_p[row, :length].tolist(),
    }


# --------------------------------------------------------------------------------------------------------------------
# Rejection sampling
# --------------------------------------------------------------------------------------------------------------------


def build_rejection_sampled_data(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    samples_per_problem: int = 4,
    max_kept_per_problem: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    r"""The paper's recipe: sample from the model itself, keep the correct completions.

    Args:
        model: the base causal LM.
        tokenizer: its tokenizer (left padding).
        problems (`Sequence[Problem]`): e.g. `ArithmeticTask().generate(300, seed=1)`.
        samples_per_problem (`int`, *optional*, defaults to 4): samples drawn per problem.
        max_kept_per_problem (`int`, *optional*): keep at most this many distinct correct completions per problem.
        temperature (`float`), top_p (`float`): sampling setting of the data (defaults: the raw model, T=1, p=1).
        max_new_tokens (`int`), batch_size (`int`): generation budget.
        seed (`int`, *optional*, defaults to 0): seeds the sampler (a private `torch.Generator`).

    Returns:
        `(rows, stats)`: rows `{"prompt": messages, "completion": text, "answer": str, "truncated": bool}`
        (`truncated`: cut by `max_new_tokens`, so training appends no EOS); stats with the number of problems,
        samples, correct samples and kept rows.
    """
    completions, finished = generate_samples(
        model,
        tokenizer,
        [p.messages for p in problems],
        num_samples=samples_per_problem,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        return_finished=True,
        custom_generate=get_decoder("sample"),
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        seed=seed,
    )
    rows, correct = [], 0
    for problem, samples, ended in zip(problems, completions, finished, strict=True):
        kept: dict[str, bool] = {}
        for text, done in zip(samples, ended, strict=True):
            if problem.score(text):
                correct += 1
                text = text.strip()
                if text not in kept and (max_kept_per_problem is None or len(kept) < max_kept_per_problem):
                    kept[text] = not done
        rows.extend(
            {"prompt": problem.messages, "completion": text, "answer": problem.answer, "truncated": cut}
            for text, cut in kept.items()
        )
    stats = {
        "problems": len(problems),
        "samples": len(problems) * samples_per_problem,
        "correct_samples": correct,
        "rows": len(rows),
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    return rows, stats
