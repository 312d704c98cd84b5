"""decoding="masked_diffusion": schedules, rules, adapters, the exact toy joint, tiny BERT/ModernBERT models, the CLI."""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GenerationConfig,
    GenerationMixin,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

import hf_decoding as hfd
from hf_decoding.decoders.masked_diffusion import (
    attach_masked_diffusion_generate,
    masked_diffusion,
    supports_masked_diffusion,
)
from hf_decoding.diffusion import (
    POSITION_RULES,
    SCHEDULES,
    JointTableDenoiser,
    MaskedDiffusionConfig,
    MaskedDiffusionOutput,
    hidden_markov_joint,
    sample_candidates,
    unmasking_schedule,
)
from hf_decoding.errors import InvalidDecodingArgument

VOCAB = 48
MASK = 4
EOS = 3
PAD = 0


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models are dominated by thread synchronisation on a busy 2-core machine: run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny_bert(seed: int = 0, eos_bias: float = 0.0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    model = BertForMaskedLM(config).eval()
    model.config.mask_token_id = MASK
    with torch.no_grad():
        model.cls.predictions.decoder.weight.mul_(8.0)  # peaked predictions: thresholds fire, EOS is reachable
        model.cls.predictions.bias[MASK] = -1e4  # a denoiser never predicts the mask token
        model.cls.predictions.bias[EOS] += eos_bias
    return model


@pytest.fixture(scope="module")
def bert() -> BertForMaskedLM:
    return attach_masked_diffusion_generate(build_tiny_bert())


@pytest.fixture(scope="module")
def prompts() -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([[PAD, PAD, 5, 9, 11, 7], [8, 9, 10, 11, 12, 13], [PAD, PAD, PAD, 6, 6, 20]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).long()}


def _rows(prompts):
    for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"], strict=True):
        yield ids[mask.bool()][None]


# --------------------------------------------------------------------------------------------------- schedules
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), steps=st.integers(1, 64), name=st.sampled_from(SCHEDULES))
def test_schedules_sum_to_length(n, steps, name):
    counts = unmasking_schedule(n, steps, name)
    assert len(counts) == steps and sum(counts) == n and min(counts) >= 0
    if name == "linear":
        assert max(counts) - min(counts) <= 1  # balanced: s_max = ceil(n / steps)
    if name == "cosine" and n >= steps:
        assert min(counts) >= 1


def test_schedules_known_values():
    assert unmasking_schedule(10, 4, "linear") == [3, 3, 2, 2]  # LLaDA's get_num_transfer_tokens
    assert unmasking_schedule(8, 8, "cosine") == [1] * 8
    cosine = unmasking_schedule(32, 4, "cosine")
    assert cosine[0] < cosine[-1]  # few early, many late
    dream = unmasking_schedule(16, 4, "dream", eps=1e-3)
    assert sum(dream) == 16 and dream[-1] >= dream[0]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"diffusion_steps": 0}, "diffusion_steps"),
        ({"gen_length": 10, "block_length": 4}, "block_length"),
        ({"gen_length": 8, "block_length": 2, "diffusion_steps": 3}, "number of blocks"),
        ({"unmasking": "best_first"}, "unmasking"),
        ({"unmasking_schedule": "quadratic"}, "unmasking_schedule"),
        ({"unmasking_threshold": 1.5}, "unmasking_threshold"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"unmasking_confidence": "logit"}, "unmasking_confidence"),
    ],
)
def test_bad_arguments_raise_typed_errors(bert, prompts, kwargs, fragment):
    with pytest.raises(InvalidDecodingArgument, match=fragment) as info:
        bert.generate(**prompts, **{"gen_length": 8, **kwargs})
    assert isinstance(info.value, ValueError)


def test_error_messages_name_value_and_fix():
    with pytest.raises(InvalidDecodingArgument) as info:
        MaskedDiffusionConfig(gen_length=10, block_length=4)
    message = str(info.value)
    assert "gen_length=10" in message and "block_length=4" in message and "Fix:" in message


def test_model_without_mask_token_raises(prompts):
    model = build_tiny_bert()
    model.config.mask_token_id = None
    attach_masked_diffusion_generate(model)
    with pytest.raises(InvalidDecodingArgument, match="mask_token_id") as info:
        model.generate(**prompts, gen_length=4)
    assert "tokenizer" in str(info.value)  # the fix names the ways to provide one
    out = model.generate(**prompts, gen_length=4, mask_token_id=MASK)  # explicit id works
    assert not (out[:, -4:] == MASK).any()


def test_steps_is_llada_name_for_diffusion_steps(bert, prompts):
    out = bert.generate(**prompts, gen_length=8, steps=4, return_dict_in_generate=True)
    assert out.cost.forward_passes == 4
    assert torch.equal(out.sequences, bert.generate(**prompts, gen_length=8, diffusion_steps=4))
    with pytest.raises(InvalidDecodingArgument, match="steps"):
        bert.generate(**prompts, gen_length=8, steps=0)
    with pytest.raises(InvalidDecodingArgument, match="only one"):
        bert.generate(**prompts, gen_length=8, steps=4, diffusion_steps=2)


def test_remasking_is_llada_name_for_unmasking(bert, prompts):
    for rule in ("low_confidence", "random"):
        options = {"gen_length": 8, "diffusion_steps": 4, "do_sample": True, "top_k": 0, "seed": 0}
        llada = bert.generate(**prompts, remasking=rule, **options)
        assert torch.equal(llada, bert.generate(**prompts, unmasking=rule, **options))
    with pytest.raises(InvalidDecodingArgument, match=r"remasking.*unmasking='random'.*only one"):
        bert.generate(**prompts, gen_length=8, remasking="low_confidence", unmasking="random")
    with pytest.raises(InvalidDecodingArgument, match="unmasking"):
        bert.generate(**prompts, gen_length=8, remasking="no_such_rule")


def test_registered_under_its_name():
    assert "masked_diffusion" in hfd.available_decoders()
    assert hfd.get_decoder("masked_diffusion") is hfd.decoders.masked_diffusion


def test_cli_subcommands_are_wired(capsys):
    from hf_decoding.cli import main

    with pytest.raises(SystemExit) as info:
        main(["diffusion", "train", "--help"])
    assert info.value.code == 0 and "--max-steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["analyze", "convergence", "--help"])
    assert info.value.code == 0 and "--length" in capsys.readouterr().out


def test_misspelled_option_is_rejected(bert, prompts):
    with pytest.raises(InvalidDecodingArgument, match="diffusion_step"):
        bert.generate(**prompts, gen_length=4, diffusion_step=2)


# ------------------------------------------------------------------------------------------------ tiny BERT runs
@pytest.mark.parametrize("rule", POSITION_RULES)
def test_no_mask_token_left_and_exact_forward_passes(bert, prompts, rule):
    out = bert.generate(
        **prompts,
        gen_length=8,
        block_length=4,
        diffusion_steps=4,
        unmasking=rule,
        unmasking_threshold=0.5,
        unmasking_entropy_bound=1.0,
        do_sample=True,
        top_k=0,
        seed=0,
        return_dict_in_generate=True,
        output_history=True,
    )
    assert isinstance(out, MaskedDiffusionOutput)
    assert out.sequences.shape == (3, 6 + 8)
    assert not (out.sequences[:, 6:] == MASK).any()
    assert torch.equal(out.sequences[:, :6], prompts["input_ids"])
    assert len(out.history) == out.cost.forward_passes  # one canvas per model call
    if rule in ("threshold", "entropy_bound"):
        assert 2 <= out.cost.forward_passes <= 4  # adaptive: at most the schedule, at least one per block
    else:
        assert out.cost.forward_passes == 4
    assert out.cost.generated_tokens == 3 * 8


def test_history_is_monotone_and_ends_at_output(bert, prompts):
    out = bert.generate(**prompts, gen_length=8, diffusion_steps=8, return_dict_in_generate=True, output_history=True)
    masked_counts = [int((h == MASK).sum()) for h in out.history]
    assert masked_counts == sorted(masked_counts, reverse=True) and masked_counts[-1] == 0
    assert [a - b for a, b in zip([24, *masked_counts[:-1]], masked_counts, strict=True)] == [3] * 8  # 1 per row
    assert torch.equal(out.history[-1], out.sequences[:, 6:])
    for earlier, later in zip(out.history[:-1], out.history[1:], strict=True):
        committed = earlier != MASK
        assert torch.equal(earlier[committed], later[committed])  # never re-masked


@pytest.mark.parametrize(
    "options",
    [
        {"unmasking": "low_confidence"},
        {"unmasking": "threshold", "unmasking_threshold": 0.6, "block_length": 4},
        {"unmasking": "entropy_bound", "unmasking_entropy_bound": 0.5},
        {"unmasking": "margin", "unmasking_schedule": "cosine", "diffusion_steps": 4},
        {"unmasking": "entropy", "cfg_scale": 1.5, "diffusion_steps": 4},
    ],
)
def test_batch_equals_row_by_row(bert, prompts, options):
    batched = bert.generate(**prompts, gen_length=8, **options)
    for row, ids in enumerate(_rows(prompts)):
        single = bert.generate(input_ids=ids, gen_length=8, **options)
        assert torch.equal(batched[row, -8:], single[0, -8:])


def test_modernbert_masked_lm_runs_and_batches(prompts):
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=EOS,
        cls_token_id=1,
        sep_token_id=EOS,
        global_attn_every_n_layers=1,
    )
    model = ModernBertForMaskedLM(config).eval()
    model.config.mask_token_id = MASK
    assert supports_masked_diffusion(model)
    attach_masked_diffusion_generate(model)
    out = model.generate(**prompts, gen_length=8, diffusion_steps=4, return_dict_in_generate=True)
    assert not (out.sequences[:, 6:] == MASK).any() and out.cost.forward_passes == 4
    for row, ids in enumerate(_rows(prompts)):
        assert torch.equal(
            out.sequences[row, -8:], model.generate(input_ids=ids, gen_length=8, diffusion_steps=4)[0, -8:]
        )


def test_seeded_sampling_is_reproducible(bert, prompts):
    kwargs = {"gen_length": 8, "unmasking": "random", "do_sample": True, "temperature": 0.8, "top_k": 0}
    a = bert.generate(**prompts, seed=3, **kwargs)
    b = bert.generate(**prompts, generator=torch.Generator().manual_seed(3), **kwargs)
    c = bert.generate(**prompts, seed=4, **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generation_config_defaults_are_read(prompts):
    model = attach_masked_diffusion_generate(build_tiny_bert())
    model.generation_config.diffusion_steps = 2
    model.generation_config.gen_length = 6
    out = model.generate(**prompts, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 12 and out.cost.forward_passes == 2
    out = model.generate(**prompts, diffusion_steps=3, return_dict_in_generate=True)  # the call wins
    assert out.cost.forward_passes == 3


def test_max_new_tokens_is_the_default_gen_length(bert, prompts):
    assert bert.generate(**prompts, max_new_tokens=5).shape == (3, 11)


def test_num_return_sequences_expands_rows(bert, prompts):
    out = bert.generate(
        **prompts, gen_length=4, num_return_sequences=2, unmasking="random", do_sample=True, top_k=0, seed=0
    )
    assert out.shape == (6, 10)


# ------------------------------------------------------------------------------------------------------- EOS / CFG
def test_eos_handling(prompts):
    model = attach_masked_diffusion_generate(build_tiny_bert(eos_bias=6.0))
    base = {
        "gen_length": 8,
        "block_length": 4,
        "diffusion_steps": 4,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "return_dict_in_generate": True,
    }
    out = model.generate(**prompts, **base)
    generated = out.sequences[:, 6:]
    assert (generated == EOS).any(-1).all()
    for row in generated:
        first = int((row == EOS).nonzero()[0])
        assert (row[first + 1 :] == PAD).all()  # padding after the first EOS
    # every row ends inside the first block, so the second block costs no forward pass
    assert out.cost.forward_passes == 2
    assert out.cost.generated_tokens == int(sum(int((r == EOS).nonzero()[0]) + 1 for r in generated))
    suppressed = model.generate(**prompts, **base, suppress_eos=True)
    assert not (suppressed.sequences[:, 6:] == EOS).any() and suppressed.cost.forward_passes == 4
    kept = model.generate(**prompts, **base, stop_at_eos=False)
    assert kept.cost.forward_passes == 4 and not (kept.sequences[:, 6:] == MASK).any()


def test_defer_eos_commits_eos_last(prompts):
    model = attach_masked_diffusion_generate(build_tiny_bert(eos_bias=3.0))
    out = model.generate(
        **prompts,
        gen_length=8,
        diffusion_steps=8,
        eos_token_id=EOS,
        stop_at_eos=False,
        defer_eos=True,
        output_history=True,
        return_dict_in_generate=True,
    )
    for row in range(3):
        committed_eos = [int((h[row] == EOS).sum()) for h in out.history]
        committed_other = [int(((h[row] != EOS) & (h[row] != MASK)).sum()) for h in out.history]
        if committed_eos[-1]:
            first_eos_step = next(i for i, n in enumerate(committed_eos) if n)
            # the first EOS is committed only once every non-EOS position that will exist is committed
            assert committed_other[first_eos_step] == committed_other[-1]


def test_cfg_without_attention_mask(bert, prompts):
    # LLaDA's generate fails here (attention_mask_ unbound when cfg_scale > 0 and attention_mask is None)
    ids = prompts["input_ids"][1:2]
    out = bert.generate(input_ids=ids, gen_length=8, diffusion_steps=4, cfg_scale=2.0, return_dict_in_generate=True)
    assert out.cost.forward_passes == 4 and not (out.sequences == MASK).any()
    plain = bert.generate(input_ids=ids, gen_length=8, diffusion_steps=4, cfg_scale=0.0)
    assert torch.equal(plain, bert.generate(input_ids=ids, gen_length=8, diffusion_steps=4))


# ------------------------------------------------------------------------------------------- adapters / dispatch
class _ShiftedBert(torch.nn.Module):
    """A Dream-style wrapper: output i predicts token i + 1, and the interface has `diffusion_generate`."""

    def __init__(self, inner: BertForMaskedLM):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def diffusion_generate(self, *args, **kwargs):  # pragma: no cover - the interface marker only
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if attention_mask is not None and attention_mask.dim() == 4:  # Dream's (B, 1, L, L) boolean mask
            attention_mask = attention_mask[:, 0].diagonal(dim1=-2, dim2=-1).long()
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return type("Out", (), {"logits": torch.cat([logits[:, 1:], logits[:, -1:]], dim=1)})()


def test_logits_shift_for_dream_style_models(bert, prompts):
    shifted = _ShiftedBert(bert)
    gc = GenerationConfig()
    expected = bert.generate(**prompts, gen_length=8, diffusion_steps=4)
    got = masked_diffusion(
        shifted,
        prompts["input_ids"],
        generation_config=gc,
        attention_mask=prompts["attention_mask"],
        gen_length=8,
        diffusion_steps=4,
    )
    assert torch.equal(got, expected)  # shift inferred from the `diffusion_generate` interface
    unshifted = masked_diffusion(
        shifted,
        prompts["input_ids"],
        generation_config=gc,
        logits_shift=False,
        attention_mask=prompts["attention_mask"],
        gen_length=8,
        diffusion_steps=4,
    )
    assert not torch.equal(unshifted, expected)


def test_generation_mixin_models_use_transformers_generate(bert, prompts):
    class LLaDALike(BertForMaskedLM, GenerationMixin):
        """A bidirectional model with GenerationMixin, like LLaDA's remote code."""

    model = LLaDALike(bert.config).eval()
    model.load_state_dict(bert.state_dict())
    out = model.generate(
        **prompts,
        custom_generate=masked_diffusion,
        gen_length=8,
        diffusion_steps=4,
        max_new_tokens=8,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, bert.generate(**prompts, gen_length=8, diffusion_steps=4))
    assert out.cost.forward_passes == 4


def test_enable_dispatch_and_other_decodings_need_a_causal_lm(prompts):
    model = build_tiny_bert()
    assert supports_masked_diffusion(model) and not hasattr(model, "generate")
    attach_masked_diffusion_generate(model)
    hfd.enable(model)
    out = model.generate(**prompts, decoding="masked_diffusion", gen_length=4)
    assert torch.equal(out, model.generate(**prompts, gen_length=4))
    with pytest.raises(InvalidDecodingArgument, match="causal LM"):
        model.generate(**prompts, decoding="sample", max_new_tokens=4)
    with pytest.raises(InvalidDecodingArgument, match="causal LM"):
        model.generate(**prompts, custom_generate=functools.partial(hfd.decoders.sample))


def test_enable_alone_gives_masked_lms_a_generate(prompts):
    model = hfd.enable(build_tiny_bert())
    out = model.generate(**prompts, decoding="masked_diffusion", gen_length=4)
    assert torch.equal(out, attach_masked_diffusion_generate(build_tiny_bert()).generate(**prompts, gen_length=4))


def test_left_to_right_processors_are_reported_not_silently_ignored(bert, prompts):
    from transformers import RepetitionPenaltyLogitsProcessor

    from hf_decoding.errors import HfDecodingWarning

    with pytest.warns(HfDecodingWarning, match="RepetitionPenaltyLogitsProcessor") as record:
        bert.generate(**prompts, gen_length=4, logits_processor=[RepetitionPenaltyLogitsProcessor(1.2)])
    # attributed to the caller's `generate` line, not to a frame inside the library
    assert {w.filename for w in record if issubclass(w.category, HfDecodingWarning)} == {__file__}


def test_attached_model_still_saves_and_loads(tmp_path, prompts):
    model = attach_masked_diffusion_generate(build_tiny_bert())
    model.save_pretrained(tmp_path)
    reloaded = attach_masked_diffusion_generate(BertForMaskedLM.from_pretrained(tmp_path).eval())
    assert reloaded.config.mask_token_id == MASK  # stored in config.json for the decoder
    assert torch.equal(reloaded.generate(**prompts, gen_length=4), model.generate(**prompts, gen_length=4))


def test_streamer_receives_drafts_and_blocks(bert, prompts):
    class Recorder:
        def __init__(self):
            self.events = []

        def put(self, value):
            self.events.append(("put", tuple(value.shape)))

        def put_draft(self, value):
            self.events.append(("draft", tuple(value.shape)))

        def end(self):
            self.events.append(("end",))

    streamer = Recorder()
    bert.generate(
        input_ids=prompts["input_ids"][1:2], gen_length=8, block_length=4, diffusion_steps=4, streamer=streamer
    )
    kinds = [e[0] for e in streamer.events]
    assert kinds == ["put", "draft", "draft", "put", "draft", "draft", "put", "end"]
    assert streamer.events[1] == ("draft", (1, 4))


# ----------------------------------------------------------------------------------------------- sampling pieces
def test_gumbel_candidates_follow_the_tempered_top_k_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0]).repeat(1, 20000, 1)  # (1, N, V)
    generator = torch.Generator().manual_seed(0)
    draws = sample_candidates(logits, do_sample=True, temperature=0.7, top_k=0, generator=generator).tokens
    frequency = torch.bincount(draws.flatten(), minlength=5).double() / draws.numel()
    expected = torch.softmax(logits[0, 0].double() / 0.7, -1)
    assert torch.allclose(frequency, expected, atol=0.01)
    top2 = sample_candidates(logits, do_sample=True, temperature=1.0, top_k=2, generator=generator)
    assert set(top2.tokens.unique().tolist()) == {0, 1}
    assert top2.probs.dtype == torch.float32
    greedy = sample_candidates(logits[:, :3], do_sample=False)
    assert (greedy.tokens == 0).all() and torch.allclose(greedy.confidence, torch.softmax(logits[0, 0], -1)[0])


# -------------------------------------------------------------------------------------------------- exact toy joint
@pytest.fixture(scope="module")
def toy():
    joint = hidden_markov_joint(length=4, vocab_size=2, hidden_states=2, dependence=0.85, noise=0.1)
    return joint, JointTableDenoiser(joint)


def _empirical(sequences: torch.Tensor, joint) -> np.ndarray:
    index = np.ravel_multi_index(sequences.numpy().T, joint.probs.shape)
    return np.bincount(index, minlength=joint.probs.size) / sequences.shape[0]


def _toy_samples(model, steps, rule="random", **options):
    out = masked_diffusion(
        model,
        torch.zeros(8000, 0, dtype=torch.long),
        generation_config=GenerationConfig(do_sample=True, top_k=0, return_dict_in_generate=True),
        gen_length=model.joint.length,
        diffusion_steps=steps,
        unmasking=rule,
        seed=0,
        **options,
    )
    return out


def test_one_token_per_step_reproduces_the_exact_joint(toy):
    from hf_decoding.analysis.convergence import kl_divergence, sampler_distribution

    joint, model = toy
    p = joint.probs.ravel()
    exact = _empirical(joint.sample(8000, torch.Generator().manual_seed(1)), joint)
    noise = 0.5 * np.abs(exact - p).sum()  # total variation of exact sampling at this sample size
    one_per_step = _empirical(_toy_samples(model, steps=4).sequences, joint)
    assert 0.5 * np.abs(one_per_step - p).sum() < 2 * noise + 0.01
    all_at_once = _empirical(_toy_samples(model, steps=1).sequences, joint)
    q1 = sampler_distribution(joint, [4]).probs.ravel()
    assert kl_divergence(joint.probs, q1) > 0.1
    assert 0.5 * np.abs(all_at_once - p).sum() > 5 * noise  # product of marginals: visibly wrong
    assert 0.5 * np.abs(all_at_once - q1).sum() < 2 * noise + 0.01  # and exactly as the theory predicts


@pytest.mark.parametrize(
    ("rule", "options"),
    [
        ("threshold", {"unmasking_threshold": 0.8}),
        ("threshold", {"unmasking_threshold": 0.8, "unmasking_confidence": "max_prob"}),
        ("low_confidence", {}),
        ("entropy_bound", {"unmasking_entropy_bound": 0.3}),
    ],
)
def test_decoder_matches_the_exact_sampler_law(toy, rule, options):
    from hf_decoding.analysis.convergence import sampler_distribution

    joint, model = toy
    out = _toy_samples(model, steps=4, rule=rule, **options)
    empirical = _empirical(out.sequences, joint)
    exact = sampler_distribution(
        joint,
        [1] * 4,
        rule,
        threshold=options.get("unmasking_threshold", 0.9),
        entropy_bound=options.get("unmasking_entropy_bound", 0.1),
        confidence=options.get("unmasking_confidence", "candidate"),
    )
    assert 0.5 * np.abs(empirical - exact.probs.ravel()).sum() < 0.035
    assert abs(float(out.steps.float().mean()) - exact.expected_steps) < 0.05


# --------------------------------------------------------------------------------------------------------- the CLI
def _cli(module, argv):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    return module.run(parser.parse_args(argv))


def test_diffusion_cli_train_eval_generate(tmp_path, capsys):
    from hf_decoding.cli import diffusion as cli

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [f"Fortune number {i}: the quick brown fox jumps over the lazy dog {i % 7} times." for i in range(80)]
    (corpus / "quotes").write_text("\n%\n".join(lines))
    out_dir = tmp_path / "model"
    common = [
        "diffusion",
        "train",
        "--output-dir",
        str(out_dir),
        "--corpus-dir",
        str(corpus),
        "--hidden-size",
        "16",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--intermediate-size",
        "32",
        "--seq-length",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--warmup-steps",
        "1",
        "--eval-windows",
        "4",
        "--holdout-fraction",
        "0.2",
        "--no-progress",
        "--json",
    ]
    assert _cli(cli, common) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists()
    assert (
        _cli(
            cli,
            [
                "diffusion",
                "eval",
                "--model",
                str(out_dir),
                "--prompt-length",
                "8",
                "--windows",
                "4",
                "--mi-windows",
                "2",
                "--json",
            ],
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = {row["policy"]: row for row in result["table"]}
    assert table["random T=8"]["forward_passes_per_sequence"] == 8
    assert table["random T=4"]["forward_passes_per_sequence"] == 4
    assert table["random T=8"]["delta_nll_bits_per_token"] == 0.0
    assert 1 <= table["threshold tau=0.5"]["forward_passes_per_sequence"] <= 8
    assert len(result["mutual_information"]["per_position"]) == 8
    assert (
        _cli(
            cli,
            [
                "diffusion",
                "generate",
                "--model",
                str(out_dir),
                "--prompt",
                "Fortune number",
                "--gen-length",
                "8",
                "--diffusion-steps",
                "4",
                "--json",
            ],
        )
        == 0
    )
    generated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert generated["forward_passes"] <= 4 and len(generated["completions"]) == 1
