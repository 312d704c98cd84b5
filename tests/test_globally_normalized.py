"""decoding="globally_normalized": SMC with the local normalizer as weight, checked against exact enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import build_tiny_llama
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

import hf_decoding
from hf_decoding.errors import InvalidDecodingArgument

VOCAB, STEPS = 6, 3
PROMPT = torch.tensor([[1, 4, 5]])


@pytest.fixture(scope="module")
def toy():
    """A 6-token toy LM without EOS: every sequence of 3 new tokens can be enumerated (216 of them)."""
    model = build_tiny_llama(seed=0, vocab_size=VOCAB, eos_token_id=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    return hf_decoding.enable(model)


def exact(model, temperature: float, top_k: int):
    """All sequences, the global measure q^G, the local measure q^L and the normalizer sum_w gamma(w)."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=STEPS)))  # (S, T)
    full = torch.cat([PROMPT.expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logits = model(full).logits[:, PROMPT.shape[1] - 1 : -1].reshape(-1, VOCAB)  # (S*T, V)
    scores = logits
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    scores = TopKLogitsWarper(top_k)(None, scores).reshape(len(seqs), STEPS, VOCAB)
    logits = logits.reshape(len(seqs), STEPS, VOCAB)
    chosen = seqs[..., None]
    # log gamma = sum_t [log p(w_t)^(1/tau) on the kept set] = sum_t [s_w - LSE(l) / tau]
    log_gamma = scores.double().gather(-1, chosen).squeeze(-1) - torch.logsumexp(logits.double(), -1) / temperature
    log_gamma = log_gamma.sum(-1)
    q_local = torch.log_softmax(scores.double(), -1).gather(-1, chosen).squeeze(-1).sum(-1).exp()
    return seqs, torch.softmax(log_gamma, 0), q_local, torch.logsumexp(log_gamma, 0)


def total_variation(samples: torch.Tensor, target: torch.Tensor) -> float:
    index = (samples * torch.tensor([VOCAB * VOCAB, VOCAB, 1])).sum(-1)
    empirical = torch.bincount(index, minlength=VOCAB**STEPS).double() / len(index)
    return 0.5 * float((empirical - target).abs().sum())


def draw(model, rows: int, decoding: str, **kwargs):
    inputs = PROMPT.expand(rows, -1)
    return model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        decoding=decoding,
        do_sample=True,
        max_new_tokens=STEPS,
        seed=0,
        return_dict_in_generate=True,
        **kwargs,
    )


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 2), (0.5, 2)])
def test_smc_converges_to_the_global_measure(toy, temperature, top_k) -> None:
    _, q_global, q_local, log_z = exact(toy, temperature, top_k)
    exact_gap = 0.5 * float((q_local - q_global).abs().sum())
    assert exact_gap > 0.04, "the toy must show local-normalization distortion"
    rows = 4000
    local = draw(toy, rows, "sample", temperature=temperature, top_k=top_k)
    tv_local = total_variation(local.sequences[:, PROMPT.shape[1] :], q_global)
    tv = {}
    for n in (1, 16):
        out = draw(toy, rows, "globally_normalized", num_particles=n, temperature=temperature, top_k=top_k)
        tv[n] = total_variation(out.sequences[:, PROMPT.shape[1] :], q_global)
        # exp(log_normalizer) is unbiased for sum_w gamma(w): its mean over rows matches enumeration.
        z_hat = out.particles.log_normalizer.double().exp().mean()
        assert float(z_hat) == pytest.approx(float(log_z.exp()), rel=0.03)
    assert tv_local == pytest.approx(exact_gap, abs=0.03)  # local decoding samples q^L, not q^G
    assert tv[1] == pytest.approx(tv_local, abs=0.03)  # one particle is local decoding
    assert tv[16] < 0.6 * exact_gap  # many particles: close to q^G (sampling noise about 0.015 here)
    assert tv[16] < tv_local


def test_independent_metropolis_hastings_converges(toy) -> None:
    _, q_global, q_local, _ = exact(toy, 0.5, 2)
    exact_gap = 0.5 * float((q_local - q_global).abs().sum())
    out = draw(toy, 4000, "globally_normalized", num_particles=16, global_sampler="imh", temperature=0.5, top_k=2)
    assert total_variation(out.sequences[:, PROMPT.shape[1] :], q_global) < 0.5 * exact_gap
    assert torch.equal(out.particles.ancestors, torch.arange(16).expand(4000, STEPS, 16))  # never resampled
    with pytest.raises(InvalidDecodingArgument, match="global_sampler"):
        draw(toy, 2, "globally_normalized", global_sampler="rejection")


def test_imh_chain_rules() -> None:
    from hf_decoding.decoders.globally_normalized import _independent_metropolis_hastings

    inf = float("inf")
    weights = torch.tensor([[-inf, -inf, 0.0], [0.0, -inf, -inf], [0.0, 50.0, -inf], [0.0, -50.0, -60.0]])
    state = _independent_metropolis_hastings(weights.double(), torch.Generator().manual_seed(0))
    assert state.tolist()[:3] == [2, 0, 1]  # dead states are left, dead proposals never taken, better always taken
    assert state[3].item() in (0, 1, 2)


def test_outputs_and_weights(toy) -> None:
    out = draw(toy, 3, "globally_normalized", num_particles=5, top_k=2, ess_threshold=1.0)
    particles = out.particles
    assert out.sequences.shape == (3, PROMPT.shape[1] + STEPS)
    assert particles.sequences.shape == (3, 5, PROMPT.shape[1] + STEPS)
    assert particles.log_weights.shape == (3, 5) and particles.ess.shape == (3, STEPS)
    assert particles.ancestors.shape == (3, STEPS, 5) and particles.selected.shape == (3,)
    for b in range(3):
        assert torch.equal(out.sequences[b], particles.sequences[b, particles.selected[b]])
    # Resampling before every token: the weights of a group are all equal to the running evidence.
    assert torch.allclose(particles.log_weights, particles.log_weights[:, :1].expand(-1, 5))
    assert out.distortion.per_step.shape == (3, STEPS)
    assert bool((out.distortion.per_step >= 0).all())  # top-k alone: Z_t <= 1
    # Importance sampling (never resample): weights are exp(-total distortion) of each particle's path.
    out = draw(toy, 2, "globally_normalized", num_particles=4, top_k=2, ess_threshold=0.0)
    assert torch.equal(out.particles.ancestors, torch.arange(4).expand(2, STEPS, 4))
    selected = out.particles.log_weights.gather(1, out.particles.selected[:, None]).squeeze(1)
    assert torch.allclose(selected.float(), -out.distortion.total, atol=1e-5)
    again = draw(toy, 2, "globally_normalized", num_particles=4, top_k=2, ess_threshold=0.0)
    assert torch.equal(out.sequences, again.sequences)  # seeded


def test_eos_and_bad_arguments(fresh_tiny_model, prompt) -> None:
    model = hf_decoding.enable(fresh_tiny_model)
    out = model.generate(
        **prompt,
        decoding="globally_normalized",
        do_sample=True,
        top_p=0.9,
        top_k=0,
        num_particles=4,
        max_new_tokens=12,
        seed=1,
        return_dict_in_generate=True,
    )
    assert out.particles.sequences.shape[:2] == (3, 4)
    assert bool(torch.isfinite(out.particles.log_normalizer).all())
    assert bool((out.particles.log_normalizer <= 1e-6).all())  # truncation only: the normalizer is p(A) <= 1
    tokens = model.generate(**prompt, decoding="globally_normalized", do_sample=True, max_new_tokens=3, seed=0)
    assert tokens.shape == (3, prompt["input_ids"].shape[1] + 3)
    for kwargs, name in (
        ({"num_particles": 0}, "num_particles"),
        ({"resampling": "bogus"}, "resampling"),
        ({"ess_threshold": 2.0}, "ess_threshold"),
        ({"do_sample": False}, "do_sample"),
    ):
        with pytest.raises(InvalidDecodingArgument, match=name):
            model.generate(**prompt, decoding="globally_normalized", max_new_tokens=2, **({"do_sample": True} | kwargs))


@pytest.mark.real
def test_smollm2_globally_normalized_top_p(smollm2) -> None:
    model, tokenizer = smollm2
    hf_decoding.enable(model)
    inputs = tokenizer(["The capital of France is", "Once upon a time"], return_tensors="pt", padding=True)
    out = model.generate(
        **inputs,
        decoding="globally_normalized",
        do_sample=True,
        top_p=0.9,
        top_k=0,
        num_particles=3,
        max_new_tokens=5,
        seed=0,
        return_dict_in_generate=True,
    )
    assert out.particles.sequences.shape[:2] == (2, 3)
    log_z = out.particles.log_normalizer
    assert bool(torch.isfinite(log_z).all()) and bool((log_z <= 1e-5).all())  # estimates log p(A) <= 0
    assert bool((out.distortion.per_step >= 0).all())
