"""A pool of N samples per problem, drawn once, and the sample-based methods as selection rules over it.

[`draw_pool`] samples `pool_size` completions per problem (one problem per `generate` call, seeded per problem id
through the decoders' `torch.Generator`, so a problem's samples do not depend on the shard it runs in) and stores,
per sample: text, extracted answer, correctness, generated tokens, and the per-step and aggregated scores of each
reward (the exact [`~hf_decoding.rewards.ArithmeticStepVerifier`] and the learned PRM).

Best-of-N (argmax of the aggregated reward), weighted best-of-N (answer with the largest summed reward) and
self-consistency (majority answer) at every N ≤ pool size are then rules applied to size-N subsets of that pool
([`pool_accuracy`]): for each problem and N, `draws` subsets are drawn uniformly without replacement (in random
order, so ties of the argmax and of the votes are broken at random) from a `numpy` generator seeded by
(seed, problem id, N), and the problem's accuracy is the mean over them; at N = pool size there is one subset, the
whole pool. pass@k is the exact unbiased estimator `1 - C(n-c, k) / C(n, k)` (no subsets needed).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..rewards.answers import extract_answer
from ..smc.selection import majority_vote, weighted_vote
from .arithmetic import INSTRUCTION, problem_inputs
from .problems import EvalProblem

__all__ = [
    "POOL_RULES",
    "draw_pool",
    "generated_lengths",
    "pass_at_k",
    "pool_accuracy",
    "problem_seed",
    "select_answer",
    "user_prompt",
]

POOL_RULES = ("best_of_n", "weighted_best_of_n", "self_consistency")


def problem_seed(seed: int, problem_id: str) -> int:
    """A stable 31-bit seed for one problem (independent of shard boundaries and of Python's hash salt)."""
    return int(hashlib.sha256(f"{seed}/{problem_id}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def user_prompt(problem: EvalProblem) -> str:
    """The user message the policy sees (inside its chat template) and the prompt the rewards score against (the
    layout the learned PRM was trained on)."""
    return f"{problem.question} {INSTRUCTION}"


def generated_lengths(sequences: torch.Tensor, eos_ids: Sequence[int]) -> list[int]:
    """Generated tokens per row of `sequences` `(N, T_new)`: up to and including the first EOS, else all `T_new`."""
    eos = torch.tensor(list(eos_ids), dtype=sequences.dtype)
    is_eos = torch.isin(sequences, eos)  # (N, T_new)
    first = torch.where(
        is_eos.any(-1), is_eos.int().argmax(-1) + 1, torch.full_like(is_eos[:, 0], sequences.shape[1], dtype=torch.long)
    )
    return [int(x) for x in first]


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])] if eos is not None else []


def draw_pool(
    model: Any,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    rewards: dict[str, Any],
    pool_size: int = 16,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    step_delimiter: str = "\n",
    progress: Callable[[Any], Any] = lambda it: it,
) -> list[dict[str, Any]]:
    """One record per problem: `{"id", "gold", "seed", "seconds", "samples": [...]}`.

    Args:
        rewards (`dict[str, RewardModel]`): name -> reward with `score` and `score_whole` (e.g.
            `{"verifier": ArithmeticStepVerifier(step_delimiter="\\n"), "prm": load_default_prm(model, tokenizer)}`);
            each sample gets `<name>_steps` (per step, split on `step_delimiter`) and `<name>` (aggregated,
            `score_whole`, what `score_mode="model"` uses).
        pool_size (`int`, *optional*, defaults to 16): samples per problem.
        seed (`int`, *optional*, defaults to 0): combined with each problem id by [`problem_seed`].
    """
    from ..decoders.self_consistency import self_consistency

    decoder = functools.partial(self_consistency, tokenizer=tokenizer)
    eos = _eos_ids(model)
    records = []
    for problem in progress(problems):
        started = time.perf_counter()
        inputs = problem_inputs(tokenizer, [problem], model.device)
        prompt_len = inputs["input_ids"].shape[1]
        pseed = problem_seed(seed, problem.id)
        out = model.generate(
            **inputs,
            custom_generate=decoder,
            num_particles=pool_size,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            seed=pseed,
            return_dict_in_generate=True,
        )
        new = out.particles.sequences[0, :, prompt_len:].cpu()  # (N, T_new)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        lengths = generated_lengths(new, eos)
        prompts = [user_prompt(problem)] * pool_size
        samples = []
        for text, tokens in zip(texts, lengths, strict=True):
            answer = extract_answer(text)
            samples.append({"text": text, "answer": answer, "correct": answer == problem.answer, "tokens": tokens})
        for name, reward in rewards.items():
            steps = reward.score(prompts, texts)
            whole = reward.score_whole(prompts, texts)
            for sample, s, w in zip(samples, steps, whole, strict=True):
                sample[f"{name}_steps"] = [round(float(v), 5) for v in s]
                sample[name] = round(float(w), 5)
        records.append(
            {
                "id": problem.id,
                "gold": problem.answer,
                "seed": pseed,
                "seconds": round(time.perf_counter() - started, 3),
                "samples": samples,
            }
        )
    return records


def select_answer(rule: str, samples: Sequence[dict[str, Any]], reward: str | None = None) -> str | None:
    """The answer `rule` picks from `samples` (in the given order; ties go to the first).

    `"best_of_n"`: the answer of the sample with the highest `sample[reward]`; `"weighted_best_of_n"`: the answer
    with the largest summed `sample[reward]`; `"self_consistency"`: the most frequent answer (no reward).
    """
    if rule == "self_consistency":
        return majority_vote([s["answer"] for s in samples])
    if reward is None:
        raise ValueError(f"rule {rule!r} needs a reward name")
    if rule == "best_of_n":
        scores = [s[reward] for s in samples]
        return samples[int(np.argmax(scores))]["answer"]
    if rule == "weighted_best_of_n":
        return weighted_vote([s["answer"] for s in samples], [s[reward] for s in samples])
    raise ValueError(f"unknown rule {rule!r}; valid: {list(POOL_RULES)}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `c` correct among `n` samples (Chen et al., 2021): `1 - C(n-c, k) / C(n, k)`."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pool_accuracy(
    record: dict[str, Any],
    rule: str,
    size: int,
    reward: str | None = None,
    draws: int = 64,
    seed: int = 0,
) -> float:
    """Expected accuracy of `rule` on a uniformly drawn size-`size` subset of one problem's pool (`draws` subsets;
    the whole pool once when `size` is the pool size). `rule="pass_at_k"` is exact."""
    samples = record["samples"]
    n = len(samples)
    if not 1 <= size <= n:
        raise ValueError(f"subset size must be in 1..{n}, got {size}")
    if rule == "pass_at_k":
        return pass_at_k(n, sum(bool(s["correct"]) for s in samples), size)
    gold = record["gold"]
    # Common random subsets: every rule and reward sees the same subsets of a problem at a given N, so paired
    # differences between rules carry no Monte Carlo noise from different draws (at N = 1 all rules agree).
    rng = np.random.default_rng(problem_seed(seed, f"{record['id']}/{size}"))
    if size == n:
        draws = 1
    hits = 0
    for _ in range(draws):
        order = rng.permutation(n)[:size]
        hits += select_answer(rule, [samples[i] for i in order], reward) == gold
    return hits / draws
