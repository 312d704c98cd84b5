"""Tests for `TokenProbabilityLogitsProcessor`: exact ratios in both modes, edge cases, validation, generate."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_decoding.errors import InvalidDecodingArgument
from hf_decoding.processors.token_probability import TokenProbabilityLogitsProcessor


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU extra threads make small ops far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scores(batch: int = 3, vocab: int = 50, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


def test_probability_mode_multiplies_probability_exactly():
    scores = _scores()
    ids, ratios = [3, 7, 11], [2.0, 0.5, 3.0]
    out = TokenProbabilityLogitsProcessor(ids, ratios)(None, scores)
    p, q = scores.double().softmax(-1), out.double().softmax(-1)
    torch.testing.assert_close(q[:, ids], p[:, ids] * torch.tensor(ratios, dtype=torch.float64), rtol=1e-5, atol=0)
    others = torch.ones(50, dtype=torch.bool)
    others[ids] = False
    # the other tokens keep their relative probabilities and share the rest of the mass
    scale = q[:, others] / p[:, others]
    torch.testing.assert_close(scale, scale[:, :1].expand_as(scale), rtol=1e-5, atol=0)
    torch.testing.assert_close(q.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0)  # normalised log-probs


def test_logit_mode_is_a_logit_bias_and_matches_the_renormalised_formula():
    scores = _scores()
    r = 5.0
    out = TokenProbabilityLogitsProcessor(4, r, mode="logit")(None, scores)
    expected = scores.clone()
    expected[:, 4] += math.log(r)
    torch.testing.assert_close(out, expected)
    p, q = scores.double().softmax(-1)[:, 4], out.double().softmax(-1)[:, 4]
    torch.testing.assert_close(q / p, r / (1 + (r - 1) * p), rtol=1e-5, atol=0)


def test_infeasible_target_gives_the_chosen_tokens_all_the_mass():
    scores = torch.log(torch.tensor([[0.6, 0.1, 0.3]]))
    out = TokenProbabilityLogitsProcessor([0, 1], 2.0)(None, scores)  # 2·0.7 > 1
    q = out.softmax(-1)
    torch.testing.assert_close(q, torch.tensor([[0.6 / 0.7, 0.1 / 0.7, 0.0]]), atol=1e-6, rtol=0)


def test_ratio_one_is_identity_and_minus_inf_stays():
    scores = _scores()
    scores[0, 5] = -torch.inf
    for mode in ("probability", "logit"):
        out = TokenProbabilityLogitsProcessor([5, 6], 1.0, mode=mode)(None, scores)
        torch.testing.assert_close(out.softmax(-1), scores.softmax(-1), atol=1e-6, rtol=0)
        assert out[0, 5] == -torch.inf
    out = TokenProbabilityLogitsProcessor([5], 10.0)(None, scores)
    assert out[0, 5] == -torch.inf  # zero probability times r is still zero


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["probability", "logit"])
def test_shape_dtype_kept_and_input_not_mutated(dtype, mode):
    scores = _scores().to(dtype)
    before = scores.clone()
    out = TokenProbabilityLogitsProcessor([1, 2], [3.0, 0.25], mode=mode)(None, scores)
    assert out.shape == scores.shape and out.dtype == dtype
    assert torch.equal(scores, before)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(4, 40),
    st.floats(0.05, 20.0),
    st.sampled_from(["probability", "logit"]),
    st.integers(0, 1000),
)
def test_batch_equals_row_by_row_and_rows_keep_a_token(batch, vocab, ratio, mode, seed):
    scores = _scores(batch, vocab, seed, scale=3.0)
    processor = TokenProbabilityLogitsProcessor([0, vocab - 1], ratio, mode=mode)
    out = processor(None, scores)
    rows = torch.cat([processor(None, scores[i : i + 1]) for i in range(batch)])
    torch.testing.assert_close(out, rows)
    assert torch.isfinite(out).any(-1).all()
    if mode == "probability":
        p, q = scores.double().softmax(-1), out.double().softmax(-1)
        target = (p[:, [0, vocab - 1]] * ratio).sum(-1)
        ok = target < 1 - 1e-6
        torch.testing.assert_close(q[ok][:, [0, vocab - 1]], p[ok][:, [0, vocab - 1]] * ratio, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("ratio", [0, -1.0, float("nan"), float("inf"), True, [1.0, 2.0, 3.0], "x"])
def test_bad_ratio(ratio):
    with pytest.raises(InvalidDecodingArgument, match="ratio"):
        TokenProbabilityLogitsProcessor([1, 2], ratio)


@pytest.mark.parametrize("token_ids", [[], [-1], [1, 1], "ab", [1.5, None], [True]])
def test_bad_token_ids(token_ids):
    with pytest.raises(InvalidDecodingArgument, match="token_ids"):
        TokenProbabilityLogitsProcessor(token_ids, 2.0)


def test_bad_mode_and_out_of_vocabulary_id():
    with pytest.raises(InvalidDecodingArgument, match="mode"):
        TokenProbabilityLogitsProcessor(1, 2.0, mode="after")
    with pytest.raises(InvalidDecodingArgument, match="token_ids"):
        TokenProbabilityLogitsProcessor(99, 2.0)(None, _scores(vocab=50))


@pytest.mark.parametrize("mode", ["probability", "logit"])
def test_works_in_plain_generate(tiny_model, prompt, mode):
    forced = 17
    processor = TokenProbabilityLogitsProcessor(forced, 1e9, mode=mode)
    out = tiny_model.generate(**prompt, logits_processor=[processor], do_sample=False, max_new_tokens=4, pad_token_id=0)
    assert (out[:, prompt["input_ids"].shape[1] :] == forced).all()
    # a ratio of 1 changes nothing
    plain = tiny_model.generate(**prompt, do_sample=False, max_new_tokens=4, pad_token_id=0)
    same = tiny_model.generate(
        **prompt,
        do_sample=False,
        max_new_tokens=4,
        pad_token_id=0,
        logits_processor=[TokenProbabilityLogitsProcessor(forced, 1.0, mode=mode)],
    )
    assert torch.equal(plain, same)
