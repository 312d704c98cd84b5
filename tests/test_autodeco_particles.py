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
