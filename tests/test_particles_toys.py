"""Toy fixtures of the particle tests: a 64-token word-level tokenizer matching the tiny Llama's vocabulary, and
deterministic rewards. Imported by the other `test_particles*` / `test_smc_*` / `test_rewards` modules."""

from __future__ import annotations

import functools
import hashlib

import pytest
import torch
from conftest import EOS, PAD, VOCAB
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: id -> text of the toy vocabulary (ids 0-2 are pad / bos / eos like the tiny Llama).
TOY_VOCAB = ["<pad>", "<s>", "</s>", "\n\n", ".\n\n", "\n", " ", "=", "+", "-"]
TOY_VOCAB += [str(d) for d in range(10)]  # 10-19
TOY_VOCAB += ["\\boxed{", "}"]  # 20, 21
TOY_VOCAB += [chr(ord("a") + i) for i in range(26)]  # 22-47
TOY_VOCAB += [f"w{i}" for i in range(len(TOY_VOCAB), VOCAB)]
assert len(TOY_VOCAB) == VOCAB
DELIM, MERGED, NEWLINE, SPACE = 3, 4, 5, 6
BOXED_OPEN, BOXED_CLOSE = 20, 21


@functools.lru_cache(maxsize=1)
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer whose token `i` decodes to `TOY_VOCAB[i]` (texts concatenate without spaces)."""
    model = models.WordLevel({t: i for i, t in enumerate(TOY_VOCAB)}, unk_token="<pad>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    assert fast.pad_token_id == PAD and fast.eos_token_id == EOS
    return fast


def text_value(text: str) -> float:
    """A deterministic score in (0.05, 0.95) from a string."""
    digest = hashlib.sha256(text.encode()).digest()
    return 0.05 + 0.9 * digest[0] / 255


class SpyReward:
    """A text reward scoring each whole partial text with `text_value`, recording every call."""

    def __init__(self):
        self.calls: list[tuple[list[str], list[str]]] = []

    def score(self, prompts: list[str], texts: list[str]) -> list[list[float]]:
        self.calls.append((list(prompts), list(texts)))
        return [[text_value(t)] for t in texts]


def prompt_batch(batch: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[PAD, PAD, 22, 23, 24], [25, 26, 27, 28, 29], [PAD, 30, 31, 32, 33]][:batch])
    return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


def test_toy_tokenizer_round_trip():
    tok = toy_tokenizer()
    assert tok.decode([22, 4, 23]) == "a.\n\nb"
    assert tok.batch_decode([[3], [4]]) == ["\n\n", ".\n\n"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for these tiny models: on a shared 2-core machine, 2 OpenMP threads competing with
    other jobs make each tiny forward pass ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
