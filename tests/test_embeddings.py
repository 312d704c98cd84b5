"""Tests for `hf_decoding.analysis.embeddings` (and its CLI) on tiny models with planted structure.

- A *constant-hidden* Llama (layers write nothing, every input embedding is the same row) has the same last hidden
  state `h0` at every position, so `−log ᾱ_w = −h0·E_w + log Z` exactly: the MLR must recover `A = −h0`.
- A *planted-sparse* Llama has its final-norm weight zero on most dimensions, so those dimensions of `h` are 0 at
  every position: removing them must change nothing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from hf_decoding.analysis import embeddings as emb
from hf_decoding.errors import HfDecodingError, IncompatibleCheckpointError, InvalidDecodingArgument
from hf_decoding.processors.token_probability import TokenProbabilityLogitsProcessor

VOCAB, HIDDEN, RELEVANT = 96, 16, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU extra threads make small ops far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama(seed: int = 0, tied: bool = False, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = 0
    return model


def _constant_hidden_model() -> tuple[LlamaForCausalLM, torch.Tensor]:
    model = _llama(seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.randn(HIDDEN).expand(VOCAB, HIDDEN))
        model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, HIDDEN))
        ids = torch.tensor([[5]])
        h0 = model.model(input_ids=ids).last_hidden_state[0, 0]
    return model, h0


def _planted_sparse_model(tied: bool = False) -> LlamaForCausalLM:
    model = _llama(seed=2, tied=tied)
    with torch.no_grad():
        gamma = torch.zeros(HIDDEN)
        gamma[:RELEVANT] = 3.0
        model.model.norm.weight.copy_(gamma)
    return model


def _texts(n: int = 10, length: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def constant():
    model, h0 = _constant_hidden_model()
    report = emb.probability_encoding(model, None, _texts(4, 6), progress=False, test_fraction=0.3, random_repeats=2)
    return model, h0, report


@pytest.fixture(scope="module")
def sparse():
    model = _planted_sparse_model()
    report = emb.probability_encoding(model, None, _texts(), progress=False, test_fraction=0.3)
    return model, report


# --------------------------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------------------------


def test_fit_log_linear_recovers_a_planted_direction_exactly():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(400, 8, generator=g, dtype=torch.float64)
    a = torch.randn(8, generator=g, dtype=torch.float64)
    bias = torch.randn(400, generator=g, dtype=torch.float64)
    fit = emb.fit_log_linear(embeddings, embeddings @ a + 1.5, seed=3)
    torch.testing.assert_close(fit.coefficients, a, rtol=0, atol=1e-9)
    assert fit.intercept == pytest.approx(1.5, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.spearman == pytest.approx(1.0)
    assert fit.train_index.numel() + fit.test_index.numel() == 400
    assert set(fit.train_index.tolist()).isdisjoint(fit.test_index.tolist())
    with_bias = emb.fit_log_linear(embeddings, embeddings @ a - 2.0 * bias, bias=bias)
    assert with_bias.bias_coefficient == pytest.approx(-2.0, abs=1e-9)
    # the split is seeded
    again = emb.fit_log_linear(embeddings, embeddings @ a + 1.5, seed=3)
    assert torch.equal(again.test_index, fit.test_index)


def test_probability_encoding_recovers_the_hidden_state_direction(constant):
    model, h0, report = constant
    expected_log_p = torch.log_softmax(model.lm_head.weight.double() @ h0.double(), -1)
    torch.testing.assert_close(report.log_probability, expected_log_p, rtol=0, atol=1e-5)
    torch.testing.assert_close(report.fit.coefficients, -h0.double(), rtol=0, atol=1e-4)
    assert report.fit.r2 > 1 - 1e-8 and report.fit.pearson > 1 - 1e-8 and report.fit.spearman > 0.999
    assert report.baseline["r2_unit_slope"] > 1 - 1e-8
    assert report.baseline["cosine_coefficients_mean_hidden"] == pytest.approx(1.0, abs=1e-6)
    assert report.dimension_curve.top_coefficient[-1] > 1 - 1e-8
    assert report.num_positions == 24 and report.num_texts == 4 and not report.tied
    json.dumps(report.to_dict())


def test_probability_encoding_averages_the_models_own_distribution(sparse):
    model, report = sparse
    texts = _texts()
    with torch.no_grad():
        probs = torch.cat([model(input_ids=torch.tensor([t])).logits[0].double().softmax(-1) for t in texts])
    torch.testing.assert_close(report.log_probability.exp(), probs.mean(0), rtol=1e-5, atol=1e-9)
    counts = torch.bincount(torch.tensor(texts).reshape(-1), minlength=VOCAB).double()
    torch.testing.assert_close(report.log_unigram, torch.log((counts + 0.5) / (counts.sum() + 0.5 * VOCAB)))
    assert report.alternative_fit.test_index.numel() == report.fit.test_index.numel()
    # the saliency from the hidden states puts the planted dimensions first, and gives the others exactly zero
    assert set(torch.argsort(report.variance_saliency, descending=True)[:RELEVANT].tolist()) == set(range(RELEVANT))
    assert torch.all(report.variance_saliency[RELEVANT:] == 0)
    curve = report.dimension_curve
    assert curve.num_dimensions == [1, 2, 4, 8, HIDDEN]
    for series in (curve.top_coefficient, curve.top_variance, curve.top_components, curve.random_mean):
        assert series[-1] == pytest.approx(report.fit.r2, abs=1e-9)  # every dimension: the full fit


def test_unigram_target_and_lm_head_bias():
    model = _llama(seed=4)
    with torch.no_grad():
        head = torch.nn.Linear(HIDDEN, VOCAB, bias=True)
        head.weight.copy_(model.lm_head.weight)
        head.bias.copy_(torch.randn(VOCAB))
    model.lm_head = head
    report = emb.probability_encoding(model, None, _texts(6), target="unigram", progress=False)
    assert report.has_bias and report.target == "unigram"
    assert report.fit.bias_coefficient is not None and report.alternative_fit.bias_coefficient is not None
    with torch.no_grad():
        z = model(input_ids=torch.tensor(_texts(6))).logits.double()
    torch.testing.assert_close(report.mean_logits, z.reshape(-1, VOCAB).mean(0), rtol=1e-5, atol=1e-5)


def test_soft_capped_logits_are_reconstructed():
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        final_logit_softcapping=2.0,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # well into the cap
    report = emb.probability_encoding(model, None, _texts(4), progress=False)
    assert report.softcap == 2.0 and report.tied
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(_texts(4))).logits.double()
    assert logits.abs().max() <= 2.0
    torch.testing.assert_close(
        report.log_probability.exp(), logits.softmax(-1).reshape(-1, VOCAB).mean(0), rtol=1e-5, atol=1e-9
    )


def test_unsupported_logit_scaling_is_detected():
    model = _llama()
    model.config.final_logit_softcapping = 0.1  # Llama ignores it: our reconstruction would be wrong
    with pytest.raises(IncompatibleCheckpointError, match="softcap"):
        emb.probability_encoding(model, None, _texts(2), progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------------------------


def test_pruning_planted_irrelevant_dimensions_changes_nothing(sparse):
    model, report = sparse
    irrelevant = (HIDDEN - RELEVANT) / HIDDEN
    curve = emb.pruning_curve(
        model,
        None,
        _texts(4, seed=1),
        _texts(4, seed=2),
        report=report,
        fractions=[0.0, 0.5, irrelevant],
        prompt_length=4,
        max_new_tokens=6,
        progress=False,
    )
    assert [p.num_removed for p in curve.points] == [0, HIDDEN // 2, HIDDEN - RELEVANT]
    for point in curve.points:
        assert point.greedy_identical == 1.0 and point.greedy_agreement == 1.0
        for split in ("in_distribution", "held_out"):
            metrics = point.metrics[split]
            assert metrics["kl"] < 1e-7 and metrics["js"] < 1e-7 and metrics["top1"] == 1.0
            assert metrics["js_average"] < 1e-9
            assert metrics["perplexity"] == pytest.approx(curve.reference_perplexity[split], rel=1e-5)
    assert curve.largest_prunable() == irrelevant
    json.dumps(curve.to_dict())
    # removing the planted dimensions instead does change the distribution
    with emb.prune_output_dimensions(model, irrelevant, report=report) as edit:
        assert set(edit.details["removed"].tolist()) == set(range(RELEVANT, HIDDEN))
    random_curve = emb.pruning_curve(
        model,
        None,
        _texts(4, seed=1),
        report=report,
        fractions=[0.75],
        ranking="random",
        seed=5,
        num_prompts=0,
        progress=False,
    )
    assert random_curve.points[0].metrics["in_distribution"]["js"] > 1e-4


@pytest.mark.parametrize("basis", ["axis", "pca"])
def test_pruned_weights_follow_the_formula(sparse, basis):
    model, report = sparse
    weight = model.lm_head.weight.detach().clone()
    with emb.prune_output_dimensions(model, 0.25, "coefficient", report=report, basis=basis) as edit:
        u = edit.details["directions"]  # (d, k)
        assert u.shape == (HIDDEN, 4)
        expected = weight.double() - weight.double() @ u @ u.T
        torch.testing.assert_close(model.lm_head.weight.double(), expected, rtol=0, atol=1e-6)
        if basis == "axis":
            assert torch.all(model.lm_head.weight[:, edit.details["removed"]] == 0)
    assert torch.equal(model.lm_head.weight, weight)


def test_pca_basis_and_random_ranking_without_report():
    model = _planted_sparse_model()
    curve = emb.pruning_curve(
        model, None, _texts(3), fractions=[0.0, 0.5], ranking="random", basis="pca", num_prompts=0, progress=False
    )
    assert curve.basis == "pca" and "held_out" not in curve.points[0].metrics
    assert curve.points[0].metrics["in_distribution"]["kl"] == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------------------------------------------------
# Reversible edits
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_edits_are_reversed_exactly(tied):
    model = _planted_sparse_model(tied=tied)
    report = emb.probability_encoding(model, None, _texts(4), progress=False)
    original = model.lm_head.weight
    saved = original.detach().clone()
    input_weight = model.model.embed_tokens.weight.detach().clone()
    ids = torch.tensor([_texts(1)[0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    for make in (
        lambda: emb.prune_output_dimensions(model, 0.5, report=report),
        lambda: emb.prune_output_dimensions(model, 0.5, report=report, basis="pca"),
        lambda: emb.steer_token_probability(model, [5, 9], [3.0, 0.2], report=report),
    ):
        edit = make()
        assert edit.was_tied == tied and edit.active
        assert model.lm_head.weight is not original and not torch.equal(model.lm_head.weight, saved)
        assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied while edited
        assert torch.equal(model.model.embed_tokens.weight, input_weight)  # input embeddings untouched
        assert torch.equal(original, saved)  # the original tensor is never written to
        edit.restore()
        edit.restore()  # idempotent
        assert model.lm_head.weight is original and torch.equal(model.lm_head.weight, saved)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, before)


def test_nested_edits_must_be_restored_in_reverse_order(sparse):
    model, report = sparse
    original = model.lm_head.weight
    outer = emb.prune_output_dimensions(model, 0.25, report=report)
    inner = emb.steer_token_probability(model, 3, 2.0, report=report)
    with pytest.raises(HfDecodingError, match="reverse order"):
        outer.restore()
    inner.restore()
    outer.restore()
    assert model.lm_head.weight is original


# --------------------------------------------------------------------------------------------------------------------
# Steering
# --------------------------------------------------------------------------------------------------------------------


def test_fitted_steering_is_an_exact_logit_shift_when_the_hidden_state_is_constant(constant):
    model, h0, report = constant
    ids, ratio = [7, 30], 4.0
    x = torch.tensor(_texts(2, 5, seed=9))
    with torch.no_grad():
        plain = model(input_ids=x).logits
        with emb.steer_token_probability(model, ids, ratio, report=report):
            steered = model(input_ids=x).logits
    processed = TokenProbabilityLogitsProcessor(ids, ratio, mode="logit")(None, plain.reshape(-1, VOCAB))
    torch.testing.assert_close(steered.reshape(-1, VOCAB), processed, rtol=0, atol=1e-4)
    u = emb.steering_vector(report, "fitted")
    assert float(h0.double() @ u) == pytest.approx(1.0, abs=1e-6)  # A = −h0, so h0·(−A/‖A‖²) = 1


def test_steering_curve_on_the_constant_model(constant):
    model, _, report = constant
    curve = emb.steering_curve(
        model,
        None,
        _texts(3, seed=4),
        report=report,
        num_tokens=3,
        ratios=[0.05, 1, 20],
        directions=("fitted", "mean_hidden", "least_squares"),
        progress=False,
    )
    assert set(curve.achieved) == {
        "embedding:fitted",
        "embedding:mean_hidden",
        "embedding:least_squares",
        "processor:probability",
        "processor:logit",
    }
    assert set(curve.token_ids) <= set(report.fit.test_index.tolist())
    torch.testing.assert_close(curve.achieved["embedding:fitted"], curve.achieved["processor:logit"], rtol=1e-4, atol=0)
    torch.testing.assert_close(
        curve.achieved["embedding:mean_hidden"], curve.achieved["processor:logit"], rtol=1e-4, atol=0
    )
    target = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64).unsqueeze(-1).expand(3, 3)
    feasible = curve.base_probability * 20 < 1
    torch.testing.assert_close(curve.achieved["processor:probability"][:, feasible], target[:, feasible])
    assert torch.all(curve.shift_std["embedding:fitted"][[0, 2]] < 1e-5)  # context-free here
    summary = curve.summary()
    assert summary["processor:probability"]["within_10_percent"] == pytest.approx(feasible.double().mean())
    json.dumps(curve.to_dict())


def test_steering_vector_from_a_tensor_and_least_squares(sparse):
    _, report = sparse
    a = torch.randn(HIDDEN, dtype=torch.float64)
    torch.testing.assert_close(emb.steering_vector(None, a), -a / (a @ a))
    u = emb.steering_vector(report, "least_squares", ridge=1e-9)
    # least squares: E[h hᵀ] u ≈ h̄ on the planted subspace
    moment = report.hidden_second_moment
    torch.testing.assert_close((moment @ u)[:RELEVANT], report.mean_hidden[:RELEVANT], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True, "0.3"])
def test_bad_fraction(sparse, fraction):
    model, report = sparse
    with pytest.raises(InvalidDecodingArgument, match="`fraction`"):
        emb.prune_output_dimensions(model, fraction, report=report)
    assert model.lm_head.weight.requires_grad is not None  # nothing installed
    with pytest.raises(InvalidDecodingArgument, match="`fractions`"):
        emb.pruning_curve(model, None, _texts(2), report=report, fractions=[0.0, fraction], progress=False)


@pytest.mark.parametrize("ratio", [0, -2.0, float("nan"), float("inf"), [1.0, 0.0]])
def test_bad_ratio(sparse, ratio):
    model, report = sparse
    original = model.lm_head.weight
    with pytest.raises(InvalidDecodingArgument, match="`ratio`"):
        emb.steer_token_probability(model, [3, 4], ratio, report=report)
    assert model.lm_head.weight is original
    if not isinstance(ratio, list):
        with pytest.raises(InvalidDecodingArgument, match="`ratios`"):
            emb.steering_curve(model, None, _texts(2), report=report, ratios=[1.0, ratio], progress=False)


class _Tokenizer:
    """Whitespace tokenizer over digit strings, enough to exercise the string path."""

    def __call__(self, text, truncation=True, max_length=None):
        return {"input_ids": [int(t) for t in text.split()][:max_length]}


@pytest.mark.parametrize("texts", [[], (), ["", "  "], "a single string", None])
def test_empty_texts(sparse, texts):
    model, report = sparse
    with pytest.raises(InvalidDecodingArgument, match="`texts`"):
        emb.probability_encoding(model, _Tokenizer(), texts, progress=False)
    with pytest.raises(InvalidDecodingArgument, match="`texts`"):
        emb.pruning_curve(model, _Tokenizer(), texts, report=report, progress=False)
    with pytest.raises(InvalidDecodingArgument, match="`texts`"):
        emb.steering_curve(model, _Tokenizer(), texts, report=report, progress=False)


def test_other_bad_arguments(sparse):
    model, report = sparse
    with pytest.raises(InvalidDecodingArgument, match="`tokenizer`"):
        emb.probability_encoding(model, None, ["3 4 5"], progress=False)
    report_from_strings = emb.probability_encoding(model, _Tokenizer(), ["3 4 5 6", "7 8"], progress=False)
    assert report_from_strings.num_positions == 6
    with pytest.raises(InvalidDecodingArgument, match="`target`"):
        emb.probability_encoding(model, None, _texts(2), target="frequency", progress=False)
    with pytest.raises(InvalidDecodingArgument, match="`test_fraction`"):
        emb.probability_encoding(model, None, _texts(2), test_fraction=1.0, progress=False)
    with pytest.raises(InvalidDecodingArgument, match="`ranking`"):
        emb.prune_output_dimensions(model, 0.5, "magnitude", report=report)
    with pytest.raises(InvalidDecodingArgument, match="`report`"):
        emb.prune_output_dimensions(model, 0.5, "variance")
    with pytest.raises(InvalidDecodingArgument, match="`basis`"):
        emb.prune_output_dimensions(model, 0.5, report=report, basis="svd")
    with pytest.raises(InvalidDecodingArgument, match="`token_ids`"):
        emb.steer_token_probability(model, [VOCAB], 2.0, report=report)
    with pytest.raises(InvalidDecodingArgument, match="`direction`"):
        emb.steer_token_probability(model, [3], 2.0, report=report, direction="up")


# --------------------------------------------------------------------------------------------------------------------
# Plots and CLI
# --------------------------------------------------------------------------------------------------------------------


def test_plots(sparse, tmp_path):
    pytest.importorskip("matplotlib")
    model, report = sparse
    curve = emb.pruning_curve(
        model, None, _texts(2), report=report, fractions=[0.0, 0.5], num_prompts=0, progress=False
    )
    steering = emb.steering_curve(model, None, _texts(2), report=report, num_tokens=2, ratios=[0.5, 2], progress=False)
    paths = [
        emb.plot_probability_pca(report, tmp_path / "a.png"),
        emb.plot_dimension_curve(report, tmp_path / "b.png"),
        emb.plot_pruning_curves({"variance": curve}, tmp_path / "c.png"),
        emb.plot_steering_curve(steering, tmp_path / "d.png"),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _cli(argv):
    import argparse

    from hf_decoding.cli import analyze_embeddings

    parser = argparse.ArgumentParser(prog="hf-decoding analyze")
    analyze_embeddings.add_parser(parser.add_subparsers())
    args = parser.parse_args(["embeddings", *argv])
    return analyze_embeddings, args


def test_cli_parser_and_corpus_helpers(tmp_path):
    module, args = _cli(["--ratios", "1/20,2", "--fractions", "0,0.5", "--json"])
    assert args.ratios == [0.05, 2.0] and args.fractions == [0.0, 0.5] and args.json and args.handler is module.run
    path = tmp_path / "records.txt"
    path.write_text("one two three four five\n%\nshort\n%\nsix seven eight nine ten eleven\n")
    assert module.read_records(path) == ["one two three four five", "six seven eight nine ten eleven"]
    with pytest.raises(SystemExit):
        _cli(["--help"])


def test_public_names_and_the_analyze_subcommand(capsys):
    import hf_decoding as hfd
    from hf_decoding.analysis import embeddings as exported
    from hf_decoding.cli import main

    assert hfd.TokenProbabilityLogitsProcessor is TokenProbabilityLogitsProcessor and exported is emb
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "embeddings", "--help"])
    assert exit_info.value.code == 0
    assert "--rankings" in capsys.readouterr().out


@pytest.mark.real
def test_cli_runs_on_smollm2(smollm2, tmp_path, capsys):
    records = [f"Record number {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(8)]
    (tmp_path / "in.txt").write_text("\n%\n".join(records))
    (tmp_path / "out.txt").write_text(
        "It was a bright cold day in April, and the clocks were striking thirteen, said the narrator of the book.\n\n"
        * 2
    )
    module, args = _cli(
        [
            "--texts",
            str(tmp_path / "in.txt"),
            "--held-out",
            str(tmp_path / "out.txt"),
            "--num-texts",
            "6",
            "--num-eval",
            "2",
            "--max-length",
            "24",
            "--fractions",
            "0,0.5",
            "--rankings",
            "pca",
            "--ratios",
            "0.5,2",
            "--directions",
            "fitted",
            "--num-tokens",
            "2",
            "--num-prompts",
            "1",
            "--max-new-tokens",
            "3",
            "--threads",
            "1",
            "--json",
            "--plot",
            str(tmp_path / "figs"),
            "--no-progress",
        ]
    )
    assert module.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["encoding"]["tied_embeddings"] is True and result["encoding"]["vocab_size"] == 49152
    assert math.isfinite(result["encoding"]["fit"]["r2"])
    assert set(result["pruning"]) == {"pca"}
    assert len(result["figures"]) == 4 and all((tmp_path / "figs").glob("embeddings_smollm2_135m_instruct_*.png"))
