"""The step state-space model: delimiters on token ids (merged and split), tokens_per_step, stop patterns."""

from __future__ import annotations

import torch
from conftest import EOS, PAD, build_tiny_llama
from test_particles_toys import (  # noqa: F401
    BOXED_CLOSE,
    BOXED_OPEN,
    DELIM,
    MERGED,
    NEWLINE,
    TOY_VOCAB,
    one_thread,
    prompt_batch,
    toy_tokenizer,
)
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from hf_decoding.smc import ParticleBatch
from hf_decoding.smc.steps import BOXED_PATTERN, StepBoundaryDetector, StepConfig, StepRunner


def _feed(detector, tokens):
    state = detector.initial_state(1, torch.device("cpu"))
    hits = []
    for t in tokens:
        state, matched = detector.advance(state, torch.tensor([t]))
        hits.append(bool(matched))
    return hits


def test_delimiter_detection_on_token_ids():
    detector = StepBoundaryDetector(TOY_VOCAB, ("\n\n",))
    assert _feed(detector, [22, DELIM]) == [False, True]
    assert _feed(detector, [22, MERGED]) == [False, True]  # ".\n\n" merged in one token
    assert _feed(detector, [22, NEWLINE, NEWLINE]) == [False, False, True]  # split over two tokens
    assert _feed(detector, [22, NEWLINE, 23, NEWLINE]) == [False] * 4
    assert detector.is_blank(torch.tensor([DELIM, 22])).tolist() == [True, False]


def test_multiple_delimiters():
    detector = StepBoundaryDetector(TOY_VOCAB, ("\n\n", "}"))
    assert _feed(detector, [22, BOXED_CLOSE]) == [False, True]


class Script(LogitsProcessor):
    """Forces row r to emit script[r][k] at its k-th call (pad afterwards)."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.k = [0] * len(scripts)

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -1e9)
        for r, script in enumerate(self.scripts):
            token = script[min(self.k[r], len(script) - 1)]
            out[r, token] = 0.0
            self.k[r] += 1
        return out


def _runner(model, scripts, **step):
    config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD)
    inputs = prompt_batch(1)
    batch = ParticleBatch.from_prompts(
        model,
        inputs["input_ids"],
        config,
        {"attention_mask": inputs["attention_mask"], "use_cache": True},
        len(scripts),
        PAD,
    )
    runner = StepRunner(
        model,
        LogitsProcessorList([Script(scripts)]),
        None,
        config,
        StepConfig(max_new_tokens=20, **step),
        tokenizer=toy_tokenizer(),
    )
    return batch, runner


def test_rows_wait_for_each_other_and_blank_steps_do_not_end():
    model = build_tiny_llama()
    # row 0: "a\n\n" (2 tokens); row 1: "\n\n b c.\n\n" (blank start does not end the step, merged ends it)
    batch, runner = _runner(model, [[22, DELIM, 23], [DELIM, 23, 24, MERGED, 25]])
    result = runner.run(batch, 0)
    assert result.lengths.tolist() == [2, 4]
    assert result.texts == ["a\n\n", "\n\nbc.\n\n"]
    assert not result.finished.any()
    # the waiting row got holes: mask 0 after its step
    assert batch.attention_mask[0, -2:].tolist() == [0, 0]


def test_tokens_per_step_and_stop_pattern_and_max_steps():
    model = build_tiny_llama()
    batch, runner = _runner(model, [[22, 23, 24, 25, 26, 27]] * 2, step_delimiter=None, tokens_per_step=2)
    assert runner.run(batch, 0).lengths.tolist() == [2, 2]
    boxed = [22, BOXED_OPEN, 10, 11, BOXED_CLOSE, 23, DELIM, 24]
    batch, runner = _runner(model, [boxed], stop_pattern=BOXED_PATTERN)
    result = runner.run(batch, 0)
    assert result.finished.tolist() == [True] and result.texts[0].startswith("a\\boxed{01}")
    batch, runner = _runner(model, [[22, DELIM] * 5], max_steps=2)
    assert not runner.run(batch, 0).finished.any()
    assert runner.run(batch, 1).finished.all()


def test_step_config_validation():
    import pytest

    from hf_decoding.errors import InvalidDecodingArgument

    for bad in ({"tokens_per_step": 0}, {"max_steps": -1}, {"stop_pattern": "("}, {"step_delimiter": ""}):
        with pytest.raises(InvalidDecodingArgument):
            StepConfig(**bad)
