"""AutoDeco heads and losses: exact values, the soft top-p's hard limit, top-K vs full vocabulary, chunking."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_decoding.autodeco import AutoDecoConfig, AutoDecoHeads, AutoDecoLossConfig, chunked_autodeco_loss
from hf_decoding.autodeco.heads import probability_features
from hf_decoding.autodeco.losses import (
    dft_weights,
    easy_token_drop_mask,
    hard_top_p_log_probs,
    soft_top_p_log_probs,
    temperature_log_probs,
)
from hf_decoding.errors import InvalidDecodingArgument
from hf_decoding.processors import PerRowTemperatureLogitsWarper, PerRowTopPLogitsWarper

H = 8


def _heads(seed: int = 0, **kwargs: object) -> AutoDecoHeads:
    heads = AutoDecoHeads(AutoDecoConfig(hidden_size=H, head_hidden_size=16, **kwargs))
    heads.reset_parameters(seed)
    return heads


def test_probability_features_match_definitions() -> None:
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]])
    stats = probability_features(probs.log())
    entropy = -(probs * (probs + 1e-8).log()).sum()
    expected = torch.tensor([0.5, float(entropy), float(probs.var()), 0.95])
    torch.testing.assert_close(stats[0], expected, rtol=1e-5, atol=1e-6)


def test_head_shapes_and_official_parameter_names() -> None:
    heads = _heads()
    assert sorted(heads.state_dict()) == [
        "temp_head.mlp.0.bias",
        "temp_head.mlp.0.weight",
        "temp_head.mlp.2.bias",
        "temp_head.mlp.2.weight",
        "top_p_head.mlp.0.bias",
        "top_p_head.mlp.0.weight",
        "top_p_head.mlp.2.bias",
        "top_p_head.mlp.2.weight",
    ]
    assert heads.top_p_head.mlp[0].in_features == H + 1 + 4
    out = heads(torch.randn(3, 5, H), torch.randn(3, 5, 11))
    assert out.temperature.shape == out.top_p.shape == (3, 5)
    assert bool((out.temperature > 0).all() and (out.temperature < 2).all())
    assert bool((out.top_p > 0).all() and (out.top_p < 1).all())
    assert _heads(use_enhanced_features=False).top_p_head.mlp[0].in_features == H + 1


def test_reset_parameters_is_seeded() -> None:
    a, b, c = _heads(1), _heads(1), _heads(2)
    assert torch.equal(a.temp_head.mlp[0].weight, b.temp_head.mlp[0].weight)
    assert not torch.equal(a.temp_head.mlp[0].weight, c.temp_head.mlp[0].weight)


def test_init_predictions_are_exact() -> None:
    heads = _heads()
    heads.init_predictions(temperature=0.7, top_p=0.9)
    out = heads(torch.randn(4, H) * 10, torch.randn(4, 13))
    torch.testing.assert_close(out.temperature, torch.full((4,), 0.7))
    torch.testing.assert_close(out.top_p, torch.full((4,), 0.9))
    with pytest.raises(InvalidDecodingArgument, match="top_p"):
        heads.init_predictions(top_p=1.0)


def test_disabled_heads_predict_neutral_values() -> None:
    out = _heads(enable_temperature_head=False, enable_top_p_head=False)(torch.randn(2, H), torch.randn(2, 9))
    assert torch.equal(out.temperature, torch.ones(2)) and torch.equal(out.top_p, torch.ones(2))


def test_temperature_log_probs() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    t = torch.tensor([0.5])
    expected = torch.log_softmax(logits / 0.5, -1)[0, 1]
    torch.testing.assert_close(temperature_log_probs(logits, t, torch.tensor([1]))[0], expected)


def test_soft_top_p_exclusive_limit_is_hard_top_p_and_inclusive_drops_boundary() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    logits = probs.log()
    t, p = torch.ones(1), torch.tensor([0.7])
    hard = [hard_top_p_log_probs(logits, t, p, torch.tensor([y]))[0] for y in range(3)]
    # Hard top-p at 0.7 keeps {0.5, 0.3} (the crossing token) -> renormalised 0.625 / 0.375.
    torch.testing.assert_close(torch.stack(hard[:2]).exp(), torch.tensor([0.625, 0.375]))
    assert hard[2] == -math.inf
    exclusive = [soft_top_p_log_probs(logits, t, p, torch.tensor([y]), steepness=1e4, top_k=None)[0] for y in range(3)]
    torch.testing.assert_close(torch.stack(exclusive[:2]), torch.stack(hard[:2]), atol=1e-5, rtol=0)
    assert exclusive[2] < -500
    inclusive = [
        soft_top_p_log_probs(logits, t, p, torch.tensor([y]), steepness=1e4, cumsum="inclusive", top_k=None)[0]
        for y in range(3)
    ]
    torch.testing.assert_close(inclusive[0], torch.tensor(0.0), atol=1e-5, rtol=0)  # only the top token survives
    assert inclusive[1] < -500
    # At the paper's alpha = 30 the inclusive mask is leaky: the overage-0.1 token keeps exp(-3) of its mass.
    leaky = soft_top_p_log_probs(logits, t, p, torch.tensor([1]), steepness=30.0, cumsum="inclusive", top_k=None)
    expected = math.log(0.3 * math.exp(-3) / (0.5 + 0.3 * math.exp(-3) + 0.2 * math.exp(-30 * 0.3)))
    assert abs(float(leaky[0]) - expected) < 1e-4


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.floats(0.3, 1.8),
    top_p=st.floats(0.05, 0.99),
)
def test_soft_top_p_limit_matches_the_inference_warpers(seed: int, temperature: float, top_p: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 40, generator=generator) * 3
    t = torch.full((2,), temperature)
    p = torch.full((2,), top_p)
    warped = PerRowTopPLogitsWarper(p)(None, PerRowTemperatureLogitsWarper(t)(None, logits))
    reference = torch.log_softmax(warped, -1)  # what decoding samples from
    probs = torch.softmax(logits / temperature, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    exclusive = (sorted_probs.cumsum(-1) - sorted_probs).scatter(-1, order, sorted_probs.cumsum(-1) - sorted_probs)
    for y in range(40):
        labels = torch.full((2,), y)
        soft = soft_top_p_log_probs(logits, t, p, labels, steepness=1e5, top_k=None)
        for row in range(2):
            if bool(((exclusive[row] - top_p).abs() < 2e-4).any()):
                # A token of this row within 2e-4 of the boundary: a float tie decides its side, and the soft mask
                # (width 1/steepness) leaks part of its mass into the row's normaliser, shifting every label.
                continue
            if torch.isfinite(reference[row, y]):
                assert abs(float(soft[row] - reference[row, y])) < 1e-3
            else:
                assert float(soft[row]) < -9  # mask exp(-1e5 * overage) with overage >= 1e-4


def test_top_k_candidates_match_full_vocabulary() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=generator) * 4
    t = torch.rand(6, generator=generator) + 0.5
    p = torch.rand(6, generator=generator) * 0.9 + 0.05
    labels = torch.randint(0, 300, (6,), generator=generator)
    full = soft_top_p_log_probs(logits, t, p, labels, top_k=None)
    # K = V is the full computation.
    torch.testing.assert_close(soft_top_p_log_probs(logits, t, p, labels, top_k=300), full)
    # A small K: candidate terms are exact, rows whose nucleus reaches the tail fall back to the full vocabulary,
    # and the aggregated tail is an upper bound that vanishes in the hard limit.
    approx = soft_top_p_log_probs(logits, t, p, labels, top_k=8)
    assert bool((approx >= full - 1e-5).all())
    hard_full = soft_top_p_log_probs(logits, t, p, labels, top_k=None, steepness=1e5)
    hard_k = soft_top_p_log_probs(logits, t, p, labels, top_k=8, steepness=1e5)
    finite = hard_full > -100
    torch.testing.assert_close(hard_k[finite], hard_full[finite], atol=1e-4, rtol=0)
    # A top-p above the candidate mass forces the exact fallback.
    forced = soft_top_p_log_probs(logits, t, torch.full((6,), 0.999), labels, top_k=2)
    torch.testing.assert_close(forced, soft_top_p_log_probs(logits, t, torch.full((6,), 0.999), labels, top_k=None))


def test_soft_top_p_gradients_reach_temperature_and_top_p() -> None:
    logits = torch.randn(4, 20)
    t = torch.full((4,), 0.8, requires_grad=True)
    p = torch.full((4,), 0.5, requires_grad=True)
    soft_top_p_log_probs(logits, t, p, torch.tensor([0, 3, 5, 7]), top_k=5).sum().backward()
    assert t.grad is not None and p.grad is not None and float(p.grad.abs().sum()) > 0


def test_dft_weights_and_easy_mask() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(dft_weights(logits, labels, "base"), torch.softmax(logits, -1)[[0, 1], [0, 2]])
    torch.testing.assert_close(dft_weights(logits, labels, "none"), torch.ones(2))
    t = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(
        dft_weights(logits, labels, "scaled", t), torch.softmax(logits / t[:, None], -1)[[0, 1], [0, 2]]
    )
    drop = easy_token_drop_mask(logits, labels, torch.tensor([0.1, 0.1]), 0.6)
    assert drop.tolist() == [True, False]  # only row 0 is easy (argmax == label)
    assert easy_token_drop_mask(logits, labels, torch.tensor([0.9, 0.1]), 0.6).tolist() == [False, False]


def _loss_inputs(n: int = 11, vocab: int = 30):
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(n, H, generator=generator)
    logits = torch.randn(n, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (n,), generator=generator)
    uniform = torch.rand(n, generator=generator)
    return hidden, logits, labels, uniform


def test_chunked_loss_equals_one_chunk_in_value_and_gradient() -> None:
    hidden, logits, labels, uniform = _loss_inputs()
    results = []
    for chunk in (3, 1000):
        heads = _heads()
        config = AutoDecoLossConfig(chunk_size=chunk, top_k_candidates=8)
        loss = chunked_autodeco_loss(heads, hidden, labels, lambda h, pos: logits[pos], config, uniform)
        loss.loss.backward()
        results.append((loss, [p.grad.clone() for p in heads.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.temperature_loss, b.temperature_loss)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)


def test_loss_matches_hand_computation() -> None:
    hidden, logits, labels, uniform = _loss_inputs(n=5)
    heads = _heads()
    config = AutoDecoLossConfig(top_k_candidates=None, easy_token_mask_prob=0.0)
    out = chunked_autodeco_loss(heads, hidden, labels, lambda h, pos: logits[pos], config, uniform)
    predictions = heads(hidden, logits)
    weights = torch.softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    t_loss = -(weights * temperature_log_probs(logits, predictions.temperature, labels)).mean()
    p_loss = -(
        weights * soft_top_p_log_probs(logits, predictions.temperature, predictions.top_p, labels, top_k=None)
    ).mean()
    torch.testing.assert_close(out.temperature_loss, t_loss)
    torch.testing.assert_close(out.top_p_loss, p_loss)
    torch.testing.assert_close(out.loss, t_loss + p_loss)


def test_top_p_loss_trains_the_temperature_head_unless_detached() -> None:
    hidden, logits, labels, uniform = _loss_inputs()
    for detach, expect_grad in ((False, True), (True, False)):
        heads = _heads()
        config = AutoDecoLossConfig(detach_temperature_in_top_p_loss=detach)
        out = chunked_autodeco_loss(
            heads, hidden, labels, lambda h, pos: logits[pos], config, uniform, train_temperature=False
        )
        out.loss.backward()
        grad = heads.temp_head.mlp[0].weight.grad
        assert (grad is not None and float(grad.abs().sum()) > 0) == expect_grad


def test_loss_config_validation() -> None:
    with pytest.raises(InvalidDecodingArgument, match="cumsum"):
        AutoDecoLossConfig(cumsum="both")
    with pytest.raises(InvalidDecodingArgument, match="dft_weight"):
        AutoDecoLossConfig(dft_weight="x")
