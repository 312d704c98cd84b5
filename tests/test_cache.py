"""`hf_decoding.generation.cache`: the one owner of the cache and of transformers' private generation names.

Every helper runs on the installed transformers (CI runs this file on the lowest supported release and on the
newest). The central check: after re-indexing the cache rows (permutation, fan-out, dropped rows) the next-token
logits equal a fresh forward over the re-indexed sequences, for a dynamic cache, a static cache (re-indexed in
place), Gemma-3's sliding-window / hybrid layers and a model run without a cache.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest
import torch
from conftest import PAD, build_tiny_llama
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation.utils import GenerateDecoderOnlyOutput

from hf_decoding.generation import cache as cache_module
from hf_decoding.generation.cache import (
    CACHE_KWARG,
    OUTPUT_CACHE_FIELD,
    cache_output_fields,
    cache_rows,
    copy_cache,
    crop_cache,
    decode_step,
    eos_token_tensor,
    forward_cache_kwargs,
    get_cache,
    keep_custom_generation_keys,
    new_dynamic_cache,
    output_cache,
    output_cache_kwargs,
    pad_token_tensor,
    prefill,
    reorder_rows,
    with_cache,
    without_cache,
)

PACKAGE = pathlib.Path(cache_module.__file__).resolve().parents[1]


def build_tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    """Two layers, one sliding (window 4, shorter than the prompts) and one global: the hybrid layout."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=PAD,
        eos_token_id=2,
        bos_token_id=1,
    )
    model = Gemma3ForCausalLM(config).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = 2
    return model


PROMPTS = torch.tensor([[PAD, PAD, 5, 9, 11, 3, 7], [7, 8, 9, 10, 11, 12, 13]])


def _fresh_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits[:, -1]


def _reorder_then_step(model, index: torch.Tensor, captured: dict, **generate_kwargs):
    """Runs `generate` with a decoder that prefills, re-indexes the rows with `index`, feeds one token per row
    and records the next-token logits, the sequences and the cache storage before / after."""

    def decoder(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
        captured["keys_before_prefill"] = sorted(model_kwargs)
        outputs, kwargs = prefill(model, input_ids, generation_config, model_kwargs)
        cache = get_cache(kwargs)
        captured["cache"] = cache
        captured["ptrs"] = _storage(cache)
        kwargs = reorder_rows(kwargs, index)
        captured["ptrs_after"] = _storage(cache)
        tokens = torch.arange(index.shape[0]) % 50 + 3
        ids = torch.cat([input_ids.index_select(0, index), tokens[:, None]], dim=-1)
        outputs, kwargs = decode_step(model, ids, kwargs)
        captured.update(logits=outputs.logits[:, -1].float(), ids=ids, mask=kwargs["attention_mask"][:, :-1])
        return ids

    with torch.no_grad():
        model.generate(
            input_ids=PROMPTS,
            attention_mask=(PROMPTS != PAD).long(),
            custom_generate=decoder,
            max_new_tokens=4,
            do_sample=False,
            **generate_kwargs,
        )
    return captured


def _storage(cache) -> list[int]:
    if cache is None:
        return []
    return [layer.keys.data_ptr() for layer in cache.layers if isinstance(getattr(layer, "keys", None), torch.Tensor)]


MODELS = {"llama": build_tiny_llama, "gemma3": build_tiny_gemma3}
INDICES = {
    "permute": torch.tensor([1, 0]),
    "fan_out": torch.tensor([0, 0, 1, 1, 0, 1]),
    "drop": torch.tensor([1]),
}


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("reindex", sorted(INDICES))
def test_logits_after_reordering_equal_a_fresh_forward(family, cache_implementation, reindex):
    model = MODELS[family]()
    index = INDICES[reindex]
    captured = _reorder_then_step(model, index, {}, cache_implementation=cache_implementation)
    assert CACHE_KWARG in captured["keys_before_prefill"]
    cache = captured["cache"]
    assert isinstance(cache, Cache)
    assert cache_rows(cache) == index.shape[0]
    expected = _fresh_logits(model, captured["ids"], captured["mask"])
    torch.testing.assert_close(captured["logits"], expected, atol=1e-5, rtol=1e-4)
    if cache_implementation == "static" and reindex == "permute":
        # Same rows: re-indexed in place, the storage (a compiled graph's static address) is unchanged.
        assert captured["ptrs_after"] == captured["ptrs"]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_without_a_cache_rows_and_steps_still_work(family):
    model = MODELS[family]()
    captured = _reorder_then_step(model, INDICES["fan_out"], {}, use_cache=False)
    assert captured["cache"] is None
    expected = _fresh_logits(model, captured["ids"], captured["mask"])
    torch.testing.assert_close(captured["logits"], expected, atol=1e-5, rtol=1e-4)


def test_model_kwargs_helpers_use_the_installed_key():
    cache = DynamicCache()
    kwargs = with_cache({"attention_mask": torch.ones(2, 3)}, cache)
    assert kwargs[CACHE_KWARG] is cache and get_cache(kwargs) is cache
    # A cache under an old or new spelling is found and replaced, never duplicated.
    other = "cache" if CACHE_KWARG == "past_key_values" else "past_key_values"
    assert get_cache({other: cache}) is cache
    assert set(with_cache({other: cache}, cache)) == {CACHE_KWARG}
    assert get_cache(without_cache(kwargs)) is None and "attention_mask" in without_cache(kwargs)
    assert with_cache(kwargs, None) == without_cache(kwargs)


def test_the_detected_names_match_the_installed_signatures():
    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    assert CACHE_KWARG in parameters
    assert "next_sequence_length" in parameters and "is_first_iteration" in parameters
    assert OUTPUT_CACHE_FIELD in GenerateDecoderOnlyOutput.__dataclass_fields__
    model = build_tiny_llama()
    assert hasattr(model, "_prefill") and hasattr(model, "_update_model_kwargs_for_generation")
    assert list(forward_cache_kwargs(model, None)) == [
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ]


def test_copy_crop_and_outputs():
    model = build_tiny_llama()
    cache = new_dynamic_cache(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, **forward_cache_kwargs(model, cache))
    assert output_cache(out) is cache and cache.get_seq_length() == 4
    copied = get_cache(copy_cache(with_cache({}, cache)))
    assert copied is not cache and copied.get_seq_length() == 4
    crop_cache(copied, 1)
    assert copied.get_seq_length() == 3 and cache.get_seq_length() == 4
    built = GenerateDecoderOnlyOutput(sequences=ids, **output_cache_kwargs(cache))
    assert output_cache(built) is cache
    fields = cache_output_fields(cache)
    assert fields["cache"] is cache and fields["past_key_values"] is cache


def test_gemma3_dynamic_cache_has_sliding_layers():
    model = build_tiny_gemma3()
    cache = new_dynamic_cache(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]), use_cache=True, **forward_cache_kwargs(model, cache))
    assert [getattr(layer, "is_sliding", False) for layer in cache.layers] == [True, False]


def test_generation_config_helpers():
    config = GenerationConfig(pad_token_id=0, eos_token_id=[2, 3])
    assert int(pad_token_tensor(config)) == 0
    assert eos_token_tensor(config).tolist() == [2, 3]
    assert pad_token_tensor(GenerationConfig()) is None and eos_token_tensor(GenerationConfig()) is None
    config._from_model_config = True
    assert keep_custom_generation_keys(config)._from_model_config is False


# Names that only `generation/cache.py` may use. `autodeco/_custom_generate.py` is exempt: it is exported as a
# standalone Hub recipe that cannot import hf_decoding, and carries its own version handling (tested in
# test_autodeco_hub.py on the installed release).
_OWNED = {
    "the cache as a kwargs key or keyword": r"""["']past_key_values["']|\bpast_key_values=|["']cache["']\s*[:\]]|\bcache=""",
    "transformers' prefill": r"\._prefill\(",
    "_update_model_kwargs_for_generation": r"_update_model_kwargs_for_generation",
    "the prepared pad / eos tensors": r"_pad_token_tensor|_eos_token_tensor",
    "_from_model_config": r"_from_model_config\s*=",
    "cache row internals": r"batch_select_indices|batch_repeat_interleave|\.reorder_cache\(|DynamicCache\(",
    "the compiled decode call": r"_valid_auto_compile_criteria|get_compiled_call|_compile_all_devices",
    "the decode context": r"_optimize_model_for_decode",
}
_EXEMPT = {"generation/cache.py", "autodeco/_custom_generate.py"}


@pytest.mark.parametrize("what", sorted(_OWNED))
def test_no_other_module_names_the_cache_or_private_generation_names(what):
    pattern = re.compile(_OWNED[what])
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in _EXEMPT:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, f"{what} is owned by hf_decoding/generation/cache.py:\n" + "\n".join(offenders)


def test_the_standalone_hub_recipe_agrees_on_the_output_cache_field():
    from hf_decoding.autodeco import _custom_generate

    assert _custom_generate._output_cache_field() == OUTPUT_CACHE_FIELD


class _Lines:
    """Collects what transformers logs and every Python warning raised while it is active."""

    def __enter__(self):
        import logging
        import warnings

        self.logged: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.logged.append(record.getMessage())
        self.handler, self.logger = handler, logging.getLogger("transformers")
        self.logger.addHandler(handler)
        self.catcher = warnings.catch_warnings(record=True)
        self.warned = self.catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)
        self.logger.removeHandler(self.handler)

    @property
    def messages(self) -> list[str]:
        return self.logged + [str(w.message) for w in self.warned]


def test_no_cache_deprecation_line_from_any_decoder_family():
    """transformers ≥ 5.24 logs "`past_key_values`/`cache_params` are deprecated" whenever the cache reaches it
    under the old name; every path that hands a cache on must use the installed release's name."""
    from test_particles_toys import SpyReward, prompt_batch, toy_tokenizer

    import hf_decoding as hfd
    from hf_decoding.autodeco import AutoDecoModelForCausalLM

    model = hfd.enable(build_tiny_llama(seed=1))
    inputs = prompt_batch(2)
    with _Lines() as lines:
        for decoding, options in [
            ("sample", {}),
            ("distortion_aware_nucleus", {"top_p": 0.9}),
            ("globally_normalized", {"num_particles": 3}),
            ("particle_filter", {"num_particles": 3, "reward_model": SpyReward(), "tokenizer": toy_tokenizer()}),
        ]:
            out = model.generate(
                **inputs,
                decoding=decoding,
                do_sample=True,
                max_new_tokens=4,
                seed=0,
                return_dict_in_generate=True,
                **options,
            )
            assert out.sequences.shape[0] == 2
        AutoDecoModelForCausalLM.from_base(build_tiny_llama(), seed=0).generate(**inputs, max_new_tokens=3, seed=0)
    deprecations = [m for m in lines.messages if "deprecated" in m and ("past_key_values" in m or "cache" in m)]
    assert not deprecations, deprecations
