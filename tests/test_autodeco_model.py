"""AutoDeco generation: per-row/per-token values, multiplier semantics, batch independence, plain models, pipeline."""

from __future__ import annotations

import pathlib

import pytest
import torch
from conftest import EOS, PAD, build_tiny_llama
from transformers import LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

import hf_decoding as hfd
from hf_decoding.autodeco import AutoDecoModelForCausalLM, capture_lm_head_input, register_auto_classes
from hf_decoding.decoders.autodeco import autodeco, with_per_row_warpers
from hf_decoding.processors import PerRowTemperatureLogitsWarper, PerRowTopPLogitsWarper


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and oversubscribed OpenMP threads are very slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


register_auto_classes()


@pytest.fixture(scope="module")
def base():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def model(base) -> AutoDecoModelForCausalLM:
    return AutoDecoModelForCausalLM.from_base(base, seed=1)


@pytest.fixture
def constant_model(base) -> AutoDecoModelForCausalLM:
    return AutoDecoModelForCausalLM.from_base(base, init_temperature=0.8, init_top_p=0.9)


def test_default_generation_fills_traces(model, prompt) -> None:
    out = model.generate(**prompt, max_new_tokens=7, return_dict_in_generate=True, seed=0)
    assert isinstance(out, hfd.DecodingOutput)
    new = out.sequences.shape[1] - prompt["input_ids"].shape[1]
    assert out.autodeco.temperature.shape == out.autodeco.top_p.shape == (3, new)
    assert out.distortion.per_step.shape == (3, new)
    alive = out.autodeco.temperature > 0
    assert bool((out.autodeco.top_p[alive] > 0).all() and (out.autodeco.top_p <= 1).all())
    # Values vary per token and per row (random heads, different contexts).
    assert out.autodeco.temperature[alive].unique().numel() > 3
    assert torch.is_tensor(model.generate(**prompt, max_new_tokens=3))


def test_user_values_are_multipliers(constant_model, prompt) -> None:
    out = constant_model.generate(
        **prompt, max_new_tokens=5, temperature=0.5, top_p=0.5, seed=0, return_dict_in_generate=True
    )
    alive = ~out.autodeco.temperature.isnan()
    torch.testing.assert_close(out.autodeco.temperature[alive], torch.full((int(alive.sum()),), 0.4))
    torch.testing.assert_close(out.autodeco.top_p[alive], torch.full((int(alive.sum()),), 0.45))
    # p = clamp(P̂ · p_user, 0, 1): the wrapper's default multipliers are 1.
    out = constant_model.generate(**prompt, max_new_tokens=3, seed=0, return_dict_in_generate=True)
    torch.testing.assert_close(out.autodeco.top_p[:, 0], torch.full((3,), 0.9))


def test_temperature_zero_is_greedy(model, base, prompt) -> None:
    out = model.generate(**prompt, max_new_tokens=6, temperature=0.0, return_dict_in_generate=True)
    greedy = base.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(out.sequences, greedy)
    alive = ~out.autodeco.temperature.isnan()
    assert bool((out.autodeco.temperature[alive] == 0).all())
    assert torch.equal(model.generate(**prompt, max_new_tokens=6, do_sample=False), greedy)


def test_applied_values_are_the_heads_predictions(model, prompt) -> None:
    out = model.generate(**prompt, max_new_tokens=4, seed=3, return_dict_in_generate=True)
    prompt_len = prompt["input_ids"].shape[1]
    sequences, mask = (
        out.sequences,
        torch.cat(
            [
                prompt["attention_mask"],
                torch.ones(3, sequences_len := out.sequences.shape[1] - prompt_len, dtype=torch.long),
            ],
            dim=1,
        ),
    )
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    forward = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids)
    expected_t = forward.temperature[:, prompt_len - 1 : prompt_len - 1 + sequences_len]
    alive = out.autodeco.temperature > 0
    torch.testing.assert_close(out.autodeco.temperature[alive], expected_t[alive], atol=1e-4, rtol=1e-4)


def test_rows_are_independent_of_the_batch(model, prompt) -> None:
    # top_p multiplier 1e-6 keeps only the top token (deterministic) while the predicted T is still applied.
    kwargs = {"max_new_tokens": 6, "top_p": 1e-6, "seed": 0, "return_dict_in_generate": True}
    batch = model.generate(**prompt, **kwargs)
    for row in range(3):
        length = int(prompt["attention_mask"][row].sum())
        alone = {k: v[row : row + 1, -length:] for k, v in prompt.items()}
        single = model.generate(**alone, **kwargs)
        new = single.sequences.shape[1] - length
        assert torch.equal(single.sequences[0, length:], batch.sequences[row, prompt["input_ids"].shape[1] :][:new])
        torch.testing.assert_close(
            single.autodeco.temperature[0], batch.autodeco.temperature[row, :new], atol=1e-5, rtol=1e-5
        )


def test_plain_model_with_heads_matches_the_wrapper(model, base, prompt) -> None:
    torch.manual_seed(0)
    plain = base.generate(
        **prompt, max_new_tokens=6, custom_generate=autodeco, autodeco_heads=model.heads, do_sample=True, top_k=0
    )
    torch.manual_seed(0)
    wrapped = model.generate(**prompt, max_new_tokens=6)
    assert torch.equal(plain, wrapped)


def test_registered_decoder_on_an_enabled_model(model, prompt) -> None:
    base = build_tiny_llama()
    hfd.register_decoder("autodeco", autodeco, overwrite=True)
    hfd.enable(base)
    out = base.generate(
        **prompt,
        decoding="autodeco",
        autodeco_heads=model.heads,
        do_sample=True,
        top_k=0,
        max_new_tokens=4,
        seed=0,
        return_dict_in_generate=True,
    )
    assert out.autodeco.temperature.shape[0] == 3


def test_decoder_reads_only_the_last_hidden_state(model, base, prompt) -> None:
    calls = []
    original = base.forward

    def recording(*args, **kwargs):
        calls.append(kwargs.get("output_hidden_states"))
        return original(*args, **kwargs)

    base.forward = recording
    try:
        model.generate(**prompt, max_new_tokens=3, seed=0)
    finally:
        del base.forward
    assert calls and not any(calls)
    with capture_lm_head_input(base) as capture:
        logits = base(**prompt, logits_to_keep=1).logits
        hidden = capture.pop()
    reference = base(**prompt, output_hidden_states=True).hidden_states[-1][:, -1:]
    torch.testing.assert_close(hidden, reference)  # post-final-norm state of the last position
    torch.testing.assert_close(base.lm_head(hidden), logits)


def test_streamer_receives_every_token(model, prompt) -> None:
    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.chunks, self.ended = [], False

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value)

        def end(self) -> None:
            self.ended = True

    streamer = Collect()
    single = {k: v[1:2] for k, v in prompt.items()}
    out = model.generate(**single, max_new_tokens=4, seed=0, streamer=streamer)
    assert streamer.ended and len(streamer.chunks) == 1 + out.shape[1] - single["input_ids"].shape[1]


def test_per_row_warpers_take_transformers_places() -> None:
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.1),
            TemperatureLogitsWarper(0.5),
            TopKLogitsWarper(10),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.1),
        ]
    )
    out, _, _ = with_per_row_warpers(chain)
    assert [type(x) for x in out] == [
        RepetitionPenaltyLogitsProcessor,
        PerRowTemperatureLogitsWarper,
        TopKLogitsWarper,
        PerRowTopPLogitsWarper,
        MinPLogitsWarper,
    ]
    out, _, _ = with_per_row_warpers(LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.1)]))
    assert [type(x) for x in out] == [
        RepetitionPenaltyLogitsProcessor,
        PerRowTemperatureLogitsWarper,
        PerRowTopPLogitsWarper,
    ]


def test_forward_returns_predictions_for_kept_positions(model, prompt) -> None:
    out = model(**prompt, logits_to_keep=1)
    assert out.logits.shape == (3, 1, 64) and out.temperature.shape == (3, 1)


@pytest.mark.real
def test_pipeline_text_generation(base, tmp_path: pathlib.Path, smollm2) -> None:
    from transformers import pipeline

    tokenizer = smollm2[1]  # a real tokenizer (SmolLM2's) on a tiny random model
    tiny = build_tiny_llama(vocab_size=len(tokenizer))
    model = AutoDecoModelForCausalLM.from_base(tiny)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("Hello", max_new_tokens=4, return_full_text=False)
    assert isinstance(result[0]["generated_text"], str)


def test_left_padding_token_ids_are_respected(model) -> None:
    ids = torch.tensor([[PAD, PAD, 5, 6], [3, 4, 5, 6]])
    out = model.generate(
        input_ids=ids,
        attention_mask=(ids != PAD).long(),
        max_new_tokens=3,
        top_p=1e-6,
        seed=0,
        return_dict_in_generate=True,
    )
    same = model.generate(
        input_ids=ids[:1, 2:],
        attention_mask=torch.ones(1, 2, dtype=torch.long),
        max_new_tokens=3,
        top_p=1e-6,
        seed=0,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences[0, 4:], same.sequences[0, 2:])


def test_building_heads_leaves_the_global_rng_alone(base) -> None:
    state = torch.get_rng_state()
    AutoDecoModelForCausalLM.from_base(base, seed=5, init_temperature=0.5)
    assert torch.equal(state, torch.get_rng_state())


class _EndRowZeroFirst:
    """Forces EOS on row 0 at its first new token, so that row 0 finishes while the others go on."""

    def __init__(self, prompt_len: int, eos: int):
        self.prompt_len, self.eos = prompt_len, eos

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.prompt_len:
            return scores
        forced = torch.full_like(scores[0], float("-inf"))
        forced[self.eos] = 0.0
        return torch.cat([forced[None], scores[1:]])


def test_positions_after_a_row_finished_are_nan(model, prompt) -> None:
    width = prompt["input_ids"].shape[1]
    out = model.generate(
        **prompt,
        max_new_tokens=5,
        min_new_tokens=0,
        seed=0,
        return_dict_in_generate=True,
        logits_processor=LogitsProcessorList([_EndRowZeroFirst(width, EOS)]),
    )
    assert out.sequences[0, width] == EOS and out.sequences.shape[1] > width + 1
    for trace in (out.autodeco.temperature, out.autodeco.top_p):
        # Row 0: a prediction for its EOS step, NaN afterwards (no prediction was made there, not top-p = 0).
        assert not bool(trace[0, 0].isnan()) and bool(trace[0, 1:].isnan().all())
        assert not bool(trace[1:, 0].isnan().any())
