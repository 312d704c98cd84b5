"""The evaluation harness pieces that need no model: the problem generator and the summary."""

from __future__ import annotations

import pytest

from hf_decoding.eval.arithmetic import make_problems
from hf_decoding.eval.particles import combine_shards, main, plain_prompt, strip_next_question, summarize
from hf_decoding.rewards import check_equations


def test_problems_are_deterministic_and_correct():
    a, b = make_problems(20, seed=3), make_problems(20, seed=3)
    assert a == b and a != make_problems(20, seed=4)
    for problem in a + make_problems(10, seed=1, steps=2):
        assert int(problem.answer) >= 0
    for p in make_problems(30, seed=0):
        x, y = p.numbers
        op = "+" if int(p.answer) == x + y else "-" if int(p.answer) == x - y else "*"
        assert check_equations(f"{x} {op} {y} = {p.answer}") == (1, 1)


def test_summarize_mean_and_std_over_seeds():
    rows = [
        {
            "method": "pf",
            "n": 4,
            "seed": s,
            "accuracy": acc,
            "generated_tokens": 10.0,
            "reward_calls": 2.0,
            "compute": 12.0,
            "seconds": 1.0,
        }
        for s, acc in ((0, 0.5), (1, 0.7))
    ]
    (summary,) = summarize(rows)
    assert summary["accuracy_mean"] == 0.6 and round(summary["accuracy_std"], 4) == 0.1414
    assert summary["compute_per_problem"] == 12.0


def test_combine_shards_weights_by_problem_count_and_rejects_overlap():
    def row(acc, tokens, ranges, seed=0):
        return {
            "method": "pf",
            "n": 32,
            "seed": seed,
            "accuracy": acc,
            "generated_tokens": tokens,
            "reward_calls": 1.0,
            "compute": tokens + 1.0,
            "seconds": 2.0,
            "problem_ranges": ranges,
        }

    full = {
        "method": "pf",
        "n": 16,
        "seed": 0,
        "accuracy": 0.25,
        "generated_tokens": 5.0,
        "reward_calls": 1.0,
        "compute": 6.0,
        "seconds": 1.0,
    }
    joined = combine_shards([row(0.5, 10.0, [[0, 4]]), full, row(0.0, 40.0, [[4, 12]]), row(1.0, 1.0, [[0, 4]], 1)])
    assert full in joined and len(joined) == 3
    (pf32,) = [r for r in joined if r["n"] == 32 and r["seed"] == 0]
    assert pf32["accuracy"] == pytest.approx(0.5 * 4 / 12) and pf32["generated_tokens"] == pytest.approx(30.0)
    assert pf32["problem_ranges"] == [[0, 4], [4, 12]]
    # a joined row joins again with a further shard
    (again,) = combine_shards([pf32, row(1.0, 0.0, [[12, 24]])])
    assert again["accuracy"] == pytest.approx((0.5 * 4 + 12) / 24)
    with pytest.raises(ValueError, match="overlapping"):
        combine_shards([row(0.5, 1.0, [[0, 6]]), row(0.5, 1.0, [[4, 12]])])


@pytest.mark.parametrize("bounds", [["6", "6"], ["-1", "4"], ["8", "13"]])
def test_problem_range_is_validated_before_loading_a_model(bounds):
    with pytest.raises(SystemExit):
        main(["--problems", "12", "--problem-range", *bounds, "--budgets", "1"])


def test_plain_prompt_and_cut_for_base_models():
    from hf_decoding.smc.selection import extract_answer

    (problem,) = make_problems(1, seed=0)
    prompt = plain_prompt(problem)
    assert f"Question: {problem.question} " in prompt and prompt.endswith("\nAnswer:")
    assert prompt.count("Question:") == 2 and "The answer is 7." in prompt
    completion = " 3 + 4 = 7\nThe answer is 7.\n\nQuestion: Tom has 2 cats. The answer is 9."
    assert extract_answer(strip_next_question(completion)) == "7"
    assert strip_next_question("no follow-up") == "no follow-up"
