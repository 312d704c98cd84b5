"""Exact checks of the method-agnostic SMC pieces: log-weights, ESS, evidence, resampling, selection."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_particles_toys import one_thread  # noqa: F401  (autouse fixture)

from hf_decoding.errors import InvalidDecodingArgument
from hf_decoding.smc import (
    RESAMPLING_SCHEMES,
    add_log_increments,
    ess,
    get_resampler,
    log_evidence,
    normalize_log_weights,
    offspring_counts,
    resample,
    reset_after_resampling,
    select_particles,
    should_resample,
    stable_ancestors,
)
from hf_decoding.smc.potentials import aggregate_scores, log_potentials

NEG_INF = -math.inf


# ------------------------------------------------------------------------------------------------------- weights
def test_normalize_and_ess_exact():
    lw = torch.log(torch.tensor([[1.0, 1.0, 2.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    w = normalize_log_weights(lw).exp()
    assert torch.allclose(w[0], torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert torch.allclose(w[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(ess(lw), torch.tensor([1 / (0.0625 * 2 + 0.25), 1.0], dtype=torch.float64))


def test_all_neg_inf_group_is_handled():
    lw = torch.tensor([[NEG_INF, NEG_INF], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(normalize_log_weights(lw).exp()[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert ess(lw).tolist() == [0.0, 2.0]
    assert log_evidence(lw)[0].item() == NEG_INF
    assert not torch.isnan(reset_after_resampling(lw)).any()
    for name in RESAMPLING_SCHEMES:
        a = resample(name, lw, torch.Generator().manual_seed(0))
        assert a.shape == (2, 2) and int(a.min()) >= 0 and int(a.max()) <= 1


def test_add_increments_never_nan():
    out = add_log_increments(torch.tensor([[NEG_INF, 0.0]]), torch.tensor([[math.inf, NEG_INF]]))
    assert out.tolist() == [[NEG_INF, NEG_INF]]


def test_should_resample_threshold_semantics():
    uniform = torch.zeros(1, 4, dtype=torch.float64)
    skewed = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01]], dtype=torch.float64))
    assert should_resample(uniform, 1.0).item()  # 1.0 = every step, even a perfectly uniform population
    assert not should_resample(skewed, 0.0).item()  # 0.0 = never
    assert should_resample(skewed, 0.5).item() and not should_resample(uniform, 0.5).item()


def test_reset_after_resampling_keeps_the_evidence():
    lw = torch.tensor([[0.1, -2.0, 1.5]], dtype=torch.float64)
    reset = reset_after_resampling(lw)
    assert torch.allclose(log_evidence(reset), log_evidence(lw))
    assert torch.allclose(reset, reset[:, :1].expand_as(reset))


# ------------------------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize("name", sorted(RESAMPLING_SCHEMES))
def test_resampling_is_unbiased(name):
    weights = torch.tensor([0.05, 0.4, 0.0, 0.3, 0.25], dtype=torch.float64)
    groups = 20000
    lw = weights.log().expand(groups, -1)
    ancestors = resample(name, lw, torch.Generator().manual_seed(1))
    counts = offspring_counts(ancestors, 5).double()  # (G, 5)
    assert torch.all(counts.sum(-1) == 5)
    assert counts[:, 2].sum() == 0  # zero weight: never copied
    mean = counts.mean(0)
    assert torch.allclose(mean, 5 * weights, atol=0.03), (name, mean)


def test_low_variance_schemes_copy_at_least_floor():
    weights = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    for name in ("systematic", "stratified", "residual"):
        for seed in range(20):
            counts = offspring_counts(resample(name, weights.log(), torch.Generator().manual_seed(seed)), 3)
            if name != "stratified":
                assert torch.all(counts >= torch.floor(3 * weights).long())
            assert int(counts.sum()) == 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-20, 5), st.just(NEG_INF)), min_size=1, max_size=7), st.integers(0, 2**31))
def test_resampling_properties(logs, seed):
    lw = torch.tensor([logs], dtype=torch.float64)
    for name in RESAMPLING_SCHEMES:
        a = resample(name, lw, torch.Generator().manual_seed(seed))
        assert a.shape == lw.shape and a.dtype == torch.long
        if not torch.isneginf(lw).all():
            assert not torch.isneginf(lw[0, a[0]]).any(), name  # never picks an impossible particle


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(InvalidDecodingArgument, match=r"multinomial.*residual.*stratified.*systematic"):
        get_resampler("bogus")


def test_same_generator_seed_same_ancestors():
    lw = torch.randn(3, 6, dtype=torch.float64)
    for name in RESAMPLING_SCHEMES:
        a = resample(name, lw, torch.Generator().manual_seed(7))
        b = resample(name, lw, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_stable_ancestors_keeps_survivors_in_place():
    a = torch.tensor([[0, 0, 0, 3, 3], [1, 1, 2, 2, 2]])
    s = stable_ancestors(a)
    assert torch.equal(offspring_counts(s, 5), offspring_counts(a, 5))
    for b in range(2):
        for n in set(a[b].tolist()):
            assert s[b, n] == n


# ----------------------------------------------------------------------------------- exact SMC evidence estimate
def test_smc_evidence_estimate_is_unbiased_on_an_enumerable_model():
    """Two steps over 3 values, potentials G_1(x1), G_2(x1, x2); ESS-triggered systematic resampling.

    E[exp(log Z_hat)] must equal Z = sum_x p(x) G_1(x1) G_2(x1, x2) exactly (up to Monte Carlo error)."""
    p1 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p2 = torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=torch.float64)
    g1 = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64)
    g2 = torch.tensor([[0.1, 0.7, 0.3], [0.9, 0.2, 0.4], [0.5, 0.5, 0.05]], dtype=torch.float64)
    z = sum(p1[a] * g1[a] * p2[a, b] * g2[a, b] for a, b in itertools.product(range(3), range(3))).item()
    for threshold in (0.0, 0.5, 1.0):
        gen = torch.Generator().manual_seed(3)
        groups, n = 40000, 4
        x1 = torch.multinomial(p1, groups * n, replacement=True, generator=gen).view(groups, n)
        lw = add_log_increments(torch.zeros(groups, n, dtype=torch.float64), g1[x1].log())
        need = should_resample(lw, threshold)
        anc = resample("systematic", lw, gen)
        anc = torch.where(need[:, None], anc, torch.arange(n).expand(groups, n))
        lw = reset_after_resampling(lw, need)
        x1 = x1.gather(1, anc)
        x2 = torch.multinomial(p2[x1.reshape(-1)], 1, generator=gen).view(groups, n)
        lw = add_log_increments(lw, g2[x1, x2].log())
        estimate = log_evidence(lw).exp().mean().item()
        assert estimate == pytest.approx(z, rel=0.02), (threshold, estimate, z)


# -------------------------------------------------------------------------------------- potentials and selection
def test_aggregation_modes():
    assert aggregate_scores([0.5, 0.2, 0.9], "last") == 0.9
    assert aggregate_scores([0.5, 0.2, 0.9], "min") == 0.2
    assert aggregate_scores([0.5, 0.2, 0.9], "prod") == pytest.approx(0.09)
    assert aggregate_scores([0.7], "model") == 0.7


def test_weight_transforms():
    s = torch.tensor([0.25, 0.5, 0.0])
    assert torch.allclose(
        log_potentials(s[:2], "logit", 2.0), torch.tensor([math.log(1 / 3) / 2, 0.0], dtype=torch.float64)
    )
    assert log_potentials(s, "log")[2].item() == NEG_INF
    assert torch.allclose(log_potentials(s, "identity", 0.5), torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    assert math.isfinite(log_potentials(torch.tensor([1.0]), "logit").item())  # clamped, as the reference code
    from hf_decoding.errors import RewardModelError

    with pytest.raises(RewardModelError, match="identity"):
        log_potentials(torch.tensor([3.0]), "logit")


def test_selection_methods():
    lw = torch.log(torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64))
    scores = torch.tensor([[0.9, 0.1, 0.2]], dtype=torch.float64)
    assert select_particles("argmax", lw, scores).item() == 0
    draws = [
        select_particles("sample", lw, scores, generator=torch.Generator().manual_seed(s)).item() for s in range(300)
    ]
    assert 0.5 < draws.count(1) / 300 < 0.7
    answers = [["7", "8", "8"]]
    assert select_particles("weighted_vote", lw, scores, answers).item() == 2  # "8" wins 0.9 vs 0.1; best score in it
    with pytest.raises(InvalidDecodingArgument):
        select_particles("vote", lw, scores)
