"""`decoding="sample"` must return exactly what transformers' built-in greedy/sampling path returns.

Every comparison runs the built-in `generate` on a model that was never enabled and ours on an enabled model with
the same weights, both right after the same `torch.manual_seed`.
"""

from __future__ import annotations

import pytest
import torch
from conftest import EOS, PAD, build_tiny_llama
from transformers import GenerationConfig, LlamaForCausalLM
from transformers.generation.utils import GenerateDecoderOnlyOutput

import hf_decoding
from hf_decoding import DecodingOutput
from hf_decoding.generation.cache import output_cache


@pytest.fixture(scope="module")
def builtin_model() -> LlamaForCausalLM:
    return build_tiny_llama()


@pytest.fixture(scope="module")
def enabled_model() -> LlamaForCausalLM:
    return hf_decoding.enable(build_tiny_llama())


def run_both(builtin_model, enabled_model, seed: int, inputs: dict | torch.Tensor, **kwargs):
    """(built-in result, our result) for the same seed and arguments."""
    args, kw = ((inputs,), {}) if isinstance(inputs, torch.Tensor) else ((), dict(inputs))
    torch.manual_seed(seed)
    expected = builtin_model.generate(*args, **kw, **kwargs)
    torch.manual_seed(seed)
    ours = enabled_model.generate(*args, **kw, decoding="sample", **kwargs)
    return expected, ours


SETTINGS = {
    "greedy": {"do_sample": False},
    "pure_sampling": {"do_sample": True, "top_k": 0},
    "default_top_k_50": {"do_sample": True},
    "temperature": {"do_sample": True, "temperature": 0.7, "top_k": 0},
    "hot_temperature": {"do_sample": True, "temperature": 1.6, "top_k": 0},
    "top_k": {"do_sample": True, "top_k": 5},
    "top_p": {"do_sample": True, "top_p": 0.8, "top_k": 0},
    "min_p": {"do_sample": True, "min_p": 0.2, "top_k": 0},
    "typical_p": {"do_sample": True, "typical_p": 0.7, "top_k": 0},
    "repetition_penalty": {"do_sample": True, "repetition_penalty": 1.3, "top_k": 0},
    "greedy_repetition_penalty": {"do_sample": False, "repetition_penalty": 1.5},
    "combined": {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_matches_builtin_left_padded_batch(builtin_model, enabled_model, prompt, name):
    expected, ours = run_both(builtin_model, enabled_model, 0, prompt, max_new_tokens=10, **SETTINGS[name])
    assert ours.shape == expected.shape
    assert ours.shape[0] == 3
    assert torch.equal(ours, expected)
    assert torch.equal(ours[:, : prompt["input_ids"].shape[1]], prompt["input_ids"])


@pytest.mark.parametrize("seed", [1, 2])
def test_sampling_is_random_yet_reproduced(builtin_model, enabled_model, prompt, seed):
    expected, ours = run_both(builtin_model, enabled_model, seed, prompt, max_new_tokens=8, do_sample=True, top_k=0)
    assert torch.equal(ours, expected)
    # Different seeds give different samples, so the equality above is not a greedy coincidence.
    other, _ = run_both(builtin_model, enabled_model, seed + 100, prompt, max_new_tokens=8, do_sample=True, top_k=0)
    assert not torch.equal(other, expected)


@pytest.mark.parametrize("do_sample", [False, True])
def test_batch_of_one_without_attention_mask(builtin_model, enabled_model, do_sample):
    input_ids = torch.tensor([[1, 5, 9, 11, 3]])
    expected, ours = run_both(
        builtin_model, enabled_model, 4, input_ids, max_new_tokens=10, do_sample=do_sample, top_k=0
    )
    assert ours.shape == (1, 15) or bool((ours[0, 5:] == EOS).any())
    assert torch.equal(ours, expected)


def _eos_then_pad(row: torch.Tensor, prompt_len: int) -> bool:
    new = row[prompt_len:]
    hits = (new == EOS).nonzero().flatten()
    if hits.numel() == 0:
        return False
    first = int(hits[0])
    return first < new.numel() - 1 and bool((new[first + 1 :] == PAD).all())


def test_eos_mid_batch_sampling(builtin_model, enabled_model, prompt):
    """One row stops at EOS early and is padded while the others go on."""
    prompt_len = prompt["input_ids"].shape[1]
    kwargs = {"max_new_tokens": 12, "do_sample": True, "top_k": 5}
    for seed in range(40):
        torch.manual_seed(seed)
        expected = builtin_model.generate(**prompt, **kwargs)
        finished = [_eos_then_pad(row, prompt_len) for row in expected]
        if any(finished) and not all(finished) and expected.shape[1] == prompt_len + 12:
            break
    else:
        pytest.fail("no seed makes one row stop early while others continue")
    torch.manual_seed(seed)
    ours = enabled_model.generate(**prompt, decoding="sample", **kwargs)
    assert torch.equal(ours, expected)
    assert [_eos_then_pad(row, prompt_len) for row in ours] == finished


def test_eos_mid_batch_greedy(prompt):
    """Greedy: make a token that one row produces early the EOS id, so that row stops and the others go on."""
    prompt_len = prompt["input_ids"].shape[1]
    free = build_tiny_llama().generate(**prompt, do_sample=False, max_new_tokens=12)[:, prompt_len:]
    eos = None
    for row in range(free.shape[0]):
        for token in free[row, 1:4].tolist():
            others = [r for r in range(free.shape[0]) if r != row]
            if token not in (PAD, 1) and not any(token in free[r].tolist() for r in others):
                eos = token
                break
        if eos is not None:
            break
    assert eos is not None, "no early token unique to one row"
    builtin = build_tiny_llama(eos_token_id=eos)
    ours_model = hf_decoding.enable(build_tiny_llama(eos_token_id=eos))
    expected = builtin.generate(**prompt, do_sample=False, max_new_tokens=12)
    ours = ours_model.generate(**prompt, decoding="sample", do_sample=False, max_new_tokens=12)
    assert torch.equal(ours, expected)
    stopped = [bool((r[prompt_len:] == eos).any()) for r in ours]
    assert sum(stopped) == 1
    row = stopped.index(True)
    new = ours[row, prompt_len:]
    first = int((new == eos).nonzero()[0])
    assert first < 4
    assert bool((new[first + 1 :] == PAD).all())
    assert ours.shape[1] == prompt_len + 12, "the other rows should have continued"


def test_num_return_sequences(builtin_model, enabled_model, prompt):
    expected, ours = run_both(
        builtin_model, enabled_model, 5, prompt, max_new_tokens=8, do_sample=True, top_k=0, num_return_sequences=2
    )
    assert ours.shape[0] == 6
    assert torch.equal(ours, expected)
    # Rows 0 and 1 share a prompt; their samples differ, so the expansion really produced two samples.
    assert torch.equal(ours[0, :6], ours[1, :6])
    assert not torch.equal(ours[0], ours[1])


@pytest.mark.parametrize("kwargs", [{"do_sample": False}, {"do_sample": True, "top_k": 5, "temperature": 0.9}])
def test_return_dict_scores_and_logits_equal_builtin(builtin_model, enabled_model, prompt, kwargs):
    expected, ours = run_both(
        builtin_model,
        enabled_model,
        0,
        prompt,
        max_new_tokens=8,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **kwargs,
    )
    assert isinstance(expected, GenerateDecoderOnlyOutput)
    assert isinstance(ours, DecodingOutput)
    assert isinstance(ours, GenerateDecoderOnlyOutput)
    assert torch.equal(ours.sequences, expected.sequences)
    assert len(ours.scores) == len(expected.scores) == len(ours.logits) == len(expected.logits)
    for a, b in zip(ours.scores, expected.scores, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    for a, b in zip(ours.logits, expected.logits, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)
    assert ours.distortion is not None
    assert ours.distortion.per_step.shape == (3, len(ours.scores))
    assert ours.cost.forward_passes == len(ours.scores)
    assert output_cache(ours) is not None and type(output_cache(ours)) is type(output_cache(expected))


def test_hidden_states_and_attentions_equal_builtin(prompt):
    builtin = build_tiny_llama()
    ours_model = hf_decoding.enable(build_tiny_llama())
    for model in (builtin, ours_model):
        model.set_attn_implementation("eager")  # sdpa returns no attention weights
    kwargs = {"max_new_tokens": 4, "do_sample": True, "return_dict_in_generate": True}
    kwargs |= {"output_hidden_states": True, "output_attentions": True}
    torch.manual_seed(0)
    expected = builtin.generate(**prompt, **kwargs)
    torch.manual_seed(0)
    ours = ours_model.generate(**prompt, decoding="sample", **kwargs)
    assert torch.equal(ours.sequences, expected.sequences)
    for name in ("hidden_states", "attentions"):
        mine, theirs = getattr(ours, name), getattr(expected, name)
        assert mine is not None and len(mine) == len(theirs) == 4, name
        for step_a, step_b in zip(mine, theirs, strict=True):
            assert len(step_a) == len(step_b)
            for a, b in zip(step_a, step_b, strict=True):
                assert torch.equal(a, b), name


def test_return_dict_without_scores(builtin_model, enabled_model, prompt):
    expected, ours = run_both(
        builtin_model, enabled_model, 0, prompt, max_new_tokens=4, do_sample=True, return_dict_in_generate=True
    )
    assert torch.equal(ours.sequences, expected.sequences)
    assert ours.scores is None and expected.scores is None
    assert ours.logits is None and expected.logits is None


def test_decoder_as_custom_generate_on_plain_model(builtin_model, prompt):
    plain = build_tiny_llama()
    assert not getattr(plain, "_hf_decoding_enabled", False)
    kwargs = {"max_new_tokens": 8, "do_sample": True, "top_p": 0.9}
    torch.manual_seed(7)
    expected = builtin_model.generate(**prompt, **kwargs)
    torch.manual_seed(7)
    ours = plain.generate(**prompt, custom_generate=hf_decoding.decoders.sample, return_dict_in_generate=True, **kwargs)
    assert isinstance(ours, DecodingOutput)
    assert torch.equal(ours.sequences, expected)


def test_decoding_from_passed_generation_config(builtin_model, enabled_model, prompt):
    config = GenerationConfig(
        decoding="sample", do_sample=True, top_k=10, max_new_tokens=8, return_dict_in_generate=True
    )
    torch.manual_seed(8)
    expected = builtin_model.generate(**prompt, do_sample=True, top_k=10, max_new_tokens=8)
    torch.manual_seed(8)
    ours = enabled_model.generate(**prompt, generation_config=config)
    assert isinstance(ours, DecodingOutput), "the config's `decoding` was not routed to our decoder"
    assert torch.equal(ours.sequences, expected)


def test_decoding_from_model_generation_config(builtin_model, prompt):
    model = hf_decoding.enable(build_tiny_llama())
    model.generation_config.decoding = "sample"
    torch.manual_seed(9)
    expected = builtin_model.generate(**prompt, do_sample=True, max_new_tokens=6)
    torch.manual_seed(9)
    ours = model.generate(**prompt, do_sample=True, max_new_tokens=6, return_dict_in_generate=True)
    assert isinstance(ours, DecodingOutput)
    assert torch.equal(ours.sequences, expected)


@pytest.mark.parametrize("how", ["set_default_decoding", "attribute"])
def test_decoding_survives_save_and_reload(builtin_model, prompt, tmp_path, how):
    model = hf_decoding.enable(build_tiny_llama())
    if how == "set_default_decoding":
        assert hf_decoding.set_default_decoding(model, "sample") is model
    else:
        model.generation_config.decoding = "sample"
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config.decoding == "sample"
    reloaded = hf_decoding.enable(reloaded)
    torch.manual_seed(10)
    ours = reloaded.generate(**prompt, do_sample=True, top_k=0, max_new_tokens=6, return_dict_in_generate=True)
    assert isinstance(ours, DecodingOutput), "the reloaded `decoding` key did not reach our decoder"
    assert ours.distortion is not None
    torch.manual_seed(10)
    expected = builtin_model.generate(**prompt, do_sample=True, top_k=0, max_new_tokens=6)
    assert torch.equal(ours.sequences, expected)


def test_seed_flag_is_reproducible_and_matters(enabled_model, prompt):
    kwargs = {"decoding": "sample", "do_sample": True, "top_k": 0, "max_new_tokens": 10}
    torch.manual_seed(0)
    a = enabled_model.generate(**prompt, seed=5, **kwargs)
    torch.manual_seed(123)  # the global generator must not matter when `seed` is given
    b = enabled_model.generate(**prompt, seed=5, **kwargs)
    c = enabled_model.generate(**prompt, seed=6, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_flag(enabled_model, prompt):
    kwargs = {"decoding": "sample", "do_sample": True, "top_k": 0, "max_new_tokens": 8}
    a = enabled_model.generate(**prompt, generator=torch.Generator().manual_seed(3), **kwargs)
    b = enabled_model.generate(**prompt, seed=3, **kwargs)
    assert torch.equal(a, b)
    with pytest.raises(hf_decoding.InvalidDecodingArgument, match="seed"):
        enabled_model.generate(**prompt, generator=torch.Generator(), seed=1, **kwargs)


@pytest.mark.parametrize("return_dict", [False, True])
def test_without_decoding_generate_is_untouched(builtin_model, prompt, return_dict):
    model = hf_decoding.enable(build_tiny_llama())
    kwargs = {"do_sample": True, "top_p": 0.9, "max_new_tokens": 8, "return_dict_in_generate": return_dict}
    torch.manual_seed(11)
    expected = builtin_model.generate(**prompt, **kwargs)
    torch.manual_seed(11)
    ours = model.generate(**prompt, **kwargs)
    if return_dict:
        assert type(ours) is type(expected) is GenerateDecoderOnlyOutput
        ours, expected = ours.sequences, expected.sequences
    assert torch.equal(ours, expected)
