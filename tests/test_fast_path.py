"""The fast path: `cache_implementation="static"` and a compiled decode step give the tokens of the eager dynamic
path, the static cache is allocated once for B·N rows and re-indexed in place (finished particles leave spare rows
instead of shrinking it), and the compiled forward is traced once, not per step."""

from __future__ import annotations

import pytest
import torch
from conftest import EOS, PAD, build_tiny_llama
from test_particles_toys import SpyReward, prompt_batch, toy_tokenizer
from transformers import LogitsProcessor, LogitsProcessorList

import hf_decoding as hfd
from hf_decoding import AutoDecoModelForCausalLM
from hf_decoding.generation.cache import any_device_compile_config, decode_forward, get_cache, has_fixed_rows
from hf_decoding.smc.state import ParticleBatch

TOK = toy_tokenizer()
NEW_TOKENS = 16
TOL = {"atol": 1e-5, "rtol": 1e-5}  # a static cache attends over its whole (masked) length: float32 rounding
OPTIONS = {
    "particle_filter": {"tokens_per_step": 3},
    "particle_gibbs": {"tokens_per_step": 3, "num_iterations": 2},
    "parallel_tempering": {"tokens_per_step": 3, "num_iterations": 1, "temperature_ladder": [1.0, 2.0]},
    "beam_search_prm": {"tokens_per_step": 3, "beam_width": 2},
    "dvts": {"tokens_per_step": 3, "beam_width": 2},
}
SINGLE = ["sample", "distortion_aware_nucleus", "autodeco"]
PARTICLES = [
    "globally_normalized",
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
    "best_of_n",
    "weighted_best_of_n",
    "self_consistency",
    "beam_search_prm",
    "dvts",
]


class BoostEos(LogitsProcessor):
    """Makes EOS likely enough that rows and particles finish at different steps."""

    def __call__(self, input_ids, scores):
        return scores + torch.nn.functional.one_hot(torch.tensor(EOS), scores.shape[-1]).to(scores.dtype) * 2.5


@pytest.fixture(scope="module")
def model():
    return hfd.enable(build_tiny_llama(seed=1))


def _generate(model, decoding: str, **kwargs):
    options = {
        "decoding": decoding,
        "seed": 0,
        "tokenizer": TOK,
        "do_sample": True,
        "max_new_tokens": NEW_TOKENS,
        "return_dict_in_generate": True,
        "logits_processor": LogitsProcessorList([BoostEos()]),
        **OPTIONS.get(decoding, {}),
    }
    options.update(kwargs)
    if decoding not in SINGLE:
        options["num_particles"] = 4
    if decoding not in [*SINGLE, "globally_normalized", "self_consistency"]:
        options["reward_model"] = SpyReward()
    if decoding == "distortion_aware_nucleus":
        options["top_p"] = 0.8
    return model.generate(**prompt_batch(2), **options)


def _finish_lengths(out, decoding: str) -> set[int]:
    """How many tokens each returned sequence (or particle) generated before EOS/padding."""
    sequences = out.particles.sequences.flatten(0, 1) if decoding in PARTICLES else out.sequences
    width = prompt_batch(2)["input_ids"].shape[1]
    return {int((row[width:] != PAD).sum()) for row in sequences}


@pytest.mark.parametrize("decoding", SINGLE[:2] + PARTICLES)
def test_static_cache_gives_the_tokens_of_the_dynamic_cache(model, decoding):
    uneven = 0
    for seed in range(3):
        dynamic = _generate(model, decoding, seed=seed)
        static = _generate(model, decoding, seed=seed, cache_implementation="static")
        assert torch.equal(dynamic.sequences, static.sequences)
        if decoding in PARTICLES:
            assert torch.equal(dynamic.particles.sequences, static.particles.sequences)
            torch.testing.assert_close(dynamic.particles.log_weights, static.particles.log_weights, **TOL)
        if dynamic.distortion is not None:
            torch.testing.assert_close(dynamic.distortion.per_step, static.distortion.per_step, **TOL)
        uneven += len(_finish_lengths(dynamic, decoding)) > 1
    assert uneven  # rows finished at different steps: the masking of finished rows was exercised


def test_autodeco_static_cache_gives_the_tokens_of_the_dynamic_cache():
    base = hfd.enable(build_tiny_llama(seed=1))
    wrapper = AutoDecoModelForCausalLM.from_base(base, seed=2)  # random heads: T and top-p vary per token
    for decoding in ("autodeco", "particle_filter"):
        dynamic = _generate(wrapper, decoding)
        static = _generate(wrapper, decoding, cache_implementation="static")
        assert torch.equal(dynamic.sequences, static.sequences)
        torch.testing.assert_close(dynamic.autodeco.temperature, static.autodeco.temperature, equal_nan=True)


class _CacheSpy:
    """Records, at every particle forward, the storage address and row count of the first cache layer and the
    number of live rows."""

    def __init__(self, monkeypatch):
        self.records: list[tuple[int, int, int]] = []
        feed = ParticleBatch.feed

        def spy(batch, model, forward=None):
            keys = get_cache(batch.model_kwargs).layers[0].keys
            self.records.append((keys.data_ptr(), keys.shape[0], batch.num_rows))
            return feed(batch, model, forward=forward)

        monkeypatch.setattr(ParticleBatch, "feed", spy)


@pytest.mark.parametrize("decoding", ["particle_filter", "beam_search_prm", "dvts"])
def test_static_cache_is_allocated_once_and_finished_rows_stay(model, monkeypatch, decoding):
    spy = _CacheSpy(monkeypatch)
    _generate(model, decoding, cache_implementation="static")
    addresses = {address for address, _, _ in spy.records}
    cache_rows = {rows for _, rows, _ in spy.records}
    live_rows = [live for _, _, live in spy.records]
    assert len(addresses) == 1  # one storage from the fan-out on: nothing reallocated
    assert cache_rows == {2 * 4}  # B·N rows throughout
    assert min(live_rows) < max(live_rows)  # particles finished: the live rows shrank, the cache did not


def test_dynamic_cache_still_shrinks_with_the_live_rows(model, monkeypatch):
    spy = _CacheSpy(monkeypatch)
    _generate(model, "particle_filter")
    assert all(rows == live for _, rows, live in spy.records)
    assert len({rows for _, rows, _ in spy.records}) > 1


def test_decode_forward_compiles_only_where_generate_would(model):
    inputs = prompt_batch(2)
    dynamic = {"cache": None}
    config = model.generation_config
    assert decode_forward(model, config, dynamic) is model
    static = model.generate(**inputs, max_new_tokens=2, cache_implementation="static", return_dict_in_generate=True)
    cache = {"cache": static.cache if hasattr(static, "cache") else static.past_key_values}
    assert has_fixed_rows(cache)
    assert decode_forward(model, config, cache) is model  # the CPU: transformers compiles only on accelerators
    compiled = config.__class__.from_dict(config.to_dict())
    compiled.compile_config = any_device_compile_config()
    assert decode_forward(model, compiled, cache) is not model
    compiled.disable_compile = True
    assert decode_forward(model, compiled, cache) is model


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["sample", "particle_filter"])
def test_compiled_static_decode_step_gives_the_eager_tokens_and_traces_once(decoding):
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters

    model = hfd.enable(build_tiny_llama(seed=1))
    eager = _generate(model, decoding, cache_implementation="static")
    torch._dynamo.reset()
    counters.clear()
    config = any_device_compile_config()
    compiled = _generate(model, decoding, cache_implementation="static", compile_config=config)
    again = _generate(model, decoding, cache_implementation="static", compile_config=config)
    assert torch.equal(eager.sequences, compiled.sequences)
    assert torch.equal(compiled.sequences, again.sequences)
    assert counters["stats"]["unique_graphs"] == 1  # traced once: no recompilation per step or per call
    assert not counters["graph_break"]  # the decode forward is one graph


def test_a_model_with_forward_hooks_decodes_eagerly(model):
    """A compiled call would skip hooks registered after it was traced (AutoDeco's capture of the LM-head input)."""
    static = model.generate(
        **prompt_batch(2), max_new_tokens=2, cache_implementation="static", return_dict_in_generate=True
    )
    cache = {"cache": static.cache if hasattr(static, "cache") else static.past_key_values}
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    config.compile_config = any_device_compile_config()
    assert decode_forward(model, config, cache) is not model
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: None)
    try:
        assert decode_forward(model, config, cache) is model
    finally:
        handle.remove()


def test_gemma3_static_sliding_window_cache_gives_the_dynamic_tokens():
    """Gemma-3's static cache mixes full and sliding-window static layers: both are re-indexed in place."""
    from test_cache import build_tiny_gemma3

    gemma = hfd.enable(build_tiny_gemma3())
    for decoding in ("particle_filter", "globally_normalized"):
        dynamic = _generate(gemma, decoding)
        static = _generate(gemma, decoding, cache_implementation="static")
        assert torch.equal(dynamic.sequences, static.sequences)
        assert torch.equal(dynamic.particles.sequences, static.particles.sequences)
