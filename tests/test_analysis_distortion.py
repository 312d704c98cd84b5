"""Tests for `hf_decoding.analysis.distortion`: kept mass, mass matching and the matched-mass comparison."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tiny_llama

from hf_decoding.analysis import distortion
from hf_decoding.analysis.distortion import (
    STRATEGIES,
    collect_contexts,
    compare_strategies,
    encode_prompts,
    generate_kwargs_for,
    kept_mass,
    match_mass,
)
from hf_decoding.errors import InvalidDecodingArgument

PROBS = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
LOGITS = PROBS.log().float() + torch.tensor([[1.5], [-2.0]])  # any per-row shift: logits, not log-probs


def random_logits(n: int = 64, vocab: int = 100, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=generator) * scale


@pytest.mark.parametrize(
    ("strategy", "value", "expected"),
    [
        ("top_k", 1, [0.5, 0.4]),
        ("top_k", 2, [0.75, 0.7]),
        ("top_k", 0, [1.0, 1.0]),
        ("top_p", 0.65, [0.75, 0.7]),  # transformers' rule: the crossing token is kept
        ("top_p", 0.45, [0.5, 0.7]),
        ("temperature", 0.5, [0.345, 0.3]),  # sum p^2
        ("temperature", 1.0, [1.0, 1.0]),
        ("min_p", 0.45, [0.75, 0.9]),  # keep p >= 0.45 * max p
        ("distortion_aware_nucleus", 0.6, [0.6, 0.6]),
        ("distortion_aware_nucleus", 0.45, [0.45, 0.45]),  # boundary inside the top token
    ],
)
def test_kept_mass_matches_hand_computation(strategy: str, value: float, expected: list[float]) -> None:
    mass = kept_mass(LOGITS, strategy, value)
    assert mass.shape == (2,)
    torch.testing.assert_close(mass.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)


def test_kept_mass_top_k_equals_sum_of_top_probabilities() -> None:
    logits = random_logits()
    probs = torch.softmax(logits.double(), dim=-1)
    for k in (1, 5, 37):
        expected = probs.topk(k, dim=-1).values.sum(-1)
        torch.testing.assert_close(kept_mass(logits, "top_k", k).double(), expected, atol=1e-5, rtol=0)


def test_kept_mass_temperature_is_power_sum() -> None:
    logits = random_logits(scale=2.0)
    probs = torch.softmax(logits.double(), dim=-1)
    for tau in (0.7, 0.9):
        expected = (probs ** (1 / tau)).sum(-1)
        torch.testing.assert_close(kept_mass(logits, "temperature", tau).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.88, 0.99])
def test_distortion_aware_nucleus_kept_mass_is_exactly_p(p: float) -> None:
    mass = kept_mass(random_logits(n=128, vocab=500, scale=4.0), "distortion_aware_nucleus", p)
    torch.testing.assert_close(mass.double(), torch.full((128,), p, dtype=torch.float64), atol=1e-5, rtol=0)
    assert match_mass(random_logits(), p, "distortion_aware_nucleus") == p


def test_top_p_kept_mass_is_at_least_p() -> None:
    mass = kept_mass(random_logits(), "top_p", 0.8)
    assert bool((mass >= 0.8 - 1e-6).all()) and bool((mass <= 1 + 1e-6).all())


def test_kept_mass_is_chunk_independent() -> None:
    logits = random_logits(n=50)
    torch.testing.assert_close(kept_mass(logits, "top_p", 0.7, chunk_size=7), kept_mass(logits, "top_p", 0.7))


@pytest.mark.parametrize(("strategy", "tolerance"), [("temperature", 2e-4), ("min_p", 2e-3), ("top_p", 5e-3)])
@pytest.mark.parametrize("target", [0.65, 0.88])
def test_match_mass_hits_the_target_mean(strategy: str, tolerance: float, target: float) -> None:
    logits = random_logits(n=256, vocab=200)
    value = match_mass(logits, target, strategy)
    assert abs(float(kept_mass(logits, strategy, value).mean()) - target) < tolerance


@pytest.mark.parametrize("target", [0.65, 0.88])
def test_match_mass_top_k_returns_the_closest_integer(target: float) -> None:
    logits = random_logits(n=128, vocab=200)
    k = match_mass(logits, target, "top_k")
    assert isinstance(k, int) and 1 <= k <= 200

    def error(value: int) -> float:
        return abs(float(kept_mass(logits, "top_k", value).mean()) - target)

    assert error(k) <= error(k + 1)
    if k > 1:
        assert error(k) <= error(k - 1)


def test_match_mass_out_of_reach_returns_the_range_end() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])  # the top token alone holds > 99.9 % of the mass
    assert match_mass(logits, 0.5, "top_k") == 1


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5, True])
def test_match_mass_rejects_targets_outside_unit_interval(target: float) -> None:
    with pytest.raises(InvalidDecodingArgument, match="target_mass"):
        match_mass(random_logits(), target, "top_p")


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(InvalidDecodingArgument, match="strategy"):
        kept_mass(random_logits(), "typical", 0.9)
    with pytest.raises(InvalidDecodingArgument, match="strategy"):
        generate_kwargs_for("beam", 4)


def test_kept_mass_rejects_non_matrix_logits() -> None:
    with pytest.raises(InvalidDecodingArgument, match="logits"):
        kept_mass(torch.zeros(10), "top_k", 2)


def test_generate_kwargs_switch_other_warpers_off() -> None:
    assert generate_kwargs_for("top_k", 40) == {
        "decoding": "sample",
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 40,
        "top_p": 1.0,
        "min_p": None,
    }
    assert generate_kwargs_for("temperature", 0.9)["top_k"] == 0
    nucleus = generate_kwargs_for("distortion_aware_nucleus", 0.88)
    assert nucleus["decoding"] == "distortion_aware_nucleus" and nucleus["top_p"] == 0.88 and nucleus["top_k"] == 0


def test_encode_prompts_left_pads_token_ids() -> None:
    input_ids, attention_mask = encode_prompts(None, [[5, 6, 7], torch.tensor([8])], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(InvalidDecodingArgument, match="tokenizer"):
        encode_prompts(None, ["a string"])


def test_collect_contexts_returns_raw_logits() -> None:
    model = build_tiny_llama()
    contexts = collect_contexts(model, None, [[5, 6, 7], [8, 9]], num_contexts=20, max_new_tokens=6, seed=1)
    assert contexts.shape == (20, model.config.vocab_size)
    assert contexts.dtype == torch.float32 and bool(torch.isfinite(contexts).all())
    again = collect_contexts(model, None, [[5, 6, 7], [8, 9]], num_contexts=20, max_new_tokens=6, seed=1)
    torch.testing.assert_close(contexts, again)


@pytest.fixture(scope="module")
def tiny_comparison() -> distortion.DistortionComparison:
    model = build_tiny_llama()
    return compare_strategies(
        model,
        None,
        [[5, 6, 7], [8, 9, 10, 11]],
        target_mass=[0.65, 0.88],
        strategies=STRATEGIES,
        num_samples=8,
        max_new_tokens=6,
        num_contexts=48,
        batch_size=5,
        progress=False,
    )


def test_compare_strategies_nucleus_has_zero_distortion_spread(
    tiny_comparison: distortion.DistortionComparison,
) -> None:
    rows = {(row["target_mass"], row["strategy"]): row for row in tiny_comparison.table()}
    assert len(rows) == 2 * len(STRATEGIES)
    for target in (0.65, 0.88):
        nucleus = rows[(target, "distortion_aware_nucleus")]
        assert nucleus["distortion_std"] < 1e-5
        assert nucleus["distortion_mean"] == pytest.approx(-6 * math.log(target), abs=1e-4)
        assert nucleus["sample_mass"] == pytest.approx(target, abs=1e-5)
        assert nucleus["log_ratio_p90"] < 1e-5
        top_k = rows[(target, "top_k")]
        assert top_k["distortion_std"] > 1e-3
        assert top_k["log_ratio_p90"] > 1e-3
        for row in (nucleus, top_k, rows[(target, "top_p")], rows[(target, "temperature")]):
            assert row["num_samples"] == 8
            assert row["num_pairs"] == 2 * 6  # 4 samples per prompt: 6 pairs each
            assert row["context_mass"] == pytest.approx(target, abs=0.05)
            assert row["nll"] > 0 and row["entropy"] > 0


def test_compare_strategies_results_are_serializable(tiny_comparison: distortion.DistortionComparison) -> None:
    document = json.loads(json.dumps(tiny_comparison.to_dict(), allow_nan=False))
    assert document["num_samples"] == 8 and document["max_new_tokens"] == 6
    assert document["prompts"] == [[5, 6, 7], [8, 9, 10, 11]]
    assert len(document["samples"]) == len(document["table"]) == 2 * len(STRATEGIES)
    assert all(len(sample["total_distortion"]) == 8 for sample in document["samples"])
    markdown = tiny_comparison.to_markdown()
    assert markdown.count("\n") == 1 + 2 * len(STRATEGIES) and "distortion_aware_nucleus" in markdown


def test_compare_strategies_uses_the_decoders_distortion(tiny_comparison: distortion.DistortionComparison) -> None:
    for result in tiny_comparison.results:
        assert result.total_distortion.shape == (8,)
        assert result.sample_mass.shape == result.nll.shape == result.entropy.shape == (8,)
        if result.strategy == "top_k":
            # Each step keeps at most the matched mass of the top-k set: log eps >= 0.
            assert bool((result.total_distortion >= 0).all())


def test_plot_histograms_writes_png(tiny_comparison: distortion.DistortionComparison, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = distortion.plot_histograms(tiny_comparison, tmp_path / "sub" / "hist.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = distortion.plot_quality_diversity(tiny_comparison, tmp_path / "sub" / "qd.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
