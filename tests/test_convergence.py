"""hf_decoding.analysis.convergence: exact KL of masked-diffusion sampling against brute force and the theory."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest

from hf_decoding.analysis.convergence import (
    CONFIDENCE_RULES,
    convergence_curve,
    dependence_sweep,
    expected_kl,
    hidden_markov_joint,
    information_profile,
    kl_divergence,
    loglog_slope,
    markov_chain_joint,
    mutual_information_terms,
    plot_convergence,
    run_convergence_study,
    sampler_distribution,
    theorem1_bound,
    total_correlation,
)
from hf_decoding.diffusion import EnumeratedJoint, unmasking_schedule
from hf_decoding.errors import InvalidDecodingArgument


def _conditional(joint: EnumeratedJoint, x: np.ndarray, i: int, revealed: list[int]) -> float:
    """`p(x_i | x_revealed)` by summing the table: the definition, independent of the library's tables."""
    sequences = joint.sequences()
    flat = joint.probs.reshape(-1)
    agree = np.all(sequences[:, revealed] == x[revealed], axis=1) if revealed else np.ones(len(flat), bool)
    return flat[agree & (sequences[:, i] == x[i])].sum() / flat[agree].sum()


def _path_laws(joint: EnumeratedJoint, schedule: list[int]) -> list[np.ndarray]:
    """`q_M` for every ordered partition `M` of the positions with block sizes `schedule` (brute force)."""
    length, sequences = joint.length, joint.sequences()
    laws = []
    for order in itertools.permutations(range(length)):
        blocks, start = [], 0
        for size in schedule:
            blocks.append(order[start : start + size])
            start += size
        q = np.ones(len(sequences))
        for n, x in enumerate(sequences):
            revealed: list[int] = []
            for block in blocks:
                for i in block:
                    q[n] *= _conditional(joint, x, i, revealed)
                revealed = revealed + list(block)
        laws.append(q)
    return laws


@pytest.fixture(scope="module")
def small_joint() -> EnumeratedJoint:
    return hidden_markov_joint(length=4, vocab_size=2, hidden_states=2, dependence=0.7, noise=0.2)


@pytest.mark.parametrize("schedule", [[4], [2, 2], [2, 1, 1], [1, 1, 1, 1], [1, 3]])
def test_random_rule_matches_brute_force(small_joint, schedule):
    laws = _path_laws(small_joint, schedule)
    mixture = np.mean(laws, axis=0)
    exact = sampler_distribution(small_joint, schedule, "random")
    assert np.allclose(exact.probs.ravel(), mixture, atol=1e-12)
    assert exact.expected_steps == pytest.approx(len(schedule))
    # Theorem 1's left-hand side in closed form equals the average KL over mask paths
    p = small_joint.probs.ravel()
    brute = np.mean([kl_divergence(p, q) for q in laws])
    assert expected_kl(small_joint, schedule) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("kind", ["markov", "hmm"])
def test_one_token_per_step_is_exact_and_bound_holds(kind):
    joint = markov_chain_joint(8, 3, 0.8) if kind == "markov" else hidden_markov_joint(8, 3, dependence=0.9)
    mi = float(mutual_information_terms(joint).sum())
    for steps in range(1, 9):
        schedule = unmasking_schedule(8, steps, "linear")
        q = sampler_distribution(joint, schedule)
        kl = kl_divergence(joint.probs, q.probs)
        expected = expected_kl(joint, schedule)
        bound = theorem1_bound(joint, schedule, mi)
        assert q.probs.sum() == pytest.approx(1.0)
        assert kl <= expected + 1e-10 <= bound + 2e-10  # convexity, then Theorem 1
        if steps == 8:
            assert kl == pytest.approx(0.0, abs=1e-10) and expected == pytest.approx(0.0, abs=1e-10)
        if steps == 1:
            assert kl == pytest.approx(total_correlation(joint))


def test_information_profile_sums_to_entropy():
    joint = markov_chain_joint(6, 3, 0.5)
    p = joint.probs[joint.probs > 0]
    assert information_profile(joint).sum() == pytest.approx(float(-(p * np.log(p)).sum()))


def test_independent_tokens_have_no_parallel_error():
    joint = markov_chain_joint(6, 3, 0.0)
    assert np.allclose(mutual_information_terms(joint), 0.0, atol=1e-12)
    for steps in (1, 2, 3):
        q = sampler_distribution(joint, unmasking_schedule(6, steps))
        assert kl_divergence(joint.probs, q.probs) == pytest.approx(0.0, abs=1e-12)


def test_kl_grows_with_dependence():
    rows = dependence_sweep("markov", (0.0, 0.3, 0.6, 0.9), length=6, vocab_size=3, steps=(1, 2, 3))
    for j in range(3):
        kls = [row["kl"][j] for row in rows]
        assert kls == sorted(kls) and kls[-1] > kls[0]
    assert [row["mi_sum"] for row in rows] == sorted(row["mi_sum"] for row in rows)


def test_loglog_slope_is_near_minus_one():
    curve = convergence_curve(markov_chain_joint(10, 3, 0.7), range(1, 11))
    assert curve.kl[-1] == pytest.approx(0.0, abs=1e-10)
    # Theorem 1's quantity E_M KL follows the bound's finite-L rate 1/T - 1/L (slightly steeper than 1/T) ...
    assert -1.6 < curve.slope_expected_kl < -0.9
    assert 0.85 < curve.rate_exponent < 1.25
    # ... while the KL of the mixture over masks falls faster still (the O(1/T) rate is an upper bound)
    assert curve.slope < curve.slope_expected_kl
    assert loglog_slope([1, 2, 4], [8.0, 4.0, 2.0]) == pytest.approx(-1.0)


def test_confidence_rules_are_outside_the_theorem():
    joint = markov_chain_joint(6, 3, 0.7)
    one_per_step = [1] * 6
    for rule in ("entropy", "margin"):  # state-dependent order: the chain rule still holds at T = L
        assert kl_divergence(joint.probs, sampler_distribution(joint, one_per_step, rule).probs) < 1e-10
    # LLaDA's low_confidence ranks by the probability of the *drawn* token: biased even at one token per step
    drawn = sampler_distribution(joint, one_per_step, "low_confidence")
    assert kl_divergence(joint.probs, drawn.probs) > 0.1
    state = sampler_distribution(joint, one_per_step, "low_confidence", confidence="max_prob")
    assert kl_divergence(joint.probs, state.probs) < 1e-10
    adaptive = sampler_distribution(joint, None, "threshold", threshold=0.5, confidence="max_prob")
    assert adaptive.expected_steps < 6 and adaptive.probs.sum() == pytest.approx(1.0)
    curve = convergence_curve(joint, [1, 2, 6], "entropy")
    assert not curve.in_theorem and curve.expected_kl is None
    assert set(CONFIDENCE_RULES) >= {"entropy", "threshold", "low_confidence"}


def test_bad_inputs():
    joint = markov_chain_joint(4, 2, 0.5)
    with pytest.raises(InvalidDecodingArgument, match="schedule"):
        sampler_distribution(joint, [2, 1])
    with pytest.raises(InvalidDecodingArgument, match="rule"):
        sampler_distribution(joint, [4], "best")
    with pytest.raises(InvalidDecodingArgument, match="dependence"):
        markov_chain_joint(4, 2, 1.0)
    with pytest.raises(InvalidDecodingArgument, match="length"):
        markov_chain_joint(30, 3, 0.5)
    with pytest.raises(InvalidDecodingArgument, match="steps"):
        convergence_curve(joint, [0])


def test_study_checks_and_plot(tmp_path):
    study = run_convergence_study(length=6, vocab_size=2, dependence=0.8, confidence_length=4, sweep=(0.0, 0.5, 0.9))
    checks = study["checks"]
    assert checks["kl_zero_at_L"] and checks["bound_holds"] and checks["mixture_below_expected"]
    assert checks["kl_grows_with_mi"]
    json.dumps(study)  # JSON-able
    path = plot_convergence(study, str(tmp_path / "convergence.png"))
    assert (tmp_path / "convergence.png").stat().st_size > 10_000 and path.endswith(".png")


def test_cli_analyze_convergence(tmp_path, capsys):
    from hf_decoding.cli import analyze_convergence

    parser = argparse.ArgumentParser()
    analyze_convergence.add_parser(parser.add_subparsers())
    output = tmp_path / "study.json"
    args = parser.parse_args(
        ["convergence", "--length", "6", "--vocab-size", "2", "--confidence-length", "4", "--output", str(output)]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "slope=" in printed and "bound_holds=True" in printed
    assert json.loads(output.read_text())["setup"]["length"] == 6
    assert math.isfinite(json.loads(output.read_text())["checks"]["slope"])
