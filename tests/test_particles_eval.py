"""The evaluation harness pieces that need no model: the problem generator and the summary."""

from __future__ import annotations

from hf_decoding.eval.arithmetic import make_problems
from hf_decoding.eval.particles import summarize
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
        {"method": "pf", "n": 4, "seed": s, "accuracy": acc, "generated_tokens": 10.0, "reward_calls": 2.0,
         "compute": 12.0, "seconds": 1.0}
        for s, acc in ((0, 0.5), (1, 0.7))
    ]
    (summary,) = summarize(rows)
    assert summary["accuracy_mean"] == 0.6 and round(summary["accuracy_std"], 4) == 0.1414
    assert summary["compute_per_problem"] == 12.0
