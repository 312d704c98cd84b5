"""The particle decoders on the tiny random Llama with the toy tokenizer: options honoured, absorption, seeding,
outputs and cost, the anchors' bugs, bad inputs."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from conftest import EOS, PAD, build_tiny_llama
from test_particles_toys import SpyReward, one_thread, prompt_batch, text_value, toy_tokenizer  # noqa: F401
from transformers import LogitsProcessor, LogitsProcessorList

import hf_decoding as hfd
from hf_decoding.decoders.beam_search_prm import beam_search_prm
from hf_decoding.decoders.best_of_n import best_of_n
from hf_decoding.decoders.dvts import dvts
from hf_decoding.decoders.parallel_tempering import parallel_tempering, swap_references
from hf_decoding.decoders.particle_filter import particle_filter
from hf_decoding.decoders.particle_gibbs import particle_gibbs
from hf_decoding.decoders.self_consistency import self_consistency
from hf_decoding.decoders.weighted_best_of_n import weighted_best_of_n
from hf_decoding.errors import HfDecodingWarning, InvalidDecodingArgument, RewardModelError
from hf_decoding.smc import resampling as resampling_module
from hf_decoding.smc.potentials import aggregate_scores, log_potentials
from hf_decoding.smc.sweep import ReferencePath

TOK = toy_tokenizer()


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(seed=1)


class NoEos(LogitsProcessor):
    """Keeps EOS away (so particles live for the whole budget), optionally boosting one token."""

    def __init__(self, boost: int | None = None, amount: float = 3.0):
        self.boost, self.amount = boost, amount

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, EOS] = -math.inf
        if self.boost is not None:
            scores[:, self.boost] += self.amount
        return scores


class ForceEos(LogitsProcessor):
    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -math.inf)
        out[:, EOS] = 0.0
        return out


def run(model, decoder=particle_filter, tokenizer=TOK, batch=2, **kwargs):
    kwargs.setdefault("do_sample", True)
    kwargs.setdefault("max_new_tokens", 12)
    kwargs.setdefault("return_dict_in_generate", True)
    fn = functools.partial(decoder, tokenizer=tokenizer) if tokenizer is not None else decoder
    return model.generate(**prompt_batch(batch), custom_generate=fn, **kwargs)


# ------------------------------------------------------------------------------------------------- basic contract
def test_particle_filter_outputs_and_cost(model):
    reward = SpyReward()
    out = run(model, num_particles=4, reward_model=reward, tokens_per_step=3, seed=0)
    trace = out.particles
    assert out.sequences.shape[0] == 2 and out.sequences.shape[1] <= 5 + 12
    assert trace.sequences.shape[:2] == (2, 4) and trace.log_weights.shape == (2, 4)
    assert trace.ess.shape[0] == 2 and trace.ancestors.shape[0] == 2 and trace.ancestors.shape[2] == 4
    assert trace.selected.shape == (2,) and trace.log_normalizer.shape == (2,)
    for b in range(2):
        assert torch.equal(trace.sequences[b, trace.selected[b], : out.sequences.shape[1]], out.sequences[b])
    cost = out.cost
    assert cost.reward_calls == sum(len(texts) for _, texts in reward.calls)
    assert cost.generated_tokens > 0 and cost.forward_passes >= 2
    assert set(cost.seconds) >= {"prefill", "generation", "reward", "resampling", "selection", "total"}
    # one step = 3 tokens: forward passes = 1 prefill + tokens of the longest step per step
    assert cost.forward_passes <= 1 + 12


def test_same_seed_same_result_and_generator(model):
    a = run(model, num_particles=4, reward_model=SpyReward(), tokens_per_step=2, seed=5)
    b = run(model, num_particles=4, reward_model=SpyReward(), tokens_per_step=2, seed=5)
    c = run(
        model, num_particles=4, reward_model=SpyReward(), tokens_per_step=2, generator=torch.Generator().manual_seed(5)
    )
    d = run(model, num_particles=4, reward_model=SpyReward(), tokens_per_step=2, seed=6)
    assert torch.equal(a.particles.sequences, b.particles.sequences)
    assert torch.equal(a.particles.sequences, c.particles.sequences)
    assert not torch.equal(a.particles.sequences, d.particles.sequences)


def test_decoding_name_through_enable_binds_the_tokenizer():
    model = hfd.enable(build_tiny_llama(seed=1))
    hfd.register_decoder("particle_filter", particle_filter, overwrite=True)
    out = model.generate(
        **prompt_batch(1),
        decoding="particle_filter",
        tokenizer=TOK,
        num_particles=2,
        reward_model=SpyReward(),
        tokens_per_step=3,
        do_sample=True,
        max_new_tokens=6,
        seed=0,
        return_dict_in_generate=True,
    )
    assert out.particles.log_weights.shape == (1, 2)


def test_options_from_generation_config(model):
    from transformers import GenerationConfig

    config = GenerationConfig(
        num_particles=3,
        tokens_per_step=2,
        max_new_tokens=6,
        do_sample=True,
        return_dict_in_generate=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    out = model.generate(
        **prompt_batch(1),
        generation_config=config,
        custom_generate=functools.partial(particle_filter, tokenizer=TOK),
        reward_model=SpyReward(),
    )
    assert out.particles.log_weights.shape == (1, 3)


# ------------------------------------------------------------------------------------------------ weights, exactly
@pytest.mark.parametrize(
    ("score_mode", "transform", "update"),
    [
        ("model", "logit", "potential"),
        ("last", "log", "potential"),
        ("min", "identity", "potential"),
        ("prod", "log", "potential"),
        ("last", "logit", "twisted"),
    ],
)
def test_final_weights_follow_the_options(model, score_mode, transform, update):
    """No resampling (ess_threshold=0), fixed 2-token steps: every final log-weight is recomputed by hand."""

    class StepReward:
        def score(self, prompts, texts):  # one score per 2-token step, from the step's text
            return [[text_value(t[: 2 * (k + 1)]) for k in range(math.ceil(len(t) / 2))] for t in texts]

        def score_whole(self, prompts, texts):
            return [text_value("whole" + t) for t in texts]

    out = run(
        model,
        num_particles=3,
        reward_model=StepReward(),
        tokens_per_step=2,
        ess_threshold=0.0,
        seed=1,
        score_mode=score_mode,
        weight_transform=transform,
        weight_update=update,
        softmax_temperature=2.0,
        logits_processor=LogitsProcessorList([NoEos(boost=22, amount=6.0)]),
        max_new_tokens=6,
    )
    assert out.particles.ancestors.eq(torch.arange(3)).all()  # never resampled
    for b, n in itertools.product(range(2), range(3)):
        tokens = out.particles.sequences[b, n, 5:].tolist()
        text = TOK.decode(tokens)
        steps = [TOK.decode(tokens[: 2 * (k + 1)]) for k in range(3)]
        per_step = []
        for _k, prefix in enumerate(steps):
            if score_mode == "model":
                per_step.append(text_value("whole" + prefix))
            else:
                chars = [text_value(prefix[: 2 * (j + 1)]) for j in range(math.ceil(len(prefix) / 2))]
                per_step.append(aggregate_scores(chars, score_mode))
        g = log_potentials(torch.tensor(per_step, dtype=torch.float64), transform, 2.0)
        expected = g[-1] if update == "twisted" else g.sum()
        assert text  # the particle has text
        assert out.particles.log_weights[b, n].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


def test_resampling_option_is_used_not_dropped(model, monkeypatch):
    """Regression (its_hub: `resampling_method` accepted but never passed on): the named scheme really runs."""
    calls = []
    original = resampling_module.RESAMPLING_SCHEMES["stratified"]

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setitem(resampling_module.RESAMPLING_SCHEMES, "stratified", spy)
    out = run(
        model,
        num_particles=4,
        reward_model=SpyReward(),
        tokens_per_step=2,
        resampling="stratified",
        ess_threshold=1.0,
        seed=0,
        logits_processor=LogitsProcessorList([NoEos()]),
        max_new_tokens=6,
    )
    assert len(calls) == out.particles.ess.shape[1] - 1  # every step but the last (nothing left to extend)


def test_ess_threshold_controls_resampling(model):
    never = run(
        model,
        num_particles=4,
        reward_model=SpyReward(),
        tokens_per_step=2,
        ess_threshold=0.0,
        seed=0,
        logits_processor=LogitsProcessorList([NoEos()]),
        max_new_tokens=8,
    )
    always = run(
        model,
        num_particles=4,
        reward_model=SpyReward(),
        tokens_per_step=2,
        ess_threshold=1.0,
        seed=0,
        logits_processor=LogitsProcessorList([NoEos()]),
        max_new_tokens=8,
    )
    assert never.particles.ancestors.eq(torch.arange(4)).all()
    assert not always.particles.ancestors[:, :-1].eq(torch.arange(4)).all()
    # after a resampling every weight of the group is the group mean: the evidence is kept
    assert torch.isfinite(always.particles.log_normalizer).all()


def test_preset_paper_and_override(model, monkeypatch):
    used = []
    for name in ("multinomial", "systematic"):
        original = resampling_module.RESAMPLING_SCHEMES[name]
        monkeypatch.setitem(
            resampling_module.RESAMPLING_SCHEMES,
            name,
            (lambda n, f: lambda *a, **k: (used.append(n), f(*a, **k))[1])(name, original),
        )
    kw = dict(
        num_particles=3,
        reward_model=SpyReward(),
        tokens_per_step=2,
        seed=0,
        max_new_tokens=6,
        logits_processor=LogitsProcessorList([NoEos()]),
        step_delimiter="",
    )
    run(model, preset="paper", **kw)
    assert used and set(used) == {"multinomial"}
    used.clear()
    run(model, preset="paper", resampling="systematic", **kw)
    assert set(used) == {"systematic"}
    with pytest.raises(InvalidDecodingArgument, match="preset"):
        run(model, preset="papr", **kw)


# ------------------------------------------------------------------------------------------------ finished particles
def test_finished_particles_are_absorbed_not_regenerated(model):
    """Regression (reference code regenerates and re-scores finished particles): once a particle finished it is
    never scored again and generates no token."""
    reward = SpyReward()
    out = run(
        model,
        num_particles=6,
        reward_model=reward,
        tokens_per_step=1,
        seed=2,
        ess_threshold=0.0,
        max_new_tokens=10,
        logits_processor=LogitsProcessorList([_EosSometimes()]),
    )
    trace = out.particles
    lengths = [(trace.sequences[b, n, 5:] != PAD).sum().item() for b in range(2) for n in range(6)]
    assert min(lengths) < max(lengths)  # some particles finished early
    assert out.cost.generated_tokens == sum(lengths)
    assert out.cost.reward_calls == sum(lengths)  # one score per 1-token step, none after finishing
    for _, texts in reward.calls:
        assert all("</s>" not in t for t in texts)


class _EosSometimes(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, EOS] = 1.5
        return scores


def test_reference_finished_mode_reuses_last_potential(model):
    out_abs = run(
        model,
        num_particles=6,
        reward_model=SpyReward(),
        tokens_per_step=1,
        seed=2,
        ess_threshold=0.0,
        max_new_tokens=6,
        logits_processor=LogitsProcessorList([_EosSometimes()]),
        weight_transform="log",
    )
    out_ref = run(
        model,
        num_particles=6,
        reward_model=SpyReward(),
        tokens_per_step=1,
        seed=2,
        ess_threshold=0.0,
        max_new_tokens=6,
        logits_processor=LogitsProcessorList([_EosSometimes()]),
        weight_transform="log",
        finished_particles="reference",
    )
    assert torch.equal(out_abs.particles.sequences, out_ref.particles.sequences)
    steps = out_abs.particles.ess.shape[1]
    for b, n in itertools.product(range(2), range(6)):
        tokens = out_abs.particles.sequences[b, n, 5:]
        k = int((tokens != PAD).sum())
        last = math.log(text_value(TOK.decode(tokens[:k].tolist(), skip_special_tokens=True)))
        gap = out_ref.particles.log_weights[b, n].item() - out_abs.particles.log_weights[b, n].item()
        assert gap == pytest.approx((steps - k) * last, abs=1e-4)


# ------------------------------------------------------------------------------------------------ particle Gibbs
def test_particle_gibbs_reference_weight_alignment(model):
    """Regression (its_hub #54, the reference code's rewards[step] vs rewards[step-1]): the reference particle's
    weight at step t uses its own step-t score, never its final score or another step's."""
    from hf_decoding.smc.arguments import DecoderCall
    from hf_decoding.smc.decoding import prepare, run_sweep
    from hf_decoding.smc.sweep import NoResampling

    config = model.generation_config
    config.do_sample = True
    inputs = prompt_batch(1)
    reward = SpyReward()
    setup, _ = prepare(
        DecoderCall(
            model=model,
            input_ids=inputs["input_ids"],
            logits_processor=LogitsProcessorList([NoEos()]),
            stopping_criteria=None,
            generation_config=_config(model, 6),
            arguments={
                "num_particles": 3,
                "tokens_per_step": 2,
                "weight_transform": "log",
                "reward_model": reward,
                "tokenizer": TOK,
                "seed": 0,
            },
            model_kwargs={"attention_mask": inputs["attention_mask"], "use_cache": True},
        ),
        method="particle_gibbs",
        defaults={
            "num_particles": 3,
            "score_mode": "model",
            "weight_transform": "log",
            "softmax_temperature": 1.0,
            "weight_update": "potential",
            "resampling": "systematic",
            "ess_threshold": 0.0,
            "finished_particles": "absorb",
            "selection": "argmax",
            "on_reward_error": "raise",
        },
    )
    ref_steps = [torch.tensor([22, 23]), torch.tensor([24, 25]), torch.tensor([26, 27])]
    ref_scores = [0.9, 0.2, 0.6]  # deliberately unlike anything the reward would say
    ref = ReferencePath(steps=ref_steps, scores=ref_scores, texts=["ab", "cd", "ef"], finished=True)
    result, _session, _ = run_sweep(setup, NoResampling(), 3, references=[ref], keep_steps=True, reuse_prefill=True)
    batch = result.batch
    assert batch.slot_tokens(0).tolist() == [22, 23, 24, 25, 26, 27]  # replayed token for token
    expected = sum(math.log(s) for s in ref_scores)
    assert result.log_weights[0, 0].item() == pytest.approx(expected)
    assert batch.slot_lists["scores"][0] == ref_scores
    # the reference is never scored by the reward model
    assert all(not t.startswith("abcdef") and t not in ("ab", "abcd") for _, texts in reward.calls for t in texts)


def _config(model, max_new_tokens):
    import copy

    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.do_sample = True
    config._eos_token_tensor = torch.tensor([EOS])
    config._pad_token_tensor = torch.tensor(PAD)
    return config


def test_particle_gibbs_and_parallel_tempering_run(model):
    pg = run(
        model,
        particle_gibbs,
        num_particles=3,
        num_iterations=2,
        num_chains=2,
        reward_model=SpyReward(),
        tokens_per_step=2,
        seed=0,
        max_new_tokens=6,
    )
    assert pg.particles.log_weights.shape == (2, 6)
    pt = run(
        model,
        parallel_tempering,
        num_particles=3,
        num_iterations=2,
        temperature_ladder=[1.0, 3.0],
        reward_model=SpyReward(),
        tokens_per_step=2,
        seed=0,
        max_new_tokens=6,
    )
    assert pt.particles.log_weights.shape == (2, 3)
    assert pt.cost.reward_calls > pg.cost.reward_calls / 4


def test_swap_references_metropolis_rule():
    hi = ReferencePath(steps=[torch.tensor([1])], scores=[0.9], texts=["x"])
    lo = ReferencePath(steps=[torch.tensor([1])], scores=[0.1], texts=["y"])
    # the better reference moves to the colder chain with certainty (log ratio > 0)
    refs, accepted = swap_references([lo, hi], [1.0, 4.0], "logit", False, torch.Generator().manual_seed(0))
    assert refs[0] is hi and accepted == 1


# ------------------------------------------------------------------------------------------------ baselines
def test_baselines_run_and_count_reward_calls(model):
    kw = dict(num_particles=4, seed=0, max_new_tokens=6)
    bon = run(model, best_of_n, reward_model=SpyReward(), **kw)
    assert bon.cost.reward_calls == 2 * 4  # one score per completion
    wbon = run(model, weighted_best_of_n, reward_model=SpyReward(), **kw)
    assert wbon.sequences.shape[0] == 2
    sc = run(model, self_consistency, **kw)
    assert sc.cost.reward_calls == 0
    beam = run(model, beam_search_prm, reward_model=SpyReward(), beam_width=2, tokens_per_step=2, **kw)
    dv = run(model, dvts, reward_model=SpyReward(), beam_width=2, tokens_per_step=2, **kw)
    for out in (beam, dv):
        assert out.particles.log_weights.shape == (2, 4)
    # DVTS keeps subtrees apart: ancestors never cross the blocks of beam_width
    anc = dv.particles.ancestors
    assert torch.equal(anc // 2, torch.arange(4).expand_as(anc) // 2)


def test_bon_is_one_prefill_then_fan_out(model):
    out = run(
        model,
        best_of_n,
        reward_model=SpyReward(),
        num_particles=4,
        seed=0,
        max_new_tokens=5,
        logits_processor=LogitsProcessorList([NoEos()]),
    )
    assert out.cost.forward_passes == 1 + 5 - 1  # the last token of a finished particle is never fed


# ------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(model):
    with pytest.raises(InvalidDecodingArgument, match="num_particles"):
        run(model, num_particles=0, reward_model=SpyReward())
    with pytest.raises(InvalidDecodingArgument, match="ess_threshold"):
        run(model, ess_threshold=1.5, reward_model=SpyReward())
    with pytest.raises(InvalidDecodingArgument, match="reward_model"):
        run(model)
    with pytest.raises(InvalidDecodingArgument, match="tokenizer"):
        run(model, tokenizer=None, reward_model=SpyReward(), tokens_per_step=2)
    with pytest.raises(InvalidDecodingArgument, match="resampling"):
        run(model, resampling="bogus", reward_model=SpyReward())
    with pytest.raises(InvalidDecodingArgument, match="beam_width"):
        run(model, beam_search_prm, num_particles=6, beam_width=4, reward_model=SpyReward())


def test_delimiter_never_produced_is_one_step(model):
    with pytest.warns(HfDecodingWarning, match="delimiter") as record:
        out = run(
            model,
            num_particles=2,
            reward_model=SpyReward(),
            max_new_tokens=6,
            logits_processor=LogitsProcessorList([NoEos()]),
            step_delimiter="\n\n\n\n\n",
        )
    assert out.particles.ess.shape[1] == 1
    assert out.cost.generated_tokens == 2 * 2 * 6
    # noticed deep inside the step runner, attributed to the `generate` call in this file
    assert {w.filename for w in record if issubclass(w.category, HfDecodingWarning)} == {__file__}


def test_eos_at_first_token(model):
    out = run(model, num_particles=3, reward_model=SpyReward(), logits_processor=LogitsProcessorList([ForceEos()]))
    assert out.cost.generated_tokens == 2 * 3 and out.particles.ess.shape[1] == 1
    assert out.sequences[:, -1].eq(EOS).all()


def test_reward_failures_are_typed(model):
    def nan_reward(prompts, texts):
        return [[float("nan")] for _ in texts]

    def raising(prompts, texts):
        raise KeyError("boom")

    with pytest.raises(RewardModelError, match=r"particle .* at step 0"):
        run(model, num_particles=2, reward_model=nan_reward, tokens_per_step=2)
    with pytest.raises(RewardModelError, match="KeyError"):
        run(model, num_particles=2, reward_model=raising, tokens_per_step=2)
    with pytest.warns(HfDecodingWarning, match="-inf") as record:
        out = run(
            model,
            num_particles=2,
            reward_model=nan_reward,
            tokens_per_step=2,
            on_reward_error="neg_inf",
            max_new_tokens=4,
        )
    assert torch.isneginf(out.particles.log_weights).all()
    assert {w.filename for w in record if issubclass(w.category, HfDecodingWarning)} == {__file__}
    with pytest.raises(RewardModelError, match="identity"):
        run(model, num_particles=2, reward_model=lambda p, t: [[3.0] for _ in t], tokens_per_step=2)
    with pytest.raises(RewardModelError, match="results"):
        run(model, num_particles=2, reward_model=lambda p, t: [[0.5]], tokens_per_step=2)


@pytest.mark.parametrize("returned", ["0.5", None, [0.1, "high"]], ids=["str", "None", "str-in-list"])
def test_reward_returning_non_numbers_names_the_type(model, returned):
    def reward(prompts, texts):
        return [returned if isinstance(returned, list) else [returned] for _ in texts]

    kind = "NoneType" if returned is None else "str"
    for on_reward_error in ("raise", "neg_inf"):  # a wrong type is a bug of the reward, never a weight of -inf
        with pytest.raises(RewardModelError, match=rf"returned {kind} .*instead of a number.*Fix"):
            run(model, num_particles=2, reward_model=reward, tokens_per_step=2, on_reward_error=on_reward_error)


def test_reward_numbers_of_any_kind_are_accepted(model):
    import numpy as np

    kinds = [np.float32(0.5), torch.tensor(0.25), True, 1]
    out = run(
        model,
        num_particles=4,
        reward_model=lambda p, t: [[kinds[i % 4]] for i in range(len(t))],
        tokens_per_step=2,
        max_new_tokens=2,
    )
    assert torch.isfinite(out.particles.log_weights).all()


# ------------------------------------------------------------------------------------------------ exact evidence
def test_decoder_evidence_estimate_matches_enumeration(model):
    """Two 1-token steps, top-3 proposal, log transform: E[exp(log Z_hat)] = sum_x q(x) r(x_1) r(x_1 x_2)."""
    groups, n = 300, 4
    prompt = torch.tensor([[22, 23, 24]]).expand(groups, -1)
    processors = LogitsProcessorList([NoEos()])
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        top_k=3,
        max_new_tokens=2,
        custom_generate=functools.partial(particle_filter, tokenizer=TOK),
        num_particles=n,
        reward_model=SpyReward(),
        tokens_per_step=1,
        score_mode="last",
        weight_transform="log",
        ess_threshold=0.5,
        seed=0,
        return_dict_in_generate=True,
        logits_processor=processors,
    )
    with torch.no_grad():

        def q(ids):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            logits[EOS] = -math.inf
            top = torch.topk(logits, 3)
            return dict(zip(top.indices.tolist(), torch.softmax(top.values, -1).tolist(), strict=False))

        z = 0.0
        for a, pa in q([22, 23, 24]).items():
            ra = text_value(TOK.decode([a]))
            for b, pb in q([22, 23, 24, a]).items():
                z += pa * pb * ra * text_value(TOK.decode([a, b]))
    estimate = out.particles.log_normalizer.double().exp().mean().item()
    assert estimate == pytest.approx(z, rel=0.05)
