"""AutoDeco's heads as the proposal of the particle decoders: every particle's tokens are drawn with the heads'
per-token temperature and top-p (one code path with `decoding="autodeco"`), `out.autodeco` holds the values of
the returned particles, and `autodeco_proposal=False` falls back to the static configuration."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, build_tiny_llama
from test_particles_toys import SpyReward, prompt_batch, toy_tokenizer

import hf_decoding as hfd
from hf_decoding import AutoDecoModelForCausalLM

TOK = toy_tokenizer()
TOL = {"atol": 1e-4, "rtol": 1e-4}
PARTICLE_DECODERS = [
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
    "best_of_n",
    "weighted_best_of_n",
    "self_consistency",
    "beam_search_prm",
    "dvts",
]
OPTIONS = {
    "particle_filter": {"tokens_per_step": 2},
    "particle_gibbs": {"tokens_per_step": 2, "num_iterations": 2},
    "parallel_tempering": {"tokens_per_step": 2, "num_iterations": 1, "temperature_ladder": [1.0, 2.0]},
    "beam_search_prm": {"tokens_per_step": 2, "beam_width": 2},
    "dvts": {"tokens_per_step": 2, "beam_width": 2},
}


def _generate(model, decoding: str, seed: int = 0, **kwargs):
    options = {
        "decoding": decoding,
        "num_particles": 4,
        "tokenizer": TOK,
        "do_sample": True,
        "top_k": 0,
        "max_new_tokens": 6,
        "seed": seed,
        "return_dict_in_generate": True,
        **OPTIONS.get(decoding, {}),
        **kwargs,
    }
    if decoding != "self_consistency":
        options["reward_model"] = SpyReward()
    return model.generate(**prompt_batch(2), **options)


@pytest.mark.parametrize("decoding", ["particle_filter", "best_of_n", "beam_search_prm"])
def test_constant_heads_equal_the_static_particle_method(decoding):
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.7, init_top_p=0.9)
    ours = _generate(wrapper, decoding, seed=3)
    static = _generate(base, decoding, seed=3, temperature=0.7, top_p=0.9)
    assert torch.equal(ours.sequences, static.sequences)
    assert torch.equal(ours.particles.sequences, static.particles.sequences)
    torch.testing.assert_close(ours.particles.log_weights, static.particles.log_weights)
    alive = ~ours.autodeco.temperature.isnan()
    assert bool(alive.any())
    torch.testing.assert_close(ours.autodeco.temperature[alive], torch.full((int(alive.sum()),), 0.7))
    torch.testing.assert_close(ours.autodeco.top_p[alive], torch.full((int(alive.sum()),), 0.9))
    assert static.autodeco is None


def test_top_p_near_zero_makes_every_particle_greedy():
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, init_temperature=1.0, init_top_p=1e-4)
    greedy = base.generate(**prompt_batch(2), do_sample=False, max_new_tokens=6)
    width = prompt_batch(2)["input_ids"].shape[1]
    for seed in range(3):
        out = _generate(wrapper, "particle_filter", seed=seed)
        for b in range(2):
            for n in range(4):
                tokens = out.particles.sequences[b, n, width:]
                k = int((tokens != PAD).sum())
                assert torch.equal(tokens[:k], greedy[b, width : width + k])


@pytest.mark.parametrize("decoding", PARTICLE_DECODERS)
def test_every_particle_decoder_uses_the_heads(decoding):
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)  # random heads: values vary per token
    out = _generate(wrapper, decoding)
    width = prompt_batch(2)["input_ids"].shape[1]
    new = out.sequences.shape[1] - width
    assert out.autodeco.temperature.shape == out.autodeco.top_p.shape == (2, new)
    for b in range(2):
        alive = ~out.autodeco.temperature[b].isnan()
        k = int(alive.sum())
        assert k >= 1 and bool(alive[:k].all())  # one value per generated token, then NaN: no prediction there
        assert bool((out.sequences[b, width + k :] == PAD).all())  # ... exactly where the particle had finished
        assert bool(((out.autodeco.top_p[b, :k] > 0) & (out.autodeco.top_p[b, :k] <= 1)).all())
    # The same call on a plain model with `autodeco_heads=` gives the same result.
    plain = _generate(base, decoding, autodeco_heads=wrapper.heads)
    assert torch.equal(plain.sequences, out.sequences)
    torch.testing.assert_close(plain.autodeco.temperature, out.autodeco.temperature, equal_nan=True)


def test_autodeco_proposal_false_samples_from_the_static_configuration():
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)
    off = _generate(wrapper, "particle_filter", seed=5, autodeco_proposal=False, temperature=0.8)
    static = _generate(base, "particle_filter", seed=5, temperature=0.8)
    assert torch.equal(off.particles.sequences, static.particles.sequences)
    assert off.autodeco is None


def test_heads_follow_their_particles_through_resampling():
    """With resampling at every step, each returned particle's recorded values are the heads' predictions on its
    own prefix: re-running the heads on the returned sequence reproduces them."""
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)
    out = _generate(wrapper, "particle_filter", seed=1, ess_threshold=1.0, max_new_tokens=8)
    assert bool((out.particles.ancestors != torch.arange(4)).any())  # something was resampled
    inputs = prompt_batch(2)
    width = inputs["input_ids"].shape[1]
    for b in range(2):
        k = int((~out.autodeco.temperature[b].isnan()).sum())
        ids = out.sequences[b : b + 1, : width + k]
        mask = torch.cat([inputs["attention_mask"][b : b + 1], torch.ones(1, k, dtype=torch.long)], dim=-1)
        with torch.no_grad():
            forward = wrapper(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        # The value applied to token j was predicted at position width + j - 1 (the token before it).
        expected = forward.temperature[0, width - 1 : width + k - 1]
        torch.testing.assert_close(out.autodeco.temperature[b, :k], expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ global normalization
def test_globally_normalized_targets_the_autodeco_samplers_global_measure():
    """On an enumerable toy LM (6 tokens, 3 steps, no EOS) with random heads, `decoding="globally_normalized"` on
    the AutoDeco wrapper weights every row by its own kept mass under its own predicted temperature and top-p: its
    normalizer estimate is unbiased for the closed form, and with 16 particles its samples are closer to the global
    measure than AutoDeco's local sampling."""
    import itertools

    from test_globally_normalized import PROMPT, STEPS, VOCAB, total_variation

    from hf_decoding.decoders.autodeco import HeadsSampler
    from hf_decoding.generation.processing import ProcessorChain

    base = build_tiny_llama(seed=0, vocab_size=VOCAB, eos_token_id=None)
    with torch.no_grad():
        base.lm_head.weight.mul_(2.0)
    hfd.enable(base)
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=4)
    # Closed form: for every sequence, the heads' (T_t, p_t) at each position, the warped scores and raw logits.
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=STEPS)))  # (S, T)
    full = torch.cat([PROMPT.expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        out = wrapper(input_ids=full)
    positions = slice(PROMPT.shape[1] - 1, -1)
    logits = out.logits[:, positions].reshape(-1, VOCAB).float()  # (S*T, V)
    config = base.generation_config
    config.do_sample, config.temperature, config.top_p, config.top_k = True, 1.0, 1.0, 0
    sampler = HeadsSampler(wrapper.heads, config, [])
    temperature = out.temperature[:, positions].reshape(-1)
    top_p = out.top_p[:, positions].reshape(-1).clamp(min=1e-6, max=1.0)
    sampler.apply(temperature, top_p)
    scores = ProcessorChain(sampler.processors)(None, logits)[0].reshape(len(seqs), STEPS, VOCAB).double()
    raw = logits.reshape(len(seqs), STEPS, VOCAB).double()
    chosen = seqs[..., None]
    tau = temperature.reshape(len(seqs), STEPS).double()
    log_gamma = (scores.gather(-1, chosen).squeeze(-1) - torch.logsumexp(raw, -1) / tau).sum(-1)
    q_global = torch.softmax(log_gamma, 0)
    q_local = torch.log_softmax(scores, -1).gather(-1, chosen).squeeze(-1).sum(-1).exp()
    exact_gap = 0.5 * float((q_local - q_global).abs().sum())
    assert exact_gap > 0.03, "the toy must show local-normalization distortion under the heads"

    def draw(decoding: str, **kwargs):
        inputs = PROMPT.expand(4000, -1)
        return wrapper.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            decoding=decoding,
            do_sample=True,
            top_k=0,
            max_new_tokens=STEPS,
            seed=0,
            return_dict_in_generate=True,
            **kwargs,
        )

    local = draw("autodeco")
    tv_local = total_variation(local.sequences[:, PROMPT.shape[1] :], q_global)
    assert tv_local == pytest.approx(exact_gap, abs=0.03)  # AutoDeco's local sampler draws q^L
    smc = draw("globally_normalized", num_particles=16)
    tv_smc = total_variation(smc.sequences[:, PROMPT.shape[1] :], q_global)
    assert tv_smc < 0.6 * exact_gap and tv_smc < tv_local
    z_hat = smc.particles.log_normalizer.double().exp().mean()
    assert float(z_hat) == pytest.approx(float(torch.logsumexp(log_gamma, 0).exp()), rel=0.03)
    assert smc.autodeco.temperature.shape == (4000, STEPS) and not bool(smc.autodeco.temperature.isnan().any())
    off = draw("globally_normalized", num_particles=2, autodeco_proposal=False)
    assert off.autodeco is None


# ------------------------------------------------------------------------------------------------ constant heads
@pytest.mark.parametrize("decoding", ["particle_filter", "particle_gibbs"])
def test_constant_temperature_and_full_top_p_equal_the_static_run(decoding):
    """Heads forced to T = 0.6 and top-p = 1 (no top-p head): token for token the static method at T = 0.6."""
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.6, enable_top_p_head=False)
    ours = _generate(wrapper, decoding, seed=4)
    static = _generate(base, decoding, seed=4, temperature=0.6)
    assert torch.equal(ours.sequences, static.sequences)
    assert torch.equal(ours.particles.sequences, static.particles.sequences)
    torch.testing.assert_close(ours.particles.log_weights, static.particles.log_weights)
    alive = ~ours.autodeco.temperature.isnan()
    torch.testing.assert_close(ours.autodeco.temperature[alive], torch.full((int(alive.sum()),), 0.6))
    assert bool((ours.autodeco.top_p[alive] == 1).all())
    assert torch.equal(alive, ~ours.autodeco.top_p.isnan())


def test_globally_normalized_with_constant_heads_equals_the_static_sampler():
    """B=2 left-padded prompts with EOS: constant heads give the static globally normalized run (same particles,
    weights and distortion); `out.autodeco` is NaN exactly after the returned particle finished."""
    base = hfd.enable(build_tiny_llama(seed=1, eos_token_id=5))  # an EOS this run draws: row 1 finishes early
    wrapper = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.6, init_top_p=0.9)
    options = {
        "decoding": "globally_normalized",
        "num_particles": 4,
        "do_sample": True,
        "top_k": 0,
        "max_new_tokens": 8,
        "seed": 2,
        "return_dict_in_generate": True,
    }
    ours = wrapper.generate(**prompt_batch(2), **options)
    static = base.generate(**prompt_batch(2), temperature=0.6, top_p=0.9, **options)
    assert torch.equal(ours.sequences, static.sequences)
    assert torch.equal(ours.particles.sequences, static.particles.sequences)
    torch.testing.assert_close(ours.particles.log_weights, static.particles.log_weights)
    torch.testing.assert_close(ours.distortion.per_step, static.distortion.per_step)
    width = prompt_batch(2)["input_ids"].shape[1]
    assert ours.autodeco.temperature.shape == ours.autodeco.top_p.shape == (2, ours.sequences.shape[1] - width)
    for b in range(2):
        alive = ~ours.autodeco.temperature[b].isnan()
        k = int(alive.sum())
        assert k >= 1 and bool(alive[:k].all())
        assert bool((ours.sequences[b, width + k :] == PAD).all())
        torch.testing.assert_close(ours.autodeco.top_p[b, :k], torch.full((k,), 0.9))
    assert bool(ours.autodeco.temperature.isnan().any())  # a returned particle did finish
    assert static.autodeco is None


def test_without_sampling_the_heads_set_nothing():
    """`temperature=0` on the wrapper means no sampling: the particles are drawn untempered (with the usual
    warning) exactly as the static run, and no values are recorded that were not applied."""
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)
    with pytest.warns(hfd.HfDecodingWarning, match="samples its particles") as record:
        ours = _generate(wrapper, "particle_filter", seed=6, temperature=0.0)
    assert {w.filename for w in record if issubclass(w.category, hfd.HfDecodingWarning)} == {__file__}
    with pytest.warns(hfd.HfDecodingWarning, match="samples its particles"):
        static = _generate(base, "particle_filter", seed=6, do_sample=False, top_k=None)
    assert torch.equal(ours.particles.sequences, static.particles.sequences)
    assert ours.autodeco is None


@pytest.mark.parametrize("decoding", ["particle_filter", "self_consistency", "beam_search_prm", "dvts"])
def test_values_of_finished_particles_survive_and_end_in_nan(decoding):
    """With an EOS these runs draw, a returned particle finishes (its row is dropped) before the other prompt's:
    its recorded values are still the heads' predictions on its own prefix, then NaN where it had finished."""
    base = hfd.enable(build_tiny_llama(seed=1, eos_token_id=41))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)
    out = _generate(wrapper, decoding, max_new_tokens=8)
    inputs = prompt_batch(2)
    width = inputs["input_ids"].shape[1]
    assert bool(out.autodeco.temperature.isnan().any())  # a returned particle finished early
    for b in range(2):
        alive = ~out.autodeco.temperature[b].isnan()
        k = int(alive.sum())
        assert bool(alive[:k].all()) and torch.equal(alive, ~out.autodeco.top_p[b].isnan())
        assert bool((out.sequences[b, width + k :] == PAD).all())
        ids = out.sequences[b : b + 1, : width + k]
        mask = torch.cat([inputs["attention_mask"][b : b + 1], torch.ones(1, k, dtype=torch.long)], dim=-1)
        with torch.no_grad():
            forward = wrapper(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        predicted = slice(width - 1, width + k - 1)  # the value of token j comes from the position before it
        torch.testing.assert_close(out.autodeco.temperature[b, :k], forward.temperature[0, predicted], **TOL)
        torch.testing.assert_close(out.autodeco.top_p[b, :k], forward.top_p[0, predicted], **TOL)
