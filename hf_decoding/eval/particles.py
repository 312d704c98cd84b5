"""Budget-scaling evaluation of the particle methods on offline arithmetic problems.

Runs, for every budget N and seed, the particle filter, N independent samples (scored once: best-of-N, weighted
best-of-N and self-consistency are three selection rules over the *same* samples), beam search and DVTS, all with
the [`~hf_decoding.rewards.ArithmeticStepVerifier`] as the process reward (without reference answers: no oracle).
Records accuracy and compute (generated tokens, reward calls) per problem, and plots accuracy vs N and vs compute.

    python -m hf_decoding.eval.particles --problems 12 --budgets 1 2 4 8 --seeds 0 1 \
        --out docs/results/particle_filtering.json --plot docs/results/particle_filtering.png
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import pathlib
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from tqdm.auto import tqdm

from ..rewards import ArithmeticStepVerifier
from ..smc.selection import extract_answer, majority_vote, weighted_vote
from .arithmetic import INSTRUCTION, Problem, make_problems, problem_inputs

__all__ = ["combine_shards", "evaluate", "main", "plain_prompt", "plot", "strip_next_question", "summarize"]

logger = logging.getLogger(__name__)

STEP_METHODS = ("particle_filter", "beam_search_prm", "dvts")
SAMPLE_METHODS = ("best_of_n", "weighted_best_of_n", "self_consistency")


def _decoder(name: str) -> Any:
    from ..decoders.beam_search_prm import beam_search_prm
    from ..decoders.best_of_n import best_of_n
    from ..decoders.dvts import dvts
    from ..decoders.particle_filter import particle_filter

    return {
        "particle_filter": particle_filter,
        "best_of_n": best_of_n,
        "beam_search_prm": beam_search_prm,
        "dvts": dvts,
    }[name]


# One worked example (not one of the generated problems) for base models without a chat template.
_SHOT = (
    "Question: Ana has 12 pencils and gives away 5. How many pencils are left? "
    + INSTRUCTION
    + "\nAnswer: 12 - 5 = 7\nThe answer is 7.\n\n"
)


def plain_prompt(problem: Problem) -> str:
    """One-shot plain-text prompt for a base model without a chat template (Gemma-3-270M here)."""
    return f"{_SHOT}Question: {problem.question} {INSTRUCTION}\nAnswer:"


def strip_next_question(text: str) -> str:
    """A base model given `plain_prompt` goes on with a new "Question:" after its answer; only the text before it is
    the completion that is scored."""
    return text.split("Question:", 1)[0]


def _inputs(tokenizer: Any, problems: list[Problem], device: Any) -> tuple[dict[str, Any], bool]:
    if getattr(tokenizer, "chat_template", None):
        return problem_inputs(tokenizer, problems, device), False
    encoded = tokenizer([plain_prompt(p) for p in problems], return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in encoded.items()}, True


def evaluate(
    model: Any,
    tokenizer: Any,
    problems: list[Problem],
    budgets: list[int],
    seeds: list[int],
    max_new_tokens: int = 48,
    step_delimiter: str = "\n",
    beam_width: int = 4,
    temperature: float = 0.8,
    runs: tuple[str, ...] = ("samples", *STEP_METHODS),
) -> list[dict[str, Any]]:
    """One row per (method, N, seed) with accuracy and mean compute per problem.

    `runs` picks what to run: `"samples"` (best-of-N, weighted best-of-N and self-consistency, all from the same
    N samples) and any of `STEP_METHODS`; long evaluations can be split into several calls and merged.
    """
    verifier = ArithmeticStepVerifier()
    inputs, plain = _inputs(tokenizer, problems, model.device)
    if plain:
        logger.info("tokenizer has no chat template: one-shot plain prompts, completions cut at the next 'Question:'")
    cut = strip_next_question if plain else (lambda t: t)
    prompt_len = inputs["input_ids"].shape[1]
    gold = [p.answer for p in problems]
    rows: list[dict[str, Any]] = []
    jobs = [(run, n, seed) for seed in seeds for n in budgets for run in runs]
    jobs = [(r, n, s) for r, n, s in jobs if r not in ("beam_search_prm", "dvts") or n % beam_width == 0]
    for run, n, seed in tqdm(jobs, desc="particle eval", unit="run"):
        name = "best_of_n" if run == "samples" else run
        extra: dict[str, Any] = {}
        if run in STEP_METHODS:
            extra["step_delimiter"] = step_delimiter
        if run in ("beam_search_prm", "dvts"):
            extra["beam_width"] = beam_width
        started = time.perf_counter()
        out = model.generate(
            **inputs,
            custom_generate=functools.partial(_decoder(name), tokenizer=tokenizer),
            num_particles=n,
            reward_model=verifier,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            max_new_tokens=max_new_tokens,
            seed=seed,
            return_dict_in_generate=True,
            **extra,
        )
        seconds = time.perf_counter() - started
        b = len(problems)
        compute = {
            "generated_tokens": out.cost.generated_tokens / b,
            "reward_calls": out.cost.reward_calls / b,
            "seconds": seconds / b,
        }
        selected = tokenizer.batch_decode(out.sequences[:, prompt_len:], skip_special_tokens=True)
        correct = {name: [extract_answer(cut(t)) == g for t, g in zip(selected, gold, strict=True)]}
        if run == "samples":
            texts = [
                tokenizer.batch_decode(out.particles.sequences[i, :, prompt_len:], skip_special_tokens=True)
                for i in range(b)
            ]
            texts = [[cut(t) for t in group] for group in texts]
            answers = [[extract_answer(t) for t in group] for group in texts]
            scores = [verifier.score_whole([""] * n, group) for group in texts]
            correct["weighted_best_of_n"] = [
                weighted_vote(a, s) == g for a, s, g in zip(answers, scores, gold, strict=True)
            ]
            correct["self_consistency"] = [majority_vote(a) == g for a, g in zip(answers, gold, strict=True)]
        for method, flags in correct.items():
            calls = 0.0 if method == "self_consistency" else compute["reward_calls"]
            rows.append(
                {
                    "method": method,
                    "n": n,
                    "seed": seed,
                    "accuracy": sum(flags) / len(flags),
                    **compute,
                    "reward_calls": calls,
                    "compute": compute["generated_tokens"] + calls,
                }
            )
            logger.info("%s N=%d seed=%d accuracy=%.3f", method, n, seed, rows[-1]["accuracy"])
    return rows


def combine_shards(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Joins rows of the same (method, N, seed) run on disjoint problem ranges (`--problem-range`) into one row.

    Rows without a `"problem_ranges"` field (list of `[start, stop)` pairs) are kept as they are. Per-problem
    quantities (accuracy, tokens, reward calls, compute, seconds) are averaged weighted by the number of problems of
    each shard; ranges that overlap raise a `ValueError`. The joined row lists the union of the ranges.
    """
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if "problem_ranges" in row:
            groups[(row["method"], row["n"], row["seed"])].append(row)
        else:
            out.append(row)
    for (method, n, seed), items in sorted(groups.items()):
        if len(items) == 1:
            out.append(items[0])
            continue
        ranges = sorted(tuple(r) for item in items for r in item["problem_ranges"])
        for (_, stop), (start, _) in itertools.pairwise(ranges):
            if start < stop:
                raise ValueError(f"overlapping problem ranges for {method} N={n} seed={seed}: {ranges}")
        sizes = [sum(b - a for a, b in item["problem_ranges"]) for item in items]
        total = sum(sizes)
        row: dict[str, Any] = {"method": method, "n": n, "seed": seed}
        for key in ("accuracy", "generated_tokens", "reward_calls", "seconds", "compute"):
            row[key] = sum(item[key] * k for item, k in zip(items, sizes, strict=True)) / total
        row["problem_ranges"] = [list(r) for r in ranges]
        sources = [item["source"] for item in items if "source" in item]
        if sources:
            row["source"] = " + ".join(sources)
        out.append(row)
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (method, N)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["n"])].append(row)
    out = []
    for (method, n), items in sorted(groups.items()):
        acc = [r["accuracy"] for r in items]
        out.append(
            {
                "method": method,
                "n": n,
                "seeds": len(items),
                "accuracy_mean": statistics.mean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "tokens_per_problem": statistics.mean(r["generated_tokens"] for r in items),
                "reward_calls_per_problem": statistics.mean(r["reward_calls"] for r in items),
                "compute_per_problem": statistics.mean(r["compute"] for r in items),
                "seconds_per_problem": statistics.mean(r["seconds"] for r in items),
            }
        )
    return out


def plot(summary: list[dict[str, Any]], path: str | pathlib.Path) -> None:
    """Accuracy vs N and vs compute (tokens + reward calls per problem), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in sorted({r["method"] for r in summary}):
        items = sorted((r for r in summary if r["method"] == method), key=lambda r: r["n"])
        acc = [r["accuracy_mean"] for r in items]
        std = [r["accuracy_std"] for r in items]
        axes[0].errorbar([r["n"] for r in items], acc, yerr=std, marker="o", capsize=3, label=method)
        axes[1].errorbar([r["compute_per_problem"] for r in items], acc, yerr=std, marker="o", capsize=3, label=method)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("budget N (particles / samples / beams)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("compute per problem (generated tokens + reward calls)")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, arithmetic word problems, ArithmeticStepVerifier as PRM")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Budget-scaling evaluation of the particle methods.")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--problem-seed", type=int, default=0)
    parser.add_argument(
        "--problem-range",
        type=int,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="run only problems START..STOP-1 of the --problems generated (split a long run; "
        "--merge joins the shards of one (method, N, seed) into one row)",
    )
    parser.add_argument("--steps", type=int, default=1, help="operations per problem (1 or 2)")
    parser.add_argument("--budgets", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["samples", *STEP_METHODS],
        choices=["samples", *STEP_METHODS],
        help="what to run (split long evaluations, then merge with --merge)",
    )
    parser.add_argument("--merge", nargs="*", default=[], help="earlier --out files whose rows are added")
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if args.problem_range is not None and not 0 <= args.problem_range[0] < args.problem_range[1] <= args.problems:
        parser.error(f"--problem-range must satisfy 0 <= START < STOP <= --problems ({args.problems})")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    from ..models import load_default_model

    model, tokenizer = load_default_model(args.model)
    problems = make_problems(args.problems, seed=args.problem_seed, steps=args.steps)
    if args.problem_range is not None:
        problems = problems[args.problem_range[0] : args.problem_range[1]]
    started = time.perf_counter()
    rows = evaluate(
        model, tokenizer, problems, args.budgets, args.seeds, max_new_tokens=args.max_new_tokens, runs=tuple(args.runs)
    )
    if args.problem_range is not None:
        for row in rows:
            row["problem_ranges"] = [list(args.problem_range)]
    for path in args.merge:
        rows.extend(json.loads(pathlib.Path(path).read_text())["rows"])
    rows = combine_shards(rows)
    summary = summarize(rows)
    result = {"config": vars(args), "wall_seconds": time.perf_counter() - started, "summary": summary, "rows": rows}
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(summary, args.plot)
    for r in summary:
        print(
            f"{r['method']:>20} N={r['n']:>3}  acc={r['accuracy_mean']:.3f}±{r['accuracy_std']:.3f}  "
            f"tokens={r['tokens_per_problem']:.0f}  reward_calls={r['reward_calls_per_problem']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
