"""The vLLM integration on a real engine: the distortion-aware nucleus processor and AutoDeco as a vLLM architecture.

Runs in the environment `bash scripts/setup_vllm.sh` builds (`.venv-vllm/bin/python -m pytest -m vllm
tests/test_vllm.py`); skipped where vLLM is not installed. Each test class starts one in-process engine on
SmolLM2-135M-Instruct (float32, eager, the project's safetensors cache), about 30 s each on 2 CPU cores.
"""

from __future__ import annotations

import gc
import math
import os

import pytest

# In-process engine: no worker processes, no `__main__` guard needed. Set before vLLM is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup_vllm.sh builds .venv-vllm)")

import torch  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from hf_decoding import AutoDecoModelForCausalLM  # noqa: E402
from hf_decoding.errors import MissingModelError  # noqa: E402
from hf_decoding.models import load_default_model, model_cache_dir  # noqa: E402
from hf_decoding.vllm import export_for_vllm  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# vLLM turns a processor's ValueError into its VLLMValidationError (HTTP 400 when served).
_REJECTED = (ValueError, VLLMValidationError)

_ENGINE_ARGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 512,
    "seed": 0,
    "kv_cache_memory_bytes": 1 << 30,
}
_PROMPT = "Once upon a time, in a land far away, there lived a"
_TOP_P = 0.5
_SAMPLES = 64


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct in float32 (transformers), its tokenizer and the safetensors cache vLLM serves."""
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_default_model(dtype=torch.float32)
    except MissingModelError as err:
        pytest.skip(f"SmolLM2 is not available offline: {err}")
    return model, tokenizer, model_cache_dir()


def _engine(model_dir) -> vllm.LLM:
    return vllm.LLM(model=str(model_dir), **_ENGINE_ARGS)


def _close(llm: vllm.LLM) -> None:
    engine_core = getattr(llm.llm_engine, "engine_core", None)
    shutdown = getattr(engine_core, "shutdown", None)
    if callable(shutdown):
        shutdown()
    del llm
    gc.collect()


def _first_tokens(llm: vllm.LLM, params: list[vllm.SamplingParams]) -> list[int]:
    outputs = llm.generate([_PROMPT] * len(params), params, use_tqdm=False)
    return [out.outputs[0].token_ids[0] for out in outputs]


@pytest.fixture(scope="class")
def base_llm(smollm2):
    """An engine on SmolLM2 itself (one per test class that uses it)."""
    engine = _engine(smollm2[2])
    yield engine
    _close(engine)


@pytest.fixture(scope="class")
def nucleus(smollm2) -> set[int]:
    """The exact nucleus at `_TOP_P` of the model's next-token distribution (transformers, float64)."""
    model, tokenizer, _ = smollm2
    inputs = tokenizer(_PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
    probs, order = torch.sort(torch.softmax(logits, -1), descending=True)
    size = int((torch.cumsum(probs, 0) < _TOP_P).sum()) + 1  # up to and including the boundary token
    assert size >= 3, "the test prompt should have a nucleus of several tokens"
    return set(order[:size].tolist())


class TestDistortionAwareNucleus:
    def _params(self, seed: int, **extra) -> vllm.SamplingParams:
        return vllm.SamplingParams(temperature=1.0, max_tokens=1, seed=seed, extra_args=extra or None)

    def test_samples_stay_in_the_exact_nucleus(self, base_llm, nucleus):
        params = [self._params(seed, decoding="distortion_aware_nucleus", top_p=_TOP_P) for seed in range(_SAMPLES)]
        tokens = _first_tokens(base_llm, params)
        outside = [token for token in tokens if token not in nucleus]
        assert not outside, f"tokens outside the nucleus {sorted(nucleus)}: {outside}"
        assert len(set(tokens)) > 1  # it samples, it does not collapse to the argmax

    def test_requests_without_the_extra_arg_are_unaffected(self, base_llm, nucleus):
        plain = [self._params(seed) for seed in range(_SAMPLES)]
        alone = _first_tokens(base_llm, plain)
        mixed = [
            p
            for seed in range(_SAMPLES)
            for p in (self._params(seed), self._params(seed, decoding="distortion_aware_nucleus", top_p=_TOP_P))
        ]
        tokens = _first_tokens(base_llm, mixed)
        assert tokens[0::2] == alone  # the same seeded draws, with processed requests beside them in the batch
        assert any(token not in nucleus for token in alone)  # ~half the mass lies outside the nucleus
        assert all(token in nucleus for token in tokens[1::2])

    def test_vllm_top_p_together_with_it_is_rejected(self, base_llm):
        params = vllm.SamplingParams(
            top_p=0.9, max_tokens=1, extra_args={"decoding": "distortion_aware_nucleus", "top_p": 0.5}
        )
        with pytest.raises(_REJECTED, match=r"top_p=0\.9.*distortion_aware_nucleus"):
            base_llm.generate([_PROMPT], params, use_tqdm=False)

    def test_bad_kept_mass_is_rejected(self, base_llm):
        params = vllm.SamplingParams(max_tokens=1, extra_args={"decoding": "distortion_aware_nucleus", "top_p": 1.5})
        with pytest.raises(_REJECTED, match=r"top_p in \(0, 1\]"):
            base_llm.generate([_PROMPT], params, use_tqdm=False)


@pytest.fixture(scope="module")
def autodeco(smollm2):
    """Random heads (seed 0) on SmolLM2: the HF reference."""
    return AutoDecoModelForCausalLM.from_base(smollm2[0], seed=0)


@pytest.fixture(scope="class")
def autodeco_llm(smollm2, autodeco, tmp_path_factory):
    """An engine on the merged checkpoint `export_for_vllm` writes for `autodeco`."""
    out_dir = export_for_vllm(autodeco, tmp_path_factory.mktemp("autodeco_vllm"), tokenizer=smollm2[1])
    engine = _engine(out_dir)
    yield engine
    _close(engine)


class TestAutoDeco:
    def test_first_step_logprobs_equal_the_hf_processed_scores(self, smollm2, autodeco, autodeco_llm):
        tokenizer = smollm2[1]
        inputs = tokenizer(_PROMPT, return_tensors="pt")
        out = autodeco.generate(
            **inputs, max_new_tokens=1, do_sample=True, output_scores=True, return_dict_in_generate=True, seed=0
        )
        hf = torch.log_softmax(out.scores[0][0].double(), -1)  # (V,): after T̂ and the exact top-p P̂
        kept = int(torch.isfinite(hf).sum())
        assert 1 < kept < 20  # random heads keep a small nucleus; all of it fits in the 20 returned logprobs

        params = vllm.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, logprobs=20, seed=0)
        logprobs = autodeco_llm.generate([_PROMPT], params, use_tqdm=False)[0].outputs[0].logprobs[0]
        finite = {token: lp.logprob for token, lp in logprobs.items() if math.isfinite(lp.logprob)}
        assert set(finite) == set(torch.isfinite(hf).nonzero().flatten().tolist())
        for token, value in finite.items():
            assert abs(value - float(hf[token])) < 1e-3, (token, value, float(hf[token]))

    def test_samples_stay_in_the_autodeco_nucleus(self, smollm2, autodeco, autodeco_llm):
        tokenizer = smollm2[1]
        inputs = tokenizer(_PROMPT, return_tensors="pt")
        out = autodeco.generate(
            **inputs, max_new_tokens=1, do_sample=True, output_scores=True, return_dict_in_generate=True, seed=0
        )
        kept = set(torch.isfinite(out.scores[0][0]).nonzero().flatten().tolist())
        params = [vllm.SamplingParams(temperature=1.0, max_tokens=1, seed=seed) for seed in range(16)]
        assert set(_first_tokens(autodeco_llm, params)) <= kept


def test_v2_interface_matches_v1_on_a_simulated_batch():
    """The V2-runner path (GPU only in vLLM) driven by hand on the CPU: with the runner's later division by the
    temperature, it gives the V1 path's scores (which run after vLLM's temperature)."""
    from types import SimpleNamespace

    import numpy as np
    from vllm.v1.sample.logits_processor import BatchUpdate

    from hf_decoding.vllm.nucleus import DistortionAwareNucleusVllmProcessor

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=generator) * 3  # (B, V)
    params = [
        vllm.SamplingParams(temperature=0.7, extra_args={"decoding": "distortion_aware_nucleus", "top_p": 0.6}),
        vllm.SamplingParams(temperature=1.3),
        vllm.SamplingParams(temperature=1.0, extra_args={"decoding": "distortion_aware_nucleus", "top_p": 0.3}),
    ]
    temperature = torch.tensor([p.temperature for p in params]).unsqueeze(-1)  # (B, 1)

    v1 = DistortionAwareNucleusVllmProcessor(None, torch.device("cpu"), False)
    v1.update_state(
        BatchUpdate(batch_size=3, removed=[], added=[(i, p, [], []) for i, p in enumerate(params)], moved=[])
    )
    expected = v1.apply(logits / temperature)

    slots = [4, 0, 2]  # batch row -> persistent request slot
    v2 = DistortionAwareNucleusVllmProcessor(None, SimpleNamespace(max_num_reqs=8, device=torch.device("cpu")))
    assert [v2.add_request(slot, p) for slot, p in zip(slots, params, strict=True)] == [True, False, True]
    ctx = SimpleNamespace(expanded_idx_mapping=torch.tensor(slots), idx_mapping_np=np.array(slots))
    got = v2.apply(logits.clone(), ctx) / temperature
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], logits[1] / temperature[1])  # the row that did not ask is untouched


# ------------------------------------------------------------------------------------- particle methods on vLLM
_PARTICLE_PROMPTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\n\n",
    "List three colors:\n",
]


class _CountingReward:
    """A cheap text reward in [0, 1] (more distinct words scores higher) that counts the texts it scored."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prompts, texts):
        self.calls += len(texts)
        return [[self.value(t)] for t in texts]

    @staticmethod
    def value(text: str) -> float:
        return min(0.95, 0.05 + len(set(text.split())) / 40)


@pytest.fixture(scope="class")
def particle_llm(smollm2):
    """An engine with prefix caching on and 32-token blocks (the CPU default of 128 never hits on short prefixes)."""
    engine = vllm.LLM(model=str(smollm2[2]), **_ENGINE_ARGS, enable_prefix_caching=True, block_size=32)
    yield engine
    _close(engine)


_PF = {"num_particles": 4, "tokens_per_step": 8, "max_new_tokens": 24, "ess_threshold": 1.0}


class TestParticleMethods:
    def test_particle_filter_fields_are_consistent(self, particle_llm):
        from hf_decoding.generation.outputs import DecodingCost, ParticleTrace
        from hf_decoding.smc import normalize_log_weights
        from hf_decoding.vllm import generate

        reward = _CountingReward()
        out = generate(particle_llm, _PARTICLE_PROMPTS, reward_model=reward, seed=0, **_PF)
        b, n = len(_PARTICLE_PROMPTS), 4
        assert isinstance(out.particles, ParticleTrace) and isinstance(out.cost, DecodingCost)
        trace = out.particles
        steps = trace.ess.shape[1]
        assert steps >= 3  # 24 tokens in steps of at most 8
        assert trace.log_weights.shape == (b, n) and torch.isfinite(trace.log_weights).all()
        weights = normalize_log_weights(trace.log_weights.double()).exp()
        torch.testing.assert_close(weights.sum(-1), torch.ones(b, dtype=torch.float64))
        assert trace.ancestors.shape == (b, steps, n) and out.resampled.shape == (b, steps)
        # ess_threshold=1.0 resamples after every step in which some particle is still live (all but the last).
        assert out.resampled[:, :-1].all()
        assert ((trace.ancestors >= 0) & (trace.ancestors < n)).all()
        assert trace.sequences.shape[:2] == (b, n) and trace.selected.shape == (b,)
        # Reward calls: one per particle and step, as the reward saw them.
        assert out.cost.reward_calls == reward.calls > 0
        assert 0 < out.cost.generated_tokens <= b * n * 24
        assert out.cost.seconds["total"] > 0 and out.cost.seconds["generation"] > 0
        # The returned particle is the argmax of the final rewards (selection="argmax", the default).
        assert torch.equal(trace.selected, out.scores.argmax(-1))
        for g in range(b):
            assert out.texts[g] == out.particle_texts[g][int(trace.selected[g])]
        # Steps after the first continue cached prefixes.
        assert out.prefix_cache.requests == reward.calls
        assert 0 < out.prefix_cache.hit_rate <= 1

    def test_seeded_runs_reproduce(self, particle_llm):
        from hf_decoding.vllm import generate

        def run(seed):
            return generate(particle_llm, _PARTICLE_PROMPTS, reward_model=_CountingReward(), seed=seed, **_PF)

        first, again, other = run(3), run(3), run(4)
        assert first.particle_texts == again.particle_texts
        assert torch.equal(first.particles.log_weights, again.particles.log_weights)
        assert torch.equal(first.particles.ancestors, again.particles.ancestors)
        assert torch.equal(first.sequences, again.sequences)
        assert first.particle_texts != other.particle_texts

    def test_best_of_n_picks_the_highest_reward(self, particle_llm):
        from hf_decoding.vllm import generate

        reward = _CountingReward()
        out = generate(
            particle_llm,
            _PARTICLE_PROMPTS,
            decoding="best_of_n",
            num_particles=6,
            reward_model=reward,
            max_new_tokens=20,
            seed=0,
        )
        assert out.cost.reward_calls == reward.calls == 2 * 6  # each completion scored once
        assert out.particles.ess.shape[1] == 1 and not out.resampled.any()
        for g, texts in enumerate(out.particle_texts):
            values = [_CountingReward.value(t) for t in texts]
            assert len(set(texts)) > 1
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            assert int(out.particles.selected[g]) == best
            assert out.texts[g] == texts[best]

    def test_self_consistency_and_weighted_best_of_n_vote(self, particle_llm):
        from hf_decoding.vllm import generate

        kwargs = {"num_particles": 4, "max_new_tokens": 12, "seed": 0}
        votes = generate(particle_llm, ["Q: 3 + 4 = ?\nA:"], decoding="self_consistency", **kwargs)
        assert votes.cost.reward_calls == 0 and votes.answers is not None and len(votes.answers) == 1
        weighted = generate(
            particle_llm, ["Q: 3 + 4 = ?\nA:"], decoding="weighted_best_of_n", reward_model=_CountingReward(), **kwargs
        )
        assert weighted.cost.reward_calls == 4 and len(weighted.answers) == 1


def test_unsupported_particle_arguments_are_named():
    from hf_decoding.errors import InvalidDecodingArgument
    from hf_decoding.vllm import generate

    with pytest.raises(InvalidDecodingArgument, match="generator"):
        generate(None, ["x"], reward_model=_CountingReward(), generator=torch.Generator())
    with pytest.raises(InvalidDecodingArgument, match="ess_threshold"):
        generate(None, ["x"], decoding="best_of_n", reward_model=_CountingReward(), ess_threshold=0.5)
    with pytest.raises(InvalidDecodingArgument, match="particle_gibbs"):
        generate(None, ["x"], decoding="particle_gibbs")
