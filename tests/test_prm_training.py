"""The learned PRM (`hf_decoding.rewards.training`): outcome labels propagated to steps, the rank AUROC, the saved head
loading back as a `ProcessRewardModel` that scores exactly like a direct forward (stateless and session paths), typed
errors, and a Qwen2.5-Math-PRM-like token-classification model read at its `<extra_0>` separators."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_llama
from test_rewards import build_qwen_prm_model, prm_tokenizer

from hf_decoding.errors import IncompatibleCheckpointError, InvalidDecodingArgument
from hf_decoding.rewards import ProcessRewardModel
from hf_decoding.rewards.training import (
    HEAD_FILE,
    LabelledSample,
    LearnedPRM,
    PRMTrainingConfig,
    auroc,
    label_noise,
    label_samples,
    step_labels,
    tag_features,
    train_prm,
)

TAG = "<extra_0>"
PROMPTS = ["What is 3 + 4?", "Tom has 3 apples."]
TEXTS = ["3 + 4 = 7\n\nThe answer is \\boxed{7}", "He buys 4 more\n\nthen 7 * 2 = 14\n\nso 14"]


@pytest.fixture(scope="module")
def tiny():
    tok = prm_tokenizer()
    base = build_tiny_llama(seed=3, vocab_size=len(tok))
    torch.manual_seed(1)
    module = LearnedPRM(base, prm_config={"step_tag": TAG, "base_model": "tiny"}).eval()
    return module, tok, ProcessRewardModel(module, tok, step_tag=TAG, system_prompt=None, batch_size=2)


def direct_scores(module, prm, prompt, text):
    """Scores read off one plain forward of the whole layout (no padding, no cache)."""
    ids = prm.prefix_ids(prompt)
    tags = []
    for k, step in enumerate(s for s in text.split("\n\n") if s.strip()):
        ids += [*prm.segment_ids(step, first=k == 0, whole=False), prm.tag_id]
        tags.append(len(ids) - 1)
    with torch.no_grad():
        logits = module(input_ids=torch.tensor([ids])).logits  # (1, L, 2)
    assert logits.shape == (1, len(ids), 2)
    return logits[0, tags].softmax(-1)[:, 1].tolist()


# ------------------------------------------------------------------------------------------------ labels and AUROC
def test_outcome_label_propagates_to_every_step_and_exact_label_measures_noise():
    text = "3 + 4 = 7\n\n7 * 2 = 15\n\nThe answer is 14."
    right = step_labels(text, "14")
    assert right.correct and right.outcome_labels == [1, 1, 1]
    assert right.exact_labels == [1, 0, 1]  # the wrong equation; no-equation steps inherit the outcome
    wrong = step_labels(text, "15")
    assert not wrong.correct and wrong.outcome_labels == [0, 0, 0] and wrong.exact_labels == [1, 0, 0]
    noise = label_noise([right, wrong])
    assert noise["label_noise"] == pytest.approx(2 / 6)
    assert noise["label_noise_steps_with_equations"] == pytest.approx(2 / 4)


def test_auroc_exact_on_hand_made_data():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.1, 0.2], [1, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5  # ties count half
    assert math.isnan(auroc([0.3, 0.4], [1, 1]))
    with pytest.raises(InvalidDecodingArgument, match="labels"):
        auroc([0.1, 0.2], [1])


# ------------------------------------------------------------------------------------------------ the scorer
def test_learned_prm_scores_equal_direct_forward_stateless_and_session(tiny):
    module, _, prm = tiny
    expected = [direct_scores(module, prm, p, t) for p, t in zip(PROMPTS, TEXTS, strict=True)]
    assert [len(e) for e in expected] == [2, 3]
    got = prm.score(PROMPTS, TEXTS)
    assert got == [pytest.approx(e, abs=1e-5) for e in expected]
    session = prm.open_session(PROMPTS, num_particles=1)
    steps = [t.split("\n\n") for t in TEXTS]
    for k in range(3):
        slots = [s for s in (0, 1) if k < len(steps[s])]
        session.extend(
            slots, [steps[s][k] + ("\n\n" if k + 1 < len(steps[s]) else "") for s in slots], [2] * len(slots)
        )
        out = session.score(slots, "last", k)
        for slot, row in zip(slots, out, strict=True):
            assert row == pytest.approx(expected[slot][: k + 1], abs=1e-4)


def test_save_from_pretrained_round_trip_is_identical_and_head_only(tiny, tmp_path):
    module, tok, prm = tiny
    module.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {HEAD_FILE, "prm_config.json", "README.md"}
    assert (tmp_path / HEAD_FILE).stat().st_size < 10_000  # the head only, never the base
    loaded = LearnedPRM.from_pretrained(tmp_path, base_model=module.base, tokenizer=tok)
    assert isinstance(loaded, ProcessRewardModel) and isinstance(loaded.model, LearnedPRM)
    assert loaded.step_tag == TAG and loaded.positive_index == 1
    assert loaded.score(PROMPTS, TEXTS) == prm.score(PROMPTS, TEXTS)


def test_train_prm_from_labelled_samples_saves_and_evaluates(tiny, tmp_path):
    module, tok, _ = tiny
    train = [
        LabelledSample(p, "7", t, [s for s in t.split("\n\n") if s], c, [int(c)] * n, [int(c)] * n)
        for p, t, c, n in [(PROMPTS[0], TEXTS[0], True, 2), (PROMPTS[1], TEXTS[1], False, 3)] * 3
    ]
    config = PRMTrainingConfig(epochs=30, learning_rate=0.05, step_tag=TAG, progress_bar=False, base_model="tiny")
    result = train_prm(module.base, tok, [], [], config, tmp_path, train_samples=train, heldout_samples=train)
    metrics = result.metrics
    assert metrics["train_samples"] == 6 and metrics["train_steps"] == 15 and metrics["train_label_noise"] == 0
    assert metrics["heldout"]["final_answer_auroc"] == 1.0  # separable toy data
    assert metrics["score_path_max_abs_diff"] < 1e-5
    assert metrics["loss_history"][-1] < metrics["loss_history"][0]
    loaded = LearnedPRM.from_pretrained(tmp_path, base_model=module.base, tokenizer=tok)
    assert loaded.score(PROMPTS, TEXTS) == result.prm.score(PROMPTS, TEXTS)
    features = tag_features(loaded, train[:2])
    assert features.shape == (5, module.config.hidden_size)


def test_label_samples_is_seeded_and_keeps_the_global_rng(tiny):
    module, tok, _ = tiny
    problems = [("What is 3 + 4?", "7"), ("Tom has 3 apples.", "3")]
    state = torch.random.get_rng_state()
    a, seconds = label_samples(module.base, tok, problems, samples_per_problem=2, max_new_tokens=6, progress=False)
    assert torch.equal(state, torch.random.get_rng_state()) and seconds >= 0
    b, _ = label_samples(module.base, tok, problems, samples_per_problem=2, max_new_tokens=6, progress=False)
    assert [s.completion for s in a] == [s.completion for s in b] and len(a) == 4
    assert [s.answer for s in a] == ["7", "7", "3", "3"]
    assert all(len(s.steps) == len(s.outcome_labels) == len(s.exact_labels) for s in a)


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_typed_errors_naming_argument_value_and_fix(tiny, tmp_path):
    module, tok, _ = tiny
    with pytest.raises(InvalidDecodingArgument, match=r"`epochs` must be a positive integer, got 0"):
        PRMTrainingConfig(epochs=0)
    with pytest.raises(InvalidDecodingArgument, match=r"`temperature`.*-1"):
        PRMTrainingConfig(temperature=-1.0)
    with pytest.raises(InvalidDecodingArgument, match=r"`directory`.*prm_head.safetensors.*Train one"):
        LearnedPRM.from_pretrained(tmp_path, base_model=module.base, tokenizer=tok)
    with pytest.raises(IncompatibleCheckpointError, match="hidden size 32"):
        LearnedPRM(module.base, torch.nn.Linear(16, 2))
    module.save_pretrained(tmp_path)
    with pytest.raises(InvalidDecodingArgument, match=r"`tokenizer`.*Pass the tokenizer"):
        LearnedPRM.from_pretrained(tmp_path, base_model=module.base)
    other = build_tiny_llama(vocab_size=len(tok))
    other.config.hidden_size = 48  # a base of another width
    with pytest.raises(IncompatibleCheckpointError, match=r"hidden size 48.*Pass that base model"):
        LearnedPRM.from_pretrained(tmp_path, base_model=other, tokenizer=tok)
    with pytest.raises(InvalidDecodingArgument, match="`problems`"):
        label_samples(module.base, tok, [], progress=False)
    all_wrong = [LabelledSample("q", "1", "2", ["2"], False, [0], [0])]
    with pytest.raises(InvalidDecodingArgument, match=r"`train_problems`.*lower `temperature`"):
        train_prm(module.base, tok, [], config=PRMTrainingConfig(step_tag=TAG), train_samples=all_wrong)


def test_cli_registers_prm_train():
    from hf_decoding.cli import build_parser
    from hf_decoding.cli.prm import run

    args = build_parser().parse_args(["prm", "train", "--problems", "3", "--output-dir", "out", "--threads", "1"])
    assert args.handler is run and args.problems == 3 and args.samples_per_problem == 4 and args.threads == 1


# ------------------------------------------------------------------------------------------------ Qwen2.5-Math-PRM layout
def test_process_reward_model_reads_qwen_math_prm_like_token_classifier():
    tok = prm_tokenizer()  # has the `<extra_0>` step token added as a special token
    model = build_qwen_prm_model(tok)
    prm = ProcessRewardModel(model, tok)  # defaults: `<extra_0>`, positive index 1, Qwen's system prompt
    assert prm.tag_id == tok.convert_tokens_to_ids(TAG)
    ids, positions = prm._layout(PROMPTS[1], TEXTS[1].split("\n\n"), whole=False)
    assert [i for i, t in enumerate(ids) if t == prm.tag_id] == positions and len(positions) == 3
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits  # (1, L, num_labels=2)
    assert logits.shape == (1, len(ids), 2)
    expected = logits[0, positions].softmax(-1)[:, 1].tolist()
    assert prm.score([PROMPTS[1]], [TEXTS[1]])[0] == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------------------------ the shipped head
@pytest.mark.real
def test_shipped_smollm2_head_loads_and_scores(smollm2):
    import pathlib

    import hf_decoding

    directory = pathlib.Path(hf_decoding.__file__).parent / "_data" / "prm_smollm2"
    model, tok = smollm2
    prm = LearnedPRM.from_pretrained(directory, base_model=model, tokenizer=tok)
    assert prm.step_tag == "<file_sep>" and (directory / HEAD_FILE).stat().st_size < 100_000
    scores = prm.score(["Tom has 5 apples and buys 3 more. How many apples does Tom have now?"], ["5 + 3 = 8\n\n8"])
    assert len(scores[0]) == 2 and all(0 < s < 1 for s in scores[0])


def test_cli_train_writes_head_and_json_and_reuses_labels_of_an_earlier_shard(tiny, tmp_path, monkeypatch, capsys):
    import json

    from hf_decoding.cli import _common, main
    from hf_decoding.rewards import training

    module, tok, _ = tiny
    calls = []

    def fake_labels(model, tokenizer, problems, *, seed, **options):  # right on even problems, wrong on odd ones
        calls.append(seed)
        return [
            step_labels("3 + 4 = 7\n\nThe answer is 7.", a if i % 2 else "7") for i, (_, a) in enumerate(problems)
        ], 1.0

    monkeypatch.setattr(_common, "load_model", lambda *a, **k: (module.base, tok))
    monkeypatch.setattr(training, "label_samples", fake_labels)
    argv = ["prm", "train", "--problems", "4", "--heldout-problems", "2", "--epochs", "2", "--step-tag", TAG]
    argv += ["--output-dir", str(tmp_path / "head"), "--raw-dir", str(tmp_path / "raw"), "--no-progress"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(calls) == 2 and first["metrics"]["labelling_seconds"] == 2.0
    assert {p.name for p in (tmp_path / "raw").iterdir()} == {
        "labels_train.json",
        "labels_heldout.json",
        "metrics.json",
    }
    assert main(argv) == 0  # a second shard: labels come from --raw-dir, not from sampling
    second = json.loads(capsys.readouterr().out)
    assert len(calls) == 2 and second["metrics"]["heldout"] == first["metrics"]["heldout"]
    assert LearnedPRM.from_pretrained(tmp_path / "head", base_model=module.base, tokenizer=tok).step_tag == TAG
