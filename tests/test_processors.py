"""Property tests of the public logits processors (per-row warpers, distortion-aware nucleus, distortion tracker).

Scalar parameters must reproduce transformers' warpers bit for bit; per-row tensors must equal the scalar
processor applied row by row; the distortion-aware nucleus must keep exactly `top_p` of the mass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hf_decoding import (
    DistortionAwareNucleusLogitsProcessor,
    DistortionTracker,
    InvalidDecodingArgument,
    PerRowMinPLogitsWarper,
    PerRowTemperatureLogitsWarper,
    PerRowTopKLogitsWarper,
    PerRowTopPLogitsWarper,
)
from hf_decoding.processors import distortion_from_scores

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DUMMY_IDS = torch.zeros((1, 1), dtype=torch.long)


def ids_for(scores: torch.Tensor) -> torch.LongTensor:
    return torch.zeros((scores.shape[0], 1), dtype=torch.long)


@st.composite
def score_matrices(
    draw, max_rows: int = 4, min_vocab: int = 2, max_vocab: int = 40, low: float = -20.0, high: float = 20.0
):
    """Random float32 score matrices (B, V) with finite entries."""
    rows = draw(st.integers(1, max_rows))
    vocab = draw(st.integers(min_vocab, max_vocab))
    array = draw(
        arrays(
            np.float32, (rows, vocab), elements=st.floats(low, high, width=32, allow_nan=False, allow_infinity=False)
        )
    )
    return torch.from_numpy(array.copy())


@st.composite
def distinct_score_matrices(draw, max_rows: int = 4, min_vocab: int = 2, max_vocab: int = 40):
    """Score matrices without ties inside a row (entries in [-10, 10])."""
    rows = draw(st.integers(1, max_rows))
    vocab = draw(st.integers(min_vocab, max_vocab))
    out = []
    for _ in range(rows):
        row = draw(
            st.lists(
                st.floats(-10.0, 10.0, width=32, allow_nan=False, allow_infinity=False),
                min_size=vocab,
                max_size=vocab,
                unique=True,
            )
        )
        out.append(row)
    return torch.tensor(out, dtype=torch.float32)


top_ps = st.floats(0.01, 1.0, allow_nan=False)
temperatures = st.floats(0.05, 5.0, allow_nan=False)
min_ps = st.floats(0.0, 1.0, allow_nan=False)


def make_processor(kind: str, value, **kwargs):
    if kind == "temperature":
        return PerRowTemperatureLogitsWarper(value)
    if kind == "top_p":
        return PerRowTopPLogitsWarper(value, **kwargs)
    if kind == "top_k":
        return PerRowTopKLogitsWarper(value, **kwargs)
    if kind == "min_p":
        return PerRowMinPLogitsWarper(value, **kwargs)
    if kind == "nucleus":
        return DistortionAwareNucleusLogitsProcessor(value, **kwargs)
    raise AssertionError(kind)


@st.composite
def processor_cases(draw):
    """(kind, scalar value) for every public warper."""
    kind = draw(st.sampled_from(["temperature", "top_p", "top_k", "min_p", "nucleus"]))
    if kind == "temperature":
        value = draw(temperatures)
    elif kind in ("top_p", "nucleus"):
        value = draw(top_ps)
    elif kind == "top_k":
        value = draw(st.integers(0, 50))
    else:
        value = draw(min_ps)
    return kind, value


def per_row_values(draw, kind: str, rows: int) -> list:
    if kind == "temperature":
        return [draw(temperatures) for _ in range(rows)]
    if kind in ("top_p", "nucleus"):
        return [draw(top_ps) for _ in range(rows)]
    if kind == "top_k":
        return [draw(st.integers(0, 50)) for _ in range(rows)]
    return [draw(min_ps) for _ in range(rows)]


# --- generic properties -------------------------------------------------------------------------------------------


@SETTINGS
@given(case=processor_cases(), scores=score_matrices())
def test_shape_dtype_kept_input_not_mutated_and_one_token_kept(case, scores):
    kind, value = case
    processor = make_processor(kind, value)
    before = scores.clone()
    out = processor(ids_for(scores), scores)
    assert out.shape == scores.shape
    assert out.dtype == scores.dtype
    assert torch.equal(scores, before), "the processor mutated its input"
    assert out is not scores
    assert bool((torch.isfinite(out).sum(-1) >= 1).all()), "a row lost every token"
    assert not bool(torch.isnan(out).any())


@SETTINGS
@given(case=processor_cases(), scores=score_matrices())
def test_batch_equals_row_by_row(case, scores):
    kind, value = case
    processor = make_processor(kind, value)
    batched = processor(ids_for(scores), scores)
    for b in range(scores.shape[0]):
        row = processor(DUMMY_IDS, scores[b : b + 1])
        assert torch.equal(batched[b : b + 1], row), f"row {b} differs between batched and single-row application"


@SETTINGS
@given(data=st.data(), scores=score_matrices())
def test_per_row_tensor_equals_scalar_row_by_row(data, scores):
    kind = data.draw(st.sampled_from(["temperature", "top_p", "top_k", "min_p", "nucleus"]))
    values = per_row_values(data.draw, kind, scores.shape[0])
    dtype = torch.long if kind == "top_k" else torch.float64
    batched = make_processor(kind, torch.tensor(values, dtype=dtype))(ids_for(scores), scores)
    for b, value in enumerate(values):
        single = make_processor(kind, value)(DUMMY_IDS, scores[b : b + 1])
        assert torch.equal(batched[b : b + 1], single), f"{kind}: row {b} with value {value} differs"


@SETTINGS
@given(data=st.data(), scores=score_matrices())
def test_set_values_replaces_parameters(data, scores):
    kind = data.draw(st.sampled_from(["temperature", "top_p", "top_k", "min_p", "nucleus"]))
    first, second = (per_row_values(data.draw, kind, 1)[0] for _ in range(2))
    processor = make_processor(kind, first)
    processor.set_values(second)
    assert torch.equal(processor(ids_for(scores), scores), make_processor(kind, second)(ids_for(scores), scores))


# --- parity with transformers' scalar warpers ------------------------------------------------------------------------


@SETTINGS
@given(temperature=temperatures, scores=score_matrices())
def test_temperature_matches_transformers(temperature, scores):
    expected = TemperatureLogitsWarper(float(temperature))(ids_for(scores), scores)
    assert torch.equal(PerRowTemperatureLogitsWarper(temperature)(ids_for(scores), scores), expected)


@SETTINGS
@given(top_p=top_ps, min_tokens=st.integers(1, 3), scores=score_matrices())
def test_top_p_matches_transformers(top_p, min_tokens, scores):
    expected = TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    got = PerRowTopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    assert torch.equal(got, expected)


@SETTINGS
@given(
    top_p=top_ps,
    min_tokens=st.integers(1, 3),
    prefilter_k=st.sampled_from([2, 8, 64]),
    scores=score_matrices(),
)
def test_top_p_prefilter_matches_transformers(top_p, min_tokens, prefilter_k, scores):
    """A prefilter narrower than the vocabulary (rows decided from the top candidates, the rest sorted) keeps the
    full sort's set, ties and boundary cases included."""
    expected = TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    got = PerRowTopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens, prefilter_k=prefilter_k)(ids_for(scores), scores)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_p_prefilter_decides_most_rows_without_sorting_and_matches_the_sort(monkeypatch, dtype):
    """A 32k vocabulary, rows from peaked to flat, per-row top-p: most rows take the prefilter path, and every row
    equals transformers' full sort."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 12.0, 64)[:, None]
    scores = (torch.randn(64, 32000, generator=generator) * scale).to(dtype)
    top_p = torch.rand(64, generator=generator) * 0.98 + 0.01
    sorted_rows = []
    full_sort = PerRowTopPLogitsWarper._full_sort

    def spy(self, rows_scores, rows_top_p):
        sorted_rows.append(rows_scores.shape[0])
        return full_sort(self, rows_scores, rows_top_p)

    monkeypatch.setattr(PerRowTopPLogitsWarper, "_full_sort", spy)
    got = PerRowTopPLogitsWarper(top_p)(None, scores)
    for row in range(64):
        expected = TopPLogitsWarper(float(top_p[row]))(None, scores[row : row + 1])
        assert torch.equal(got[row : row + 1], expected), row
    if dtype == torch.float32:
        assert sum(sorted_rows) < 32  # the flat rows (wide nuclei) and boundary cases only
    else:
        assert sum(sorted_rows) == 64  # half precision always sorts: its own cumulative sum rounds too coarsely


@SETTINGS
@given(top_k=st.integers(1, 60), min_tokens=st.integers(1, 3), scores=score_matrices())
def test_top_k_matches_transformers(top_k, min_tokens, scores):
    expected = TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    got = PerRowTopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    assert torch.equal(got, expected)


@SETTINGS
@given(
    top_k=st.integers(1, 5),
    scores=arrays(np.float32, (3, 12), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0])).map(torch.from_numpy),
)
def test_top_k_keeps_ties_like_transformers(top_k, scores):
    expected = TopKLogitsWarper(top_k)(ids_for(scores), scores)
    assert torch.equal(PerRowTopKLogitsWarper(top_k)(ids_for(scores), scores), expected)


def test_top_k_zero_keeps_everything():
    scores = torch.randn(2, 10)
    assert torch.equal(PerRowTopKLogitsWarper(0)(ids_for(scores), scores), scores)
    out = PerRowTopKLogitsWarper(torch.tensor([0, 3]))(ids_for(scores), scores)
    assert torch.isfinite(out[0]).all()
    assert int(torch.isfinite(out[1]).sum()) == 3


@SETTINGS
@given(min_p=min_ps, min_tokens=st.integers(1, 3), scores=score_matrices())
def test_min_p_matches_transformers(min_p, min_tokens, scores):
    expected = MinPLogitsWarper(min_p, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    got = PerRowMinPLogitsWarper(min_p, min_tokens_to_keep=min_tokens)(ids_for(scores), scores)
    assert torch.equal(got, expected)


# --- distortion-aware nucleus ----------------------------------------------------------------------------------------


def kept_mass(scores: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Mass of softmax(scores) kept by `out`, a partially kept token counted with its fraction exp(out - in)."""
    probs = torch.softmax(scores.double(), dim=-1)
    fraction = torch.exp(out.double() - scores.double()).clamp(max=1.0)
    fraction = torch.where(torch.isfinite(out), fraction, torch.zeros_like(fraction))
    return (probs * fraction).sum(-1)


@SETTINGS
@given(top_p=top_ps, scores=score_matrices(low=-10.0, high=10.0))
def test_nucleus_kept_mass_is_exactly_top_p(top_p, scores):
    out = DistortionAwareNucleusLogitsProcessor(top_p)(ids_for(scores), scores)
    mass = kept_mass(scores, out)
    assert torch.allclose(mass, torch.full_like(mass, top_p), rtol=0, atol=1e-6), (mass, top_p)
    # Fully kept tokens keep their score; only one (the boundary) may be lowered.
    finite = torch.isfinite(out)
    changed = finite & (out != scores)
    assert bool((changed.sum(-1) <= 1).all())
    assert bool((out[changed] < scores[changed]).all())


@SETTINGS
@given(top_p=top_ps, scores=score_matrices(low=-10.0, high=10.0))
def test_nucleus_logsumexp_shift_is_log_top_p(top_p, scores):
    out = DistortionAwareNucleusLogitsProcessor(top_p)(ids_for(scores), scores)
    expected = torch.logsumexp(scores.double(), -1) + math.log(top_p)
    assert torch.allclose(torch.logsumexp(out.double(), -1), expected, rtol=0, atol=1e-5)


@SETTINGS
@given(
    top_p=top_ps,
    min_tokens=st.integers(1, 6),
    scores=distinct_score_matrices(max_vocab=60),
)
def test_nucleus_prefilter_and_full_sort_agree(top_p, min_tokens, scores):
    # Without ties (topk and sort may order tied tokens differently, both are valid nuclei).
    vocab = scores.shape[-1]
    results = [
        DistortionAwareNucleusLogitsProcessor(top_p, min_tokens_to_keep=min_tokens, prefilter_k=k)(
            ids_for(scores), scores
        )
        for k in (1, 4, vocab)
    ]
    for k, result in zip((1, 4), results[:2], strict=True):
        assert torch.equal(result, results[-1]), f"prefilter_k={k} differs from the full sort"
    kept = torch.isfinite(results[-1]).sum(-1)
    assert bool((kept >= min(min_tokens, vocab)).all()), "min_tokens_to_keep was not honoured"


@SETTINGS
@given(data=st.data(), scores=score_matrices(max_vocab=60, low=-10.0, high=10.0))
def test_nucleus_per_row_top_p_with_mixed_prefilter_paths(data, scores):
    """Rows that fit the prefilter and rows that need the full sort, in one batch."""
    values = [data.draw(top_ps) for _ in range(scores.shape[0])]
    out = DistortionAwareNucleusLogitsProcessor(torch.tensor(values), prefilter_k=2)(ids_for(scores), scores)
    mass = kept_mass(scores, out)
    assert torch.allclose(mass, torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-6)


@SETTINGS
@given(top_p=top_ps, scores=distinct_score_matrices())
def test_nucleus_kept_set_equals_top_p_kept_set(top_p, scores):
    # Away from the boundary the two rules define the same set; float32 vs float64 rounding may differ right at it.
    probs = torch.softmax(scores.double(), -1).sort(-1, descending=True).values
    cumulative = probs.cumsum(-1)
    assume(bool(((cumulative - top_p).abs() > 1e-4).all()))
    nucleus = DistortionAwareNucleusLogitsProcessor(top_p)(ids_for(scores), scores)
    standard = TopPLogitsWarper(top_p)(ids_for(scores), scores)
    for b in range(scores.shape[0]):
        kept_nucleus = set(torch.isfinite(nucleus[b]).nonzero().flatten().tolist())
        kept_standard = set(torch.isfinite(standard[b]).nonzero().flatten().tolist())
        assert kept_nucleus == kept_standard


def test_nucleus_top_p_one_is_identity_and_a_copy():
    scores = torch.randn(3, 17)
    out = DistortionAwareNucleusLogitsProcessor(1.0)(ids_for(scores), scores)
    assert torch.equal(out, scores)
    assert out.data_ptr() != scores.data_ptr()


def test_nucleus_keeps_already_filtered_tokens_filtered():
    scores = torch.tensor([[2.0, 1.0, -float("inf"), 0.5, -float("inf")]])
    out = DistortionAwareNucleusLogitsProcessor(0.999)(ids_for(scores), scores)
    assert torch.isneginf(out[0, [2, 4]]).all()
    assert torch.allclose(kept_mass(scores, out), torch.tensor([0.999], dtype=torch.float64), atol=1e-6)


# --- distortion tracker ----------------------------------------------------------------------------------------------


@SETTINGS
@given(
    temperature=temperatures,
    top_k=st.integers(1, 10),
    scores=score_matrices(),
    per_row=st.booleans(),
)
def test_tracker_records_distortion_and_leaves_scores_unchanged(temperature, top_k, scores, per_row):
    rows = scores.shape[0]
    tau = torch.full((rows,), temperature, dtype=torch.float64) if per_row else temperature
    tracker = DistortionTracker(temperature=tau)
    ids = ids_for(scores)
    before = scores.clone()
    reference_out = tracker.reference(ids, scores)
    assert torch.equal(reference_out, scores)
    warped = TopKLogitsWarper(top_k)(ids, TemperatureLogitsWarper(float(temperature))(ids, reference_out))
    warped_before = warped.clone()
    tracked = tracker(ids, warped)
    assert torch.equal(tracked, warped_before)
    assert tracked.dtype == scores.dtype
    assert torch.equal(scores, before)
    assert tracker.per_step.shape == (rows, 1)
    expected = distortion_from_scores(scores, warped, temperature)
    assert torch.allclose(tracker.per_step[:, 0], expected)
    # Definitional form: -log sum_{kept} softmax(scores) ** (1 / tau).
    probs = torch.softmax(scores.double(), -1)
    definitional = -torch.log((probs ** (1 / temperature) * torch.isfinite(warped)).sum(-1))
    assert torch.allclose(tracker.per_step[:, 0].double(), definitional, atol=1e-4, rtol=1e-4)
    assert bool((tracker.per_step >= -1e-4).all()) or temperature > 1
    assert torch.allclose(tracker.total, tracker.per_step.sum(-1))


@SETTINGS
@given(scores=score_matrices(), top_p=top_ps)
def test_tracker_batch_equals_row_by_row(scores, top_p):
    batched = DistortionTracker()
    ids = ids_for(scores)
    batched(ids, TopPLogitsWarper(top_p)(ids, batched.reference(ids, scores)))
    for b in range(scores.shape[0]):
        single = DistortionTracker()
        row = scores[b : b + 1]
        single(DUMMY_IDS, TopPLogitsWarper(top_p)(DUMMY_IDS, single.reference(DUMMY_IDS, row)))
        assert torch.allclose(batched.per_step[b], single.per_step[0], atol=1e-6)


def test_tracker_accumulates_steps_and_resets():
    tracker = DistortionTracker()
    ids = torch.zeros((2, 1), dtype=torch.long)
    for _ in range(3):
        scores = torch.randn(2, 8)
        tracker(ids, TopKLogitsWarper(2)(ids, tracker.reference(ids, scores)))
    assert tracker.per_step.shape == (2, 3)
    assert bool((tracker.per_step > 0).all())
    assert torch.allclose(tracker.total, tracker.per_step.sum(-1))
    tracker.reset()
    assert tracker.per_step.numel() == 0


def test_tracker_without_reference_raises():
    tracker = DistortionTracker()
    with pytest.raises(RuntimeError, match="reference"):
        tracker(DUMMY_IDS, torch.randn(1, 4))


# --- bad inputs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "name", "value"),
    [
        (lambda v: PerRowTopPLogitsWarper(v), "top_p", 0.0),
        (lambda v: PerRowTopPLogitsWarper(v), "top_p", 1.5),
        (lambda v: PerRowTopPLogitsWarper(v), "top_p", -0.2),
        (lambda v: PerRowTopPLogitsWarper(v), "top_p", torch.tensor([0.5, 1.2])),
        (lambda v: DistortionAwareNucleusLogitsProcessor(v), "top_p", 0.0),
        (lambda v: DistortionAwareNucleusLogitsProcessor(v), "top_p", 1.01),
        (lambda v: DistortionAwareNucleusLogitsProcessor(v), "top_p", float("nan")),
        (lambda v: PerRowTemperatureLogitsWarper(v), "temperature", -1.0),
        (lambda v: PerRowTemperatureLogitsWarper(v), "temperature", 0.0),
        (lambda v: PerRowTemperatureLogitsWarper(v), "temperature", torch.tensor([1.0, -0.5])),
        (lambda v: PerRowTopKLogitsWarper(v), "top_k", -3),
        (lambda v: PerRowTopKLogitsWarper(v), "top_k", 2.5),
        (lambda v: PerRowTopKLogitsWarper(v), "top_k", torch.tensor([1.0, 2.5])),
        (lambda v: PerRowMinPLogitsWarper(v), "min_p", -0.1),
        (lambda v: PerRowMinPLogitsWarper(v), "min_p", 1.5),
        (lambda v: PerRowTopPLogitsWarper(v), "top_p", True),
        (lambda v: PerRowTemperatureLogitsWarper(v), "temperature", "hot"),
    ],
)
def test_bad_parameters_raise_invalid_decoding_argument(factory, name, value):
    with pytest.raises(InvalidDecodingArgument) as excinfo:
        factory(value)
    assert isinstance(excinfo.value, ValueError)
    assert f"`{name}`" in str(excinfo.value)


@pytest.mark.parametrize(
    ("processor", "name"),
    [
        (PerRowTemperatureLogitsWarper(torch.tensor([0.5, 1.0])), "temperature"),
        (PerRowTopPLogitsWarper(torch.tensor([0.5, 0.9])), "top_p"),
        (PerRowTopKLogitsWarper(torch.tensor([1, 2])), "top_k"),
        (PerRowMinPLogitsWarper(torch.tensor([0.1, 0.2])), "min_p"),
        (DistortionAwareNucleusLogitsProcessor(torch.tensor([0.5, 0.9])), "top_p"),
    ],
)
def test_wrong_number_of_rows_raises(processor, name):
    scores = torch.randn(3, 10)
    with pytest.raises(InvalidDecodingArgument) as excinfo:
        processor(ids_for(scores), scores)
    assert isinstance(excinfo.value, ValueError)
    assert f"`{name}`" in str(excinfo.value)
    assert "3 rows" in str(excinfo.value)


@pytest.mark.parametrize("kwargs", [{"min_tokens_to_keep": 0}, {"prefilter_k": 0}, {"min_tokens_to_keep": 1.5}])
def test_nucleus_bad_options_raise(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InvalidDecodingArgument, match=name):
        DistortionAwareNucleusLogitsProcessor(0.9, **kwargs)


def test_nucleus_per_row_top_p_one_leaves_row_unchanged():
    # Tokens of negligible mass: the float64 cumulative sum reaches 1 before them.
    scores = torch.tensor([[0.0, -40.0, -45.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = DistortionAwareNucleusLogitsProcessor(torch.tensor([1.0, 0.5]))(ids_for(scores), scores)
    assert torch.equal(out[0], scores[0])
    assert torch.equal(out[0:1], DistortionAwareNucleusLogitsProcessor(1.0)(DUMMY_IDS, scores[0:1]))
    assert torch.allclose(kept_mass(scores[1:], out[1:]), torch.tensor([0.5], dtype=torch.float64), atol=1e-12)
