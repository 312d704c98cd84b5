"""Shared fixtures: tiny random causal LMs built in code (no download), and the offline real model."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 64
EOS = 2
PAD = 0


def build_tiny_llama(seed: int = 0, vocab_size: int = VOCAB, eos_token_id: int = EOS) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights; large enough to exercise caches, masks and processors."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=eos_token_id,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    # Sharpen the output layer so that greedy paths and EOS are reachable in a few steps.
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model() -> LlamaForCausalLM:
    return build_tiny_llama()


@pytest.fixture
def fresh_tiny_model() -> LlamaForCausalLM:
    return build_tiny_llama()


@pytest.fixture
def prompt() -> dict[str, torch.Tensor]:
    """A left-padded batch of three prompts."""
    input_ids = torch.tensor(
        [
            [PAD, PAD, 5, 9, 11, 3],
            [7, 8, 9, 10, 11, 12],
            [PAD, PAD, PAD, 4, 4, 6],
        ]
    )
    attention_mask = (input_ids != PAD).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the offline wheel (cached as safetensors after the first load)."""
    from hf_decoding.errors import MissingModelError
    from hf_decoding.models import load_default_model

    try:
        return load_default_model()
    except MissingModelError as err:  # pragma: no cover - CI installs the wheel
        pytest.skip(str(err))
