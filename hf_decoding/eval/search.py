"""The step-level search methods (particle filter, particle Gibbs, PRM beam search, DVTS) run one problem at a
time (or `batch_problems` at a time) with a process reward, recording the returned answer and `out.cost` per problem.

A method is named by a spec `"method:reward:N"`; [`STEP_BUDGETS`] lists the N each method runs at (beam search and
DVTS need N divisible by the beam width, 4).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..rewards.answers import extract_answer
from .arithmetic import problem_inputs
from .pool import problem_seed, user_prompt
from .problems import EvalProblem

__all__ = ["REWARDS", "STEP_BUDGETS", "expand_methods", "parse_method", "problem_batches", "run_search"]

STEP_BUDGETS = {"particle_filter": (4, 8, 16), "particle_gibbs": (4, 8, 16), "beam_search_prm": (4, 8), "dvts": (4, 8)}
REWARDS = ("verifier", "prm")


def parse_method(spec: str) -> tuple[str, str, int]:
    """`"particle_filter:prm:8"` -> `("particle_filter", "prm", 8)`, validated against `STEP_BUDGETS` and `REWARDS`."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in STEP_BUDGETS or parts[1] not in REWARDS or not parts[2].isdigit():
        raise ValueError(
            f"method spec must be METHOD:REWARD:N with METHOD in {sorted(STEP_BUDGETS)} and REWARD in "
            f"{list(REWARDS)}, got {spec!r}"
        )
    return parts[0], parts[1], int(parts[2])


def expand_methods(names: Sequence[str]) -> list[str]:
    """Units to run: `"pool"`, full specs, `"method"` (all its budgets, both rewards) or `"method:reward"`, or
    `"steps"` (every step method). Order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        if name == "pool":
            items = ["pool"]
        elif name == "steps":
            items = [f"{m}:{r}:{n}" for m, ns in STEP_BUDGETS.items() for r in REWARDS for n in ns]
        elif name.count(":") == 2:
            parse_method(name)
            items = [name]
        else:
            method, _, reward = name.partition(":")
            if method not in STEP_BUDGETS or (reward and reward not in REWARDS):
                raise ValueError(f"unknown method {name!r}; valid: pool, steps, {sorted(STEP_BUDGETS)}[:reward[:N]]")
            items = [f"{method}:{r}:{n}" for r in ([reward] if reward else REWARDS) for n in STEP_BUDGETS[method]]
        out.extend(i for i in items if i not in out)
    return out


def _decoder(method: str) -> Any:
    from ..decoders.beam_search_prm import beam_search_prm
    from ..decoders.dvts import dvts
    from ..decoders.particle_filter import particle_filter
    from ..decoders.particle_gibbs import particle_gibbs

    return {"particle_filter": particle_filter, "particle_gibbs": particle_gibbs, "beam_search_prm": beam_search_prm,
            "dvts": dvts}[method]  # fmt: skip


def problem_batches(problems: Sequence[EvalProblem], size: int) -> list[list[EvalProblem]]:
    """`problems` cut into consecutive groups of at most `size`, one per `generate` call."""
    if size < 1:
        raise ValueError(f"batch_problems must be a positive integer, got {size!r}")
    return [list(problems[i : i + size]) for i in range(0, len(problems), size)]


def run_search(
    model: Any,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    spec: str,
    reward: Any,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    step_delimiter: str = "\n",
    beam_width: int = 4,
    gibbs_iterations: int = 2,
    batch_problems: int = 1,
    progress: Callable[[Any], Any] = lambda it: it,
) -> list[dict[str, Any]]:
    """One record per problem: `{"id", "answer", "correct", "text", "cost": {...}, "compute", "seconds"}`, where
    `compute = generated_tokens + reward_calls` of `out.cost` (the x-axis of the equal-compute curves).

    `batch_problems > 1` decodes that many problems in one `generate` call (each keeps its own N particles; the
    decoders resample and select per prompt). The call is then seeded from the ids of its problems, and `cost` and
    `seconds` of each record are the call's totals divided by the number of problems in it (`"batch"` says how many):
    both counters add up over rows, so their means over problems are exact, only the per-problem split is shared.
    `cost["forward_passes"]` stays the call's count (one batched forward serves every problem in it).
    """
    method, _, n = parse_method(spec)
    extra: dict[str, Any] = {}
    if method in ("beam_search_prm", "dvts"):
        extra["beam_width"] = beam_width
    if method == "particle_gibbs":
        extra["num_iterations"] = gibbs_iterations
    decoder = functools.partial(_decoder(method), tokenizer=tokenizer)
    records = []
    for batch in progress(problem_batches(problems, batch_problems)):
        inputs = problem_inputs(tokenizer, batch, model.device)
        prompt_len = inputs["input_ids"].shape[1]
        started = time.perf_counter()
        out = model.generate(
            **inputs,
            custom_generate=decoder,
            num_particles=n,
            reward_model=reward,
            reward_prompts=[user_prompt(p) for p in batch],
            step_delimiter=step_delimiter,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            seed=problem_seed(seed, "+".join(p.id for p in batch) + f"/{spec}"),
            return_dict_in_generate=True,
            **extra,
        )
        seconds = time.perf_counter() - started
        k = len(batch)
        share = int if k == 1 else (lambda total, k=k: total / k)
        cost = {
            "forward_passes": int(out.cost.forward_passes),
            "generated_tokens": share(out.cost.generated_tokens),
            "reward_calls": share(out.cost.reward_calls),
            "reward_tokens": share(out.cost.reward_tokens),
        }
        for row, problem in enumerate(batch):
            text = tokenizer.decode(out.sequences[row, prompt_len:], skip_special_tokens=True)
            answer = extract_answer(text)
            record = {
                "id": problem.id,
                "answer": answer,
                "correct": answer == problem.answer,
                "text": text,
                "cost": dict(cost),
                "compute": cost["generated_tokens"] + cost["reward_calls"],
                "seconds": round(seconds / k, 3),
            }
            if k > 1:
                record["batch"] = k
            records.append(record)
    return records
