"""The particle machinery on the offline SmolLM2-135M-Instruct (the `real` marker): cache rows after resampling
equal a full recompute with a real tokenizer and attention implementation, and `decoding="particle_filter"`
through `enable` is reproducible and accounts its cost."""

from __future__ import annotations

import pytest
import torch
from test_particles_toys import one_thread  # noqa: F401  (autouse fixture)
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

import hf_decoding as hfd
from hf_decoding.rewards import ArithmeticStepVerifier
from hf_decoding.smc import ParticleBatch
from hf_decoding.smc.steps import StepConfig, StepRunner

pytestmark = pytest.mark.real

QUESTION = "A shelf has 6 rows of 7 books. How many books are on the shelf?"


def _inputs(tok, questions):
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    return tok(texts, return_tensors="pt", padding=True)


@torch.no_grad()
def test_smollm2_cache_rows_after_resampling_equal_recompute(smollm2):
    model, tok = smollm2
    inputs = _inputs(tok, [QUESTION, "What is 3 + 4?"])  # left padded: two prompt lengths
    config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=True)
    batch = ParticleBatch.from_prompts(
        model,
        inputs["input_ids"],
        config,
        {"attention_mask": inputs["attention_mask"], "use_cache": True},
        3,
        tok.pad_token_id,
    )
    gen = torch.Generator().manual_seed(0)
    runner = StepRunner(
        model,
        LogitsProcessorList(),
        StoppingCriteriaList(),
        config,
        StepConfig(step_delimiter=(" ",), tokens_per_step=4, max_new_tokens=12),
        tokenizer=tok,
        generator=gen,
    )
    for k in range(2):
        runner.run(batch, k)
        batch.resample(torch.randint(0, 3, (2, 3), generator=gen))
    for row in range(batch.num_rows):
        group = int(batch.row_slot[row]) // batch.num_particles
        prompt = inputs["input_ids"][group][inputs["attention_mask"][group].bool()]
        ids = torch.cat([prompt, batch.row_tokens(row)])[None]
        expected = model(input_ids=ids).logits[0, -1].float()
        assert torch.allclose(batch.next_logits[row], expected, atol=2e-3), (
            (expected - batch.next_logits[row]).abs().max()
        )


def test_smollm2_particle_filter_through_enable(smollm2):
    model, tok = smollm2
    hfd.enable(model)
    inputs = _inputs(tok, [QUESTION])

    def run(seed):
        return model.generate(
            **inputs,
            decoding="particle_filter",
            tokenizer=tok,
            num_particles=3,
            reward_model=ArithmeticStepVerifier(),
            reward_prompts=[QUESTION],
            step_delimiter="\n",
            tokens_per_step=6,
            do_sample=True,
            temperature=0.8,
            top_k=0,
            max_new_tokens=12,
            seed=seed,
            return_dict_in_generate=True,
        )

    a, b = run(0), run(0)
    assert torch.equal(a.particles.sequences, b.particles.sequences)
    assert a.particles.sequences.shape[:2] == (1, 3)
    assert 0 < a.cost.generated_tokens <= 3 * 12
    assert a.cost.reward_calls >= 3 and a.cost.forward_passes <= 1 + 12
