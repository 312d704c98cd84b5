"""Typed errors, the decoder registry, `enable`, streamers, stop strings and the package's public names."""

from __future__ import annotations

import importlib
import string

import pytest
import torch
from conftest import EOS, VOCAB, build_tiny_llama
from transformers import GenerationConfig, LogitsProcessor, PreTrainedTokenizerFast, TextStreamer
from transformers.generation.streamers import BaseStreamer

import hf_decoding
from hf_decoding import (
    HfDecodingError,
    InvalidDecodingArgument,
    InvalidLogitsError,
    UnknownDecodingError,
    available_decoders,
    register_decoder,
)
from hf_decoding.registry import _DECODERS


@pytest.fixture(scope="module")
def enabled_model():
    return hf_decoding.enable(build_tiny_llama())


@pytest.fixture(scope="module")
def plain_model():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def char_tokenizer() -> PreTrainedTokenizerFast:
    """A 64-token character-level tokenizer for the tiny model: 4 special tokens, then one token per character."""
    from tokenizers import Tokenizer, decoders, models

    chars = string.ascii_lowercase + string.ascii_uppercase + "01234567"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    assert tokenizer.eos_token_id == EOS
    assert tokenizer("abZ7", add_special_tokens=False)["input_ids"] == [4, 5, 4 + 26 + 25, 63]
    return tokenizer


@pytest.fixture
def single_prompt() -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 11]])


# --- argument and logits errors --------------------------------------------------------------------------------------


def test_unknown_decoding_lists_available_decoders(enabled_model, prompt):
    with pytest.raises(UnknownDecodingError) as excinfo:
        enabled_model.generate(**prompt, decoding="no_such_method", max_new_tokens=2)
    message = str(excinfo.value)
    assert "no_such_method" in message
    for name in available_decoders():
        assert name in message
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, HfDecodingError)


def test_unknown_decoding_from_generation_config(enabled_model, prompt):
    config = GenerationConfig(decoding="nope", max_new_tokens=2)
    with pytest.raises(UnknownDecodingError, match="nope"):
        enabled_model.generate(**prompt, generation_config=config)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_p", 1.5),
        ("top_p", 0),
        ("top_p", -0.1),
        ("temperature", -1),
        ("temperature", float("nan")),
        ("top_k", -3),
        ("top_k", 2.5),
        ("min_p", 1.5),
        ("typical_p", 0.0),
        ("max_new_tokens", 2.5),
        ("max_new_tokens", "8"),
        ("max_new_tokens", 0),
        ("num_return_sequences", 0),
    ],
)
def test_invalid_sampling_argument_names_argument_and_value(enabled_model, prompt, name, value):
    kwargs = {"do_sample": True, "max_new_tokens": 3, name: value}
    with pytest.raises(InvalidDecodingArgument) as excinfo:
        enabled_model.generate(**prompt, decoding="sample", **kwargs)
    message = str(excinfo.value)
    assert f"`{name}`" in message
    assert repr(value) in message
    assert isinstance(excinfo.value, ValueError)


def test_invalid_argument_from_passed_generation_config(enabled_model, prompt):
    config = GenerationConfig(decoding="sample", do_sample=True, max_new_tokens=3)
    config.top_p = 1.5  # GenerationConfig itself does not validate on attribute assignment
    with pytest.raises(InvalidDecodingArgument, match="top_p"):
        enabled_model.generate(**prompt, generation_config=config)


def test_zero_temperature_with_sampling_is_rejected(enabled_model, prompt):
    with pytest.raises(InvalidDecodingArgument, match="temperature"):
        enabled_model.generate(**prompt, decoding="sample", do_sample=True, temperature=0.0, max_new_tokens=2)


@pytest.mark.parametrize("decoding", ["sample", "distortion_aware_nucleus", "globally_normalized"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_temperature_is_rejected(enabled_model, prompt, decoding, value):
    with pytest.raises(InvalidDecodingArgument, match=r"`temperature` must be a finite number, got -?inf.*1e4"):
        enabled_model.generate(**prompt, decoding=decoding, do_sample=True, temperature=value, max_new_tokens=2)
    config = GenerationConfig(do_sample=True, temperature=value, max_new_tokens=2)
    with pytest.raises(InvalidDecodingArgument, match="finite"):
        enabled_model.generate(**prompt, decoding=decoding, generation_config=config)


def test_nan_logits_raise_invalid_logits_error(prompt):
    model = hf_decoding.enable(build_tiny_llama())
    with torch.no_grad():
        model.lm_head.weight[7, 3] = float("nan")
    with pytest.raises(InvalidLogitsError) as excinfo:
        model.generate(**prompt, decoding="sample", do_sample=True, max_new_tokens=3)
    assert "NaN" in str(excinfo.value)
    assert "step 0" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_nan_logits_of_one_row_name_that_row(prompt, monkeypatch):
    model = hf_decoding.enable(build_tiny_llama())
    original_forward = model.forward

    def forward(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        out.logits[1, -1, 5] = float("nan")
        return out

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(InvalidLogitsError, match=r"NaN.*\[1\]"):
        model.generate(**prompt, decoding="sample", max_new_tokens=3)


class _KillRow(LogitsProcessor):
    """Sets every score of one row to -inf."""

    def __init__(self, row: int):
        self.row = row

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[self.row] = -float("inf")
        return scores


@pytest.mark.parametrize("do_sample", [True, False])
def test_all_minus_inf_row_raises_invalid_logits_error(enabled_model, prompt, do_sample):
    with pytest.raises(InvalidLogitsError) as excinfo:
        enabled_model.generate(
            **prompt, decoding="sample", do_sample=do_sample, max_new_tokens=3, logits_processor=[_KillRow(1)]
        )
    message = str(excinfo.value)
    assert "-inf" in message
    assert "[1]" in message


class _NanRow(LogitsProcessor):
    """Writes NaN into one row's scores (e.g. a 0/0 in a user's processor)."""

    def __init__(self, row: int):
        self.row = row

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[self.row, :4] = float("nan")
        return scores


@pytest.mark.parametrize("decoding", ["sample", "distortion_aware_nucleus"])
def test_nan_from_a_processor_names_the_processor_and_rows(enabled_model, prompt, decoding):
    with pytest.raises(InvalidLogitsError) as excinfo:
        enabled_model.generate(
            **prompt, decoding=decoding, do_sample=True, top_p=0.9, max_new_tokens=3, logits_processor=[_NanRow(2)]
        )
    message = str(excinfo.value)
    assert "NaN after `_NanRow`" in message and "rows [2]" in message and "step 0" in message
    assert "Fix:" in message


def test_all_minus_inf_row_names_the_processor(enabled_model, prompt):
    with pytest.raises(InvalidLogitsError, match=r"-inf after `_KillRow`.*rows \[0\]"):
        enabled_model.generate(**prompt, decoding="sample", max_new_tokens=3, logits_processor=[_KillRow(0)])


def test_plus_inf_logits_raise_invalid_logits_error(prompt, monkeypatch):
    model = hf_decoding.enable(build_tiny_llama())
    original_forward = model.forward

    def forward(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        out.logits[2, -1, 9] = float("inf")
        return out

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(InvalidLogitsError) as excinfo:
        model.generate(**prompt, decoding="sample", do_sample=True, max_new_tokens=3)
    message = str(excinfo.value)
    assert "+inf" in message
    assert "[2]" in message


def test_decoding_with_custom_generate_is_rejected(enabled_model, prompt):
    with pytest.raises(InvalidDecodingArgument, match="custom_generate"):
        enabled_model.generate(
            **prompt, decoding="sample", custom_generate=hf_decoding.decoders.sample, max_new_tokens=2
        )


# --- registry and enable ---------------------------------------------------------------------------------------------


@pytest.fixture
def custom_decoder_name():
    name = "test_only_recording_decoder"
    try:
        yield name
    finally:
        _DECODERS.pop(name, None)


def test_register_decoder_works_through_decoding(enabled_model, prompt, custom_decoder_name):
    calls = []

    def recording(
        model, input_ids, logits_processor, stopping_criteria, generation_config, my_flag=None, **model_kwargs
    ):
        calls.append(my_flag)
        return hf_decoding.decoders.sample(
            model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs
        )

    assert custom_decoder_name not in available_decoders()
    assert register_decoder(custom_decoder_name, recording) is recording
    assert custom_decoder_name in available_decoders()
    assert hf_decoding.get_decoder(custom_decoder_name) is recording

    torch.manual_seed(0)
    ours = enabled_model.generate(
        **prompt, decoding=custom_decoder_name, my_flag="x", do_sample=False, max_new_tokens=4
    )
    assert calls == ["x"]
    reference = enabled_model.generate(**prompt, decoding="sample", do_sample=False, max_new_tokens=4)
    assert torch.equal(ours, reference)

    # Re-registering the same function is a no-op; a different one needs overwrite=True.
    register_decoder(custom_decoder_name, recording)

    def other(*args, **kwargs):
        raise AssertionError("not called")

    with pytest.raises(InvalidDecodingArgument, match="overwrite=True"):
        register_decoder(custom_decoder_name, other)
    assert hf_decoding.get_decoder(custom_decoder_name) is recording
    register_decoder(custom_decoder_name, other, overwrite=True)
    assert hf_decoding.get_decoder(custom_decoder_name) is other


def test_duplicate_builtin_name_without_overwrite_raises():
    with pytest.raises(InvalidDecodingArgument, match="sample"):
        register_decoder("sample", lambda *a, **k: None)
    assert hf_decoding.get_decoder("sample") is hf_decoding.decoders.sample


@pytest.mark.parametrize(("name", "fn"), [("not an identifier", print), ("fine_name", 42)])
def test_register_decoder_rejects_bad_arguments(name, fn):
    with pytest.raises(InvalidDecodingArgument):
        register_decoder(name, fn)
    assert name not in _DECODERS


def test_enable_is_idempotent_and_returns_same_model():
    model = build_tiny_llama()
    first = hf_decoding.enable(model)
    assert first is model
    generate = model.generate
    second = hf_decoding.enable(model)
    assert second is model
    assert model.generate is generate, "enable wrapped generate twice"


def test_enable_rejects_objects_without_generate():
    with pytest.raises(InvalidDecodingArgument, match="model"):
        hf_decoding.enable(object())


def test_available_decoders_sorted_and_has_builtins():
    names = available_decoders()
    assert names == sorted(names)
    assert "sample" in names
    assert "distortion_aware_nucleus" in names
    assert hf_decoding.get_decoder("distortion_aware_nucleus") is hf_decoding.decoders.distortion_aware_nucleus


def test_set_default_decoding_rejects_unknown_name():
    model = build_tiny_llama()
    with pytest.raises(UnknownDecodingError):
        hf_decoding.set_default_decoding(model, "no_such_method")
    assert getattr(model.generation_config, "decoding", None) is None


# --- streamers -------------------------------------------------------------------------------------------------------


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("do_sample", [False, True])
def test_streamer_receives_prompt_and_every_new_token(enabled_model, plain_model, single_prompt, do_sample):
    streamer = RecordingStreamer()
    torch.manual_seed(3)
    out = enabled_model.generate(
        single_prompt, decoding="sample", do_sample=do_sample, top_k=0, max_new_tokens=6, streamer=streamer
    )
    assert streamer.ended == 1
    assert torch.equal(streamer.puts[0].reshape(-1), single_prompt[0]), "the prompt was not streamed first"
    new_tokens = out[0, single_prompt.shape[1] :]
    streamed = torch.cat([p.reshape(-1) for p in streamer.puts[1:]])
    assert torch.equal(streamed, new_tokens)
    assert len(streamer.puts) == 1 + new_tokens.numel()

    # The built-in path streams the same values.
    builtin = RecordingStreamer()
    torch.manual_seed(3)
    plain_model.generate(single_prompt, do_sample=do_sample, top_k=0, max_new_tokens=6, streamer=builtin)
    assert builtin.ended == 1
    assert len(builtin.puts) == len(streamer.puts)
    for a, b in zip(builtin.puts, streamer.puts, strict=True):
        assert torch.equal(a.reshape(-1), b.reshape(-1))


def test_text_streamer_prints_generated_text(enabled_model, char_tokenizer, single_prompt, capsys):
    streamer = TextStreamer(char_tokenizer, skip_prompt=True)
    out = enabled_model.generate(single_prompt, decoding="sample", do_sample=False, max_new_tokens=6, streamer=streamer)
    printed = capsys.readouterr().out
    expected = char_tokenizer.decode(out[0, single_prompt.shape[1] :])
    assert expected
    assert printed.strip() == expected.strip()


# --- stop strings ----------------------------------------------------------------------------------------------------


def _stop_string_case(plain_model, tokenizer, prompt_ids, seed):
    """Samples freely and picks a two-character stop string whose first occurrence ends mid-generation."""
    torch.manual_seed(seed)
    free = plain_model.generate(prompt_ids, do_sample=True, top_k=0, max_new_tokens=12)
    new = free[0, prompt_ids.shape[1] :].tolist()
    for end in range(2, len(new) - 2):
        pair = new[end - 1 : end + 1]
        if min(pair) < 4:  # skip special tokens
            continue
        text = tokenizer.decode(new[: end + 1])
        stop = tokenizer.decode(pair)
        if text.find(stop) == len(text) - len(stop):  # first occurrence ends at token `end`
            return stop, end, free
    return None


def test_stop_strings_with_tokenizer_match_builtin(enabled_model, plain_model, char_tokenizer, single_prompt):
    case = None
    for seed in range(20):
        case = _stop_string_case(plain_model, char_tokenizer, single_prompt, seed)
        if case is not None:
            break
    assert case is not None, "no usable stop string found"
    stop, end, free = case
    kwargs = {"do_sample": True, "top_k": 0, "max_new_tokens": 12, "stop_strings": [stop], "tokenizer": char_tokenizer}
    torch.manual_seed(seed)
    builtin = plain_model.generate(single_prompt, **kwargs)
    torch.manual_seed(seed)
    ours = enabled_model.generate(single_prompt, decoding="sample", **kwargs)
    assert torch.equal(ours, builtin)
    # Generation stopped right after the stop string: the free run continued, this one did not.
    assert ours.shape[1] == single_prompt.shape[1] + end + 1 < free.shape[1]
    assert torch.equal(ours[0], free[0, : ours.shape[1]])
    assert char_tokenizer.decode(ours[0, single_prompt.shape[1] :]).endswith(stop)

    # The same through a GenerationConfig.
    config = GenerationConfig(
        decoding="sample",
        do_sample=True,
        top_k=0,
        max_new_tokens=12,
        stop_strings=stop,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    from_config = enabled_model.generate(single_prompt, generation_config=config, tokenizer=char_tokenizer)
    assert torch.equal(from_config, builtin)
    assert config.stop_strings == stop, "the caller's GenerationConfig was modified"


def test_stop_strings_from_model_generation_config(char_tokenizer, single_prompt):
    builtin, ours_model = build_tiny_llama(), hf_decoding.enable(build_tiny_llama())
    case = None
    for seed in range(20):
        case = _stop_string_case(builtin, char_tokenizer, single_prompt, seed)
        if case is not None:
            break
    assert case is not None
    stop, end, _ = case
    for model in (builtin, ours_model):
        model.generation_config.stop_strings = stop
    kwargs = {"do_sample": True, "top_k": 0, "max_new_tokens": 12, "tokenizer": char_tokenizer}
    torch.manual_seed(seed)
    expected = builtin.generate(single_prompt, **kwargs)
    torch.manual_seed(seed)
    ours = ours_model.generate(single_prompt, decoding="sample", **kwargs)
    assert torch.equal(ours, expected)
    assert ours.shape[1] == single_prompt.shape[1] + end + 1
    with pytest.raises(InvalidDecodingArgument, match="tokenizer"):
        ours_model.generate(single_prompt, decoding="sample", max_new_tokens=3)


def test_stop_strings_without_tokenizer_raise(enabled_model, single_prompt):
    with pytest.raises(InvalidDecodingArgument, match="tokenizer"):
        enabled_model.generate(single_prompt, decoding="sample", stop_strings=["ab"], max_new_tokens=3)


# --- public names ----------------------------------------------------------------------------------------------------


def test_all_is_sorted_and_importable():
    names = hf_decoding.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    module = importlib.import_module("hf_decoding")
    for name in names:
        assert hasattr(module, name), name
        assert getattr(module, name) is not None
    namespace: dict = {}
    exec("from hf_decoding import *", namespace)
    assert set(names) <= set(namespace)


def test_error_hierarchy():
    assert issubclass(InvalidDecodingArgument, HfDecodingError)
    assert issubclass(InvalidDecodingArgument, ValueError)
    assert issubclass(InvalidLogitsError, ValueError)
    assert issubclass(UnknownDecodingError, ValueError)
    assert issubclass(hf_decoding.MissingModelError, ImportError)
    assert issubclass(hf_decoding.RewardModelError, RuntimeError)


# ------------------------------------------------------------------------------------------------ probed inputs
_CAUSAL = [
    "sample",
    "distortion_aware_nucleus",
    "globally_normalized",
    "best_of_n",
    "weighted_best_of_n",
    "self_consistency",
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
    "beam_search_prm",
    "dvts",
]


def _reward(prompts, texts):
    return [[0.5] for _ in texts]


def _options(decoding: str, char_tokenizer) -> dict:
    options = {"do_sample": True, "max_new_tokens": 2, "seed": 0}
    if decoding in ("sample", "distortion_aware_nucleus", "globally_normalized"):
        return options
    options.update(num_particles=2, tokenizer=char_tokenizer)
    if decoding != "self_consistency":
        options["reward_model"] = _reward
    if decoding in ("beam_search_prm", "dvts"):
        options["beam_width"] = 1
    return options


@pytest.mark.parametrize("decoding", _CAUSAL)
def test_empty_prompt_is_named(enabled_model, char_tokenizer, decoding):
    with pytest.raises(InvalidDecodingArgument, match=r"`input_ids` .*at least one prompt token.*\(1, 0\).*BOS"):
        enabled_model.generate(
            input_ids=torch.zeros(1, 0, dtype=torch.long), decoding=decoding, **_options(decoding, char_tokenizer)
        )


@pytest.mark.parametrize("decoding", _CAUSAL)
def test_all_padding_row_is_named(enabled_model, char_tokenizer, decoding):
    ids = torch.tensor([[5, 6, 7], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(InvalidDecodingArgument, match=r"`attention_mask` .*all zeros in batch rows \[1\].*empty"):
        enabled_model.generate(
            input_ids=ids, attention_mask=mask, decoding=decoding, **_options(decoding, char_tokenizer)
        )


@pytest.mark.parametrize("ladder", [2.0, 0, "1,2", True])
def test_temperature_ladder_must_be_a_list(enabled_model, char_tokenizer, ladder):
    with pytest.raises(InvalidDecodingArgument, match=r"`temperature_ladder` must be a non-empty list.*\[1\.0, 2\.0"):
        enabled_model.generate(
            input_ids=torch.tensor([[5, 6, 7]]),
            decoding="parallel_tempering",
            temperature_ladder=ladder,
            num_iterations=1,
            **_options("parallel_tempering", char_tokenizer),
        )


@pytest.mark.parametrize("value", [0, -1, 1.5, "x", True])
def test_nucleus_prefilter_k_is_named_as_passed(enabled_model, value):
    with pytest.raises(InvalidDecodingArgument, match=r"`nucleus_prefilter_k` must be a positive integer"):
        enabled_model.generate(
            input_ids=torch.tensor([[5, 6, 7]]),
            decoding="distortion_aware_nucleus",
            do_sample=True,
            top_p=0.9,
            nucleus_prefilter_k=value,
            max_new_tokens=2,
        )
