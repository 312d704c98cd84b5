"""AutoDeco exactness against static sampling, on the tiny model and on SmolLM2-135M-Instruct (`real`)."""

from __future__ import annotations

import pathlib

import pytest
import torch

import hf_decoding as hfd
from hf_decoding import AutoDecoModelForCausalLM, InvalidDecodingArgument


def _static_sample(model, inputs, temperature: float, top_p: float, seed: int, new: int):
    hfd.enable(model)
    return model.generate(
        **inputs,
        decoding="sample",
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        seed=seed,
        max_new_tokens=new,
        return_dict_in_generate=True,
    )


def _autodeco(model, inputs, seed: int, new: int, **kwargs):
    return model.generate(**inputs, top_k=0, seed=seed, max_new_tokens=new, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize(("t0", "p0"), [(0.7, 0.9), (1.3, 0.6)])
def test_constant_heads_reproduce_static_sampling_exactly(fresh_tiny_model, prompt, t0: float, p0: float) -> None:
    # Heads initialised to a constant (T0, p0) must give the very tokens of static sampling at (T0, p0), same seed.
    model = AutoDecoModelForCausalLM.from_base(fresh_tiny_model, init_temperature=t0, init_top_p=p0)
    ours = _autodeco(model, prompt, seed=11, new=12)
    reference = _static_sample(fresh_tiny_model, prompt, t0, p0, seed=11, new=12)
    assert torch.equal(ours.sequences, reference.sequences)
    torch.testing.assert_close(ours.distortion.per_step, reference.distortion.per_step)
    alive = ours.autodeco.temperature > 0
    torch.testing.assert_close(ours.autodeco.temperature[alive], torch.full((int(alive.sum()),), t0))
    torch.testing.assert_close(ours.autodeco.top_p[alive], torch.full((int(alive.sum()),), p0))


def test_user_multipliers_compose_with_constant_heads(fresh_tiny_model, prompt) -> None:
    # T = T̂ · T_user and p = P̂ · p_user: heads at (0.8, 0.9) with multipliers (0.5, 0.5) equal static (0.4, 0.45).
    model = AutoDecoModelForCausalLM.from_base(fresh_tiny_model, init_temperature=0.8, init_top_p=0.9)
    ours = _autodeco(model, prompt, seed=4, new=10, temperature=0.5, top_p=0.5)
    reference = _static_sample(fresh_tiny_model, prompt, 0.4, 0.45, seed=4, new=10)
    assert torch.equal(ours.sequences, reference.sequences)


@pytest.fixture(scope="module")
def smollm2_batch(smollm2):
    model, tokenizer = smollm2
    tokenizer.padding_side = "left"
    messages = [
        [{"role": "user", "content": "What is 12 + 30? Reply with only the number."}],
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "user", "content": "Write one word that rhymes with cat."}],
    ]
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    return model, tokenizer, tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.real
def test_smollm2_constant_heads_match_static_sampling(smollm2_batch) -> None:
    base, _, inputs = smollm2_batch
    model = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.6, init_top_p=0.9)
    ours = _autodeco(model, inputs, seed=0, new=8)
    reference = _static_sample(base, inputs, 0.6, 0.9, seed=0, new=8)
    assert torch.equal(ours.sequences, reference.sequences)


@pytest.mark.real
def test_smollm2_batched_rows_equal_single_rows_and_round_trip(smollm2_batch, tmp_path: pathlib.Path) -> None:
    base, _, inputs = smollm2_batch
    model = AutoDecoModelForCausalLM.from_base(base, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    out = _autodeco(model, inputs, seed=0, new=6, temperature=0.0)  # greedy tokens, predictions still recorded
    rows = inputs["input_ids"].shape[0]
    assert out.autodeco.top_p.shape == (rows, out.sequences.shape[1] - inputs["input_ids"].shape[1])
    # A row's predictions do not depend on the other rows (left padding included).
    for row in range(rows):
        keep = inputs["attention_mask"][row].bool()
        single = {
            "input_ids": inputs["input_ids"][row : row + 1, keep],
            "attention_mask": torch.ones_like(inputs["input_ids"][row : row + 1, keep]),
        }
        alone = _autodeco(model, single, seed=0, new=6, temperature=0.0)
        width = alone.autodeco.top_p.shape[1]
        torch.testing.assert_close(
            alone.autodeco.top_p[0], out.autodeco.top_p[row, :width], atol=1e-4, rtol=1e-4, equal_nan=True
        )
    # Heads-only checkpoint: a few MB, no base tensors; reloading gives the same predictions.
    model.save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size < 5 * 2**20
    again = AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)
    torch.testing.assert_close(
        _autodeco(again, inputs, seed=0, new=6, temperature=0.0).autodeco.top_p, out.autodeco.top_p, equal_nan=True
    )


def test_shipped_heads_are_heads_only_and_small() -> None:
    from hf_decoding.autodeco import shipped_heads_path

    folder = shipped_heads_path("SmolLM2")
    weights = folder / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 5 * 2**20
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith(("temp_head.", "top_p_head.")) for key in keys), keys[:5]  # no base weights
    with pytest.raises(InvalidDecodingArgument, match="shipped AutoDeco heads"):
        shipped_heads_path("gemma-3-270m")


@pytest.mark.real
def test_shipped_smollm2_heads_load_offline_and_predict() -> None:
    model, tok = hfd.load_default_autodeco()
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 7 * 8?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=8, top_k=0, seed=0, return_dict_in_generate=True)
    t, p = out.autodeco.temperature[0], out.autodeco.top_p[0]
    config = model.config
    assert t.shape == (8,) and bool(((t >= config.min_temperature) & (t <= config.max_temperature)).all())
    assert bool(((p > 0) & (p <= 1)).all())
    # Trained heads are not constant: they vary from token to token.
    assert float(t.std()) > 1e-3 and float(p.std()) > 1e-4
