"""`out.distortion` checked against independent recomputations from `out.logits` and `out.scores`.

d_t = -log Z_t, Z_t = sum_{v kept} p_t(v) ** (1 / tau): computed here both as LSE(logits) / tau - LSE(scores) and in
its definitional form from softmax(logits), for every transformers warper, combinations, repetition penalty, the
distortion-aware nucleus and the `DistortionTracker` used in plain `generate`.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EOS, build_tiny_llama
from transformers import GenerationConfig, LlamaForCausalLM
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import hf_decoding
from hf_decoding import (
    DistortionAwareNucleusLogitsProcessor,
    DistortionTracker,
    PerRowTemperatureLogitsWarper,
    PerRowTopPLogitsWarper,
)

MAX_NEW = 10


@pytest.fixture(scope="module")
def sharp_model() -> LlamaForCausalLM:
    """The tiny Llama with a 3x sharper output layer: the truncation warpers then remove a good share of tokens."""
    model = build_tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return hf_decoding.enable(model)


def generate(model, prompt, seed=0, decoding="sample", **kwargs):
    torch.manual_seed(seed)
    return model.generate(
        **prompt,
        decoding=decoding,
        max_new_tokens=MAX_NEW,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **kwargs,
    )


def alive_mask(sequences: torch.Tensor, prompt_len: int, steps: int) -> torch.Tensor:
    """(B, steps): True where the row had not emitted EOS before that step."""
    new = sequences[:, prompt_len : prompt_len + steps]
    eos_before = torch.cumsum((new == EOS).long(), dim=-1) - (new == EOS).long()
    return eos_before == 0


def stacked(out):
    return torch.stack(out.logits, dim=1), torch.stack(out.scores, dim=1)  # (B, T, V) each


def lse_form(logits, scores, tau):
    return torch.logsumexp(logits.double(), -1) / tau - torch.logsumexp(scores.double(), -1)


def definitional_form(logits, scores, tau):
    """-log sum_{v: scores_v > -inf} softmax(logits)_v ** (1 / tau), in float64."""
    probs = torch.softmax(logits.double(), -1)
    if isinstance(tau, torch.Tensor):  # per-row temperatures of shape (B, 1): broadcast over (B, T, V)
        tau = tau[..., None]
    kept = torch.isfinite(scores)
    return -torch.log((probs ** (1.0 / tau) * kept).sum(-1))


WARPER_SETTINGS = {
    "temperature_0.7": {"temperature": 0.7, "top_k": 0},
    "temperature_1.3": {"temperature": 1.3, "top_k": 0},
    "top_k_5": {"top_k": 5},
    "top_p_0.8": {"top_p": 0.8, "top_k": 0},
    "min_p_0.2": {"min_p": 0.2, "top_k": 0},
    "typical_p_0.7": {"typical_p": 0.7, "top_k": 0},
    "epsilon_0.02": {"epsilon_cutoff": 0.02, "top_k": 0},
    "eta_0.02": {"eta_cutoff": 0.02, "top_k": 0},
    "top_h_0.5": {"top_h": 0.5, "top_k": 0},
    "default_top_k_50": {},
    "temperature_top_k_top_p": {"temperature": 0.8, "top_k": 10, "top_p": 0.9},
    "temperature_min_p_typical": {"temperature": 1.2, "min_p": 0.1, "typical_p": 0.9, "top_k": 0},
    "top_k_top_p_epsilon": {"top_k": 20, "top_p": 0.95, "epsilon_cutoff": 0.01},
}


def test_transformers_has_top_h():
    assert hasattr(GenerationConfig(), "top_h")
    assert GenerationConfig(top_h=0.5).top_h == 0.5


@pytest.mark.parametrize("name", list(WARPER_SETTINGS))
def test_per_step_matches_independent_computation(sharp_model, prompt, name):
    kwargs = WARPER_SETTINGS[name]
    tau = kwargs.get("temperature", 1.0)
    out = generate(sharp_model, prompt, do_sample=True, **kwargs)
    logits, scores = stacked(out)
    batch, steps, vocab = logits.shape
    alive = alive_mask(out.sequences, prompt["input_ids"].shape[1], steps)
    per_step = out.distortion.per_step
    assert per_step.shape == (batch, steps)

    expected_lse = torch.where(alive, lse_form(logits, scores, tau), 0.0)
    expected_def = torch.where(alive, definitional_form(logits, scores, tau), 0.0)
    assert torch.allclose(per_step.double(), expected_lse, atol=1e-5, rtol=0)
    assert torch.allclose(per_step.double(), expected_def, atol=1e-5, rtol=0)
    assert torch.equal(out.distortion.total, per_step.sum(-1))
    assert out.cost.generated_tokens == int(alive.sum())

    # The setting really changed the distribution, so the checks above are not about zeros.
    kept = torch.isfinite(scores).sum(-1)
    if tau != 1.0:
        assert bool((per_step[alive] != 0).all())
    else:
        assert bool((kept[alive] < vocab).any()), f"{name} never truncated anything"
        assert bool((per_step[alive] >= 0).all()), "truncation alone cannot give negative distortion"
        assert bool((per_step[alive] > 0).any())
    if tau < 1.0 and kwargs.get("top_k") == 0 and len(kwargs) == 2:
        assert bool((per_step[alive] > 0).all())  # sum p^(1/tau) < 1 for tau < 1
    if tau > 1.0 and len(kwargs) == 2:
        assert bool((per_step[alive] < 0).all())  # sum p^(1/tau) > 1 for tau > 1


def test_steps_after_finish_are_zero(sharp_model, prompt):
    prompt_len = prompt["input_ids"].shape[1]
    for seed in range(60):
        out = generate(sharp_model, prompt, seed=seed, do_sample=True, top_k=5)
        alive = alive_mask(out.sequences, prompt_len, len(out.scores))
        # One row finished early, another ran to the end.
        if bool(alive.all(-1).any()) and bool((~alive).any()):
            break
    else:
        pytest.fail("no seed where one row finished early while another continued")
    per_step = out.distortion.per_step
    assert bool((per_step[~alive] == 0).all())
    assert bool((per_step[alive] > 0).all())
    assert torch.equal(out.distortion.total, per_step.sum(-1))
    finished_row = int((~alive).any(-1).nonzero()[0])
    assert out.distortion.total[finished_row] == per_step[finished_row, alive[finished_row]].sum()


@pytest.mark.parametrize("kwargs", [{}, {"repetition_penalty": 1.4}, {"temperature": 0.5, "top_k": 3}])
def test_greedy_has_zero_distortion(sharp_model, prompt, kwargs):
    out = generate(sharp_model, prompt, do_sample=False, **kwargs)
    assert out.distortion.per_step.shape == (3, len(out.scores))
    assert bool((out.distortion.per_step == 0).all())
    assert bool((out.distortion.total == 0).all())


def _repetition_penalty_takes_per_row_ignore_lengths() -> bool:
    """Releases before transformers 5.18 accept only an int `prompt_ignore_length` (checked: 5.17 rejects a tensor)."""
    try:
        RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=torch.tensor([0, 1]))
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.skipif(
    not _repetition_penalty_takes_per_row_ignore_lengths(),
    reason="this transformers' RepetitionPenaltyLogitsProcessor takes only an int prompt_ignore_length, so the "
    "reference penalty with per-row left padding cannot be built",
)
@pytest.mark.parametrize("kwargs", [{"temperature": 0.7, "top_k": 0}, {"top_p": 0.8, "top_k": 0}, {"top_k": 8}])
def test_repetition_penalty_uses_penalised_distribution(sharp_model, prompt, kwargs):
    penalty = 1.5
    tau = kwargs.get("temperature", 1.0)
    out = generate(sharp_model, prompt, do_sample=True, repetition_penalty=penalty, **kwargs)
    prompt_len = prompt["input_ids"].shape[1]
    logits, scores = stacked(out)
    steps = logits.shape[1]
    # transformers skips the left padding of each prompt when it penalises repeated tokens.
    padding_lengths = (prompt["attention_mask"] != 0).int().argmax(dim=1)
    processor = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=padding_lengths)
    penalised = torch.stack(
        [processor(out.sequences[:, : prompt_len + t], logits[:, t].clone()) for t in range(steps)], dim=1
    )
    assert not torch.equal(penalised, logits)
    alive = alive_mask(out.sequences, prompt_len, steps)
    per_step = out.distortion.per_step.double()
    assert torch.allclose(per_step, torch.where(alive, lse_form(penalised, scores, tau), 0.0), atol=1e-5, rtol=0)
    assert torch.allclose(
        per_step, torch.where(alive, definitional_form(penalised, scores, tau), 0.0), atol=1e-5, rtol=0
    )
    # The raw (unpenalised) logits would give something else: the test can tell the two apart.
    raw = torch.where(alive, definitional_form(logits, scores, tau), 0.0)
    assert not torch.allclose(per_step, raw, atol=1e-3, rtol=0)


# --- distortion-aware nucleus -----------------------------------------------------------------------------------------


def nucleus_kept_mass(logits, scores):
    """Mass of softmax(logits) kept by `scores`, the boundary token counted with the fraction exp(scores - logits)."""
    probs = torch.softmax(logits.double(), -1)
    fraction = torch.exp(scores.double() - logits.double()).clamp(max=1.0)
    fraction = torch.where(torch.isfinite(scores), fraction, torch.zeros_like(fraction))
    return (probs * fraction).sum(-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_distortion_aware_nucleus_per_step_is_minus_log_top_p(sharp_model, prompt, seed):
    top_p = 0.8
    out = generate(
        sharp_model, prompt, seed=seed, decoding="distortion_aware_nucleus", do_sample=True, top_p=top_p, top_k=0
    )
    logits, scores = stacked(out)
    steps = logits.shape[1]
    alive = alive_mask(out.sequences, prompt["input_ids"].shape[1], steps)
    per_step = out.distortion.per_step
    assert torch.allclose(per_step, torch.where(alive, -math.log(top_p), 0.0), atol=1e-5, rtol=0)
    mass = nucleus_kept_mass(logits, scores)
    assert torch.allclose(mass[alive], torch.full_like(mass[alive], top_p), atol=1e-5, rtol=0)
    assert torch.allclose(per_step.double(), torch.where(alive, lse_form(logits, scores, 1.0), 0.0), atol=1e-5, rtol=0)
    # The boundary token really was cut (some steps keep a fraction of a token), unlike standard top-p.
    partial = torch.isfinite(scores) & (scores < logits - 1e-4)
    assert bool(partial[alive].any())
    assert torch.equal(out.distortion.total, per_step.sum(-1))


def test_distortion_aware_nucleus_with_temperature(sharp_model, prompt):
    """With temperature: d_t = -log p - log sum_v p(v) ** (1 / tau) (the docstring's decomposition)."""
    top_p, tau = 0.8, 0.7
    out = generate(
        sharp_model, prompt, decoding="distortion_aware_nucleus", do_sample=True, top_p=top_p, top_k=0, temperature=tau
    )
    logits, scores = stacked(out)
    alive = alive_mask(out.sequences, prompt["input_ids"].shape[1], logits.shape[1])
    probs = torch.softmax(logits.double(), -1)
    expected = -math.log(top_p) - torch.log((probs ** (1 / tau)).sum(-1))
    per_step = out.distortion.per_step.double()
    assert torch.allclose(per_step, torch.where(alive, expected, 0.0), atol=1e-5, rtol=0)
    assert torch.allclose(per_step, torch.where(alive, lse_form(logits, scores, tau), 0.0), atol=1e-5, rtol=0)


def _full_length_totals(model, decoding, seed, top_p):
    single = {"input_ids": torch.tensor([[1, 5, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    torch.manual_seed(seed)
    out = model.generate(
        **single,
        decoding=decoding,
        do_sample=True,
        top_p=top_p,
        top_k=0,
        max_new_tokens=8,
        num_return_sequences=24,
        return_dict_in_generate=True,
    )
    alive = alive_mask(out.sequences, 5, out.distortion.per_step.shape[1])
    full = alive.all(-1)
    assert int(full.sum()) >= 6, "too few equal-length samples"
    return out.distortion.total[full], out.sequences[full]


def test_distortion_aware_nucleus_has_zero_spread_standard_top_p_does_not(sharp_model):
    top_p = 0.8
    totals, sequences = _full_length_totals(sharp_model, "distortion_aware_nucleus", 0, top_p)
    assert len({tuple(s.tolist()) for s in sequences}) > 1, "the samples should differ"
    assert float(totals.std()) < 1e-5
    assert torch.allclose(totals, torch.full_like(totals, -8 * math.log(top_p)), atol=1e-4)

    standard, _ = _full_length_totals(sharp_model, "sample", 0, top_p)
    assert float(standard.std()) > 1e-3


# --- DistortionTracker in plain transformers generate ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_tracker_in_plain_generate_matches_our_loop(sharp_model, prompt, seed):
    tau, k = 0.7, 10
    tracker = DistortionTracker(temperature=tau)
    torch.manual_seed(seed)
    plain = sharp_model.generate(  # no `decoding`: transformers' own sampling path
        **prompt,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW,
        logits_processor=[tracker.reference, TemperatureLogitsWarper(tau), TopKLogitsWarper(k), tracker],
    )
    ours = generate(sharp_model, prompt, seed=seed, do_sample=True, temperature=tau, top_k=k)
    assert torch.equal(plain, ours.sequences)
    steps = ours.distortion.per_step.shape[1]
    assert tracker.per_step.shape == (3, steps)
    alive = alive_mask(ours.sequences, prompt["input_ids"].shape[1], steps)
    assert torch.allclose(torch.where(alive, tracker.per_step, 0.0), ours.distortion.per_step, atol=1e-6, rtol=0)
    assert bool((tracker.per_step[alive] != 0).all())


def test_tracker_with_distortion_aware_nucleus_in_plain_generate(sharp_model, prompt):
    tracker = DistortionTracker()
    torch.manual_seed(0)
    sharp_model.generate(
        **prompt,
        do_sample=True,
        top_k=0,
        max_new_tokens=6,
        logits_processor=[tracker.reference, DistortionAwareNucleusLogitsProcessor(0.7), tracker],
    )
    assert tracker.per_step.shape[0] == 3
    assert torch.allclose(tracker.per_step, torch.full_like(tracker.per_step, -math.log(0.7)), atol=1e-5)


def test_per_row_warpers_in_our_loop(sharp_model, prompt):
    """User-supplied per-row warpers are accounted with each row's own temperature."""
    temperature = torch.tensor([0.5, 1.0, 1.5])
    out = generate(
        sharp_model,
        prompt,
        do_sample=True,
        top_k=0,
        logits_processor=[
            PerRowTemperatureLogitsWarper(temperature),
            PerRowTopPLogitsWarper(torch.tensor([0.9, 0.7, 1.0])),
        ],
    )
    logits, scores = stacked(out)
    alive = alive_mask(out.sequences, prompt["input_ids"].shape[1], logits.shape[1])
    tau = temperature.double()[:, None]
    per_step = out.distortion.per_step.double()
    assert torch.allclose(per_step, torch.where(alive, lse_form(logits, scores, tau), 0.0), atol=1e-5, rtol=0)
    assert torch.allclose(per_step, torch.where(alive, definitional_form(logits, scores, tau), 0.0), atol=1e-5, rtol=0)
    # Row 2 (tau 1.5, no truncation) has negative distortion, row 0 (tau 0.5) positive.
    assert bool((per_step[0][alive[0]] > 0).all())
    assert bool((per_step[2][alive[2]] < 0).all())


def test_standard_top_p_kept_mass_is_at_least_top_p(sharp_model, prompt):
    """Sanity check of the independent helper: standard top-p keeps >= p, so its distortion is in [0, -log p]."""
    out = generate(sharp_model, prompt, do_sample=True, top_p=0.8, top_k=0)
    logits, scores = stacked(out)
    alive = alive_mask(out.sequences, prompt["input_ids"].shape[1], logits.shape[1])
    mass = nucleus_kept_mass(logits, scores)[alive]
    assert bool((mass >= 0.8 - 1e-6).all())
    per_step = out.distortion.per_step[alive]
    assert bool((per_step <= -math.log(0.8) + 1e-5).all())
    reference = TopPLogitsWarper(0.8)(out.sequences[:, :1], logits[:, 0])
    assert torch.equal(torch.isfinite(reference), torch.isfinite(scores[:, 0]))
