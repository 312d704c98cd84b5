"""Cache correctness of the particle batch: after steps with holes, arbitrary resampling and absorption, the
stored next-token logits of every row equal a full recompute of that particle's tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import EOS, PAD, build_tiny_llama
from test_particles_toys import one_thread, prompt_batch, toy_tokenizer  # noqa: F401
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from hf_decoding.generation.cache import get_cache
from hf_decoding.smc import ParticleBatch
from hf_decoding.smc.steps import StepConfig, StepRunner


def _recompute(model, batch: ParticleBatch) -> torch.Tensor:
    """Next-token logits of every live row from its compact token list (no cache, no holes)."""
    out = []
    for row in range(batch.num_rows):
        slot = int(batch.row_slot[row])
        group = slot // batch.num_particles
        prompt = batch.prompt_ids[group]
        prompt = prompt[prompt != PAD] if (prompt == PAD).any() else prompt
        ids = torch.cat([prompt, batch.row_tokens(row)])[None]
        out.append(model(input_ids=ids).logits[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("delimited", [True, False])
def test_logits_after_arbitrary_resampling_equal_full_recompute(delimited):
    torch.manual_seed(0)
    model = build_tiny_llama(seed=3)
    config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, do_sample=True)
    inputs = prompt_batch(3)
    batch = ParticleBatch.from_prompts(
        model,
        inputs["input_ids"],
        config,
        {"attention_mask": inputs["attention_mask"], "use_cache": True},
        4,
        PAD,
    )
    assert isinstance(get_cache(batch.model_kwargs), DynamicCache)
    step = StepConfig(
        step_delimiter=("\n\n",) if delimited else None, tokens_per_step=None if delimited else 3, max_new_tokens=40
    )
    gen = torch.Generator().manual_seed(0)
    # Encourage delimiters and keep EOS away so rows wait for each other (holes).
    bias = torch.zeros(64)
    bias[3] = 2.5
    bias[EOS] = -1e9

    class Bias:
        def __call__(self, input_ids, scores):
            return scores + bias

    runner = StepRunner(
        model,
        LogitsProcessorList([Bias()]),
        StoppingCriteriaList(),
        config,
        step,
        tokenizer=toy_tokenizer(),
        generator=gen,
    )
    with torch.no_grad():
        for k in range(4):
            result = runner.run(batch, k)
            if delimited:
                assert len(set(result.lengths.tolist())) >= 1
            if k == 1:
                keep = torch.ones(batch.num_rows, dtype=torch.bool)
                keep[1] = False  # absorb one particle: its row is freed
                batch.drop_rows(keep)
            ancestors = torch.randint(0, 4, (3, 4), generator=gen)
            batch.resample(ancestors)
            expected = _recompute(model, batch)
            assert torch.allclose(batch.next_logits, expected, atol=1e-4), (
                k,
                (batch.next_logits - expected).abs().max(),
            )
            cache = get_cache(batch.model_kwargs)
            assert cache.layers[0].keys.shape[0] == batch.num_rows  # one cache, one row per live particle
            assert batch.attention_mask.shape == batch.input_ids.shape


def test_resample_moves_slot_data_and_finished_tokens():
    model = build_tiny_llama()
    config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD)
    inputs = prompt_batch(1)
    batch = ParticleBatch.from_prompts(
        model, inputs["input_ids"], config, {"attention_mask": inputs["attention_mask"], "use_cache": True}, 3, PAD
    )
    batch.slot_lists["tag"] = ["a", "b", "c"]
    batch.slot_tensors["w"] = torch.tensor([[0.0, 1.0, 2.0]])
    batch.append_tokens(torch.tensor([40, 41, 42]), torch.ones(3, dtype=torch.bool))
    batch.feed(model)
    batch.drop_rows(torch.tensor([True, False, True]))  # slot 1 finished
    assert batch.has_row().tolist() == [[True, False, True]]
    batch.resample(torch.tensor([[1, 1, 2]]))
    assert batch.slot_lists["tag"] == ["b", "b", "c"]
    assert batch.slot_tensors["w"].tolist() == [[1.0, 1.0, 2.0]]
    assert batch.has_row().tolist() == [[False, False, True]]
    assert batch.slot_tokens(0).tolist() == [41] and batch.slot_tokens(1).tolist() == [41]
    assert batch.num_rows == 1
