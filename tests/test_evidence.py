"""The evidence harness (issue 24): problem splits, the sample pool and its selection rules, bootstrap intervals,
step-method records, shard files that resume, and the summary."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_decoding.eval import evidence
from hf_decoding.eval.bootstrap import bootstrap_mean, paired_bootstrap
from hf_decoding.eval.pool import draw_pool, generated_lengths, pass_at_k, pool_accuracy, select_answer
from hf_decoding.eval.problems import EvalProblem, make_split, parse_spec
from hf_decoding.eval.report import pool_rows, write_report
from hf_decoding.eval.sampling import meanshift_setting, parse_sampling_unit
from hf_decoding.eval.search import expand_methods, parse_method, run_search
from hf_decoding.eval.shards import load_units, parse_range, shard_path, split_range, write_shard
from hf_decoding.rewards import ArithmeticStepVerifier
from hf_decoding.rewards.base import split_steps

CORPUS = ["Tom has 5 apples and buys 3 more. The answer is 8.\n", "3 + 5 = 8\n\n12 - 4 = 8", "0 1 2 3 4 5 6 7 8 9"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.padding_side = "left"
    fast.chat_template = "{% for m in messages %}<s>{{ m['content'] }}\n{% endfor %}"
    return fast


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    model = build_tiny_llama(seed=3, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def word_problems(count: int) -> list[EvalProblem]:
    return make_split("test", count, ["word@1"])


# ----------------------------------------------------------------------------------------------------- problems
def test_splits_are_deterministic_prefix_stable_interleaved_and_disjoint():
    specs = ["word@1", "word@2"]
    test = make_split("test", 12, specs)
    assert test == make_split("test", 12, specs)
    assert make_split("test", 5, specs) == test[:5]
    assert [p.family + str(p.level) for p in test[:4]] == ["word1", "word2", "word1", "word2"]
    assert test[2].id == "test/word@1/1"
    assert len({p.question for p in test}) == 12
    dev = make_split("dev", 300, specs)
    assert not {p.question for p in dev} & {p.question for p in test}
    # gold answers are normalised numbers that the answer parser reproduces
    for p in test:
        assert p.answer == str(int(p.answer))


def test_parse_spec_validates_family_and_level():
    assert parse_spec("chain_sum@3") == ("chain_sum", 3)
    assert parse_spec("gsm_symbolic") == ("gsm_symbolic", 1)
    with pytest.raises(ValueError, match="unknown problem family"):
        parse_spec("algebra@1")
    with pytest.raises(ValueError, match="not in"):
        parse_spec("word@7")


def test_reasoning_gym_chain_sum_answers_are_right():
    pytest.importorskip("reasoning_gym")
    problems = make_split("test", 6, ["chain_sum@4"])
    for p in problems:
        expression = p.question.rsplit(":", 1)[1].strip().rstrip("=")
        assert str(eval(expression)) == p.answer  # three one-digit terms with + and -


# -------------------------------------------------------------------------------------------- selection rules
def test_pass_at_k_matches_the_closed_form():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(16, 4, 2) == pytest.approx(1 - math.comb(12, 2) / math.comb(16, 2))
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def _record(answers, scores, gold="8"):
    samples = [
        {"answer": a, "correct": a == gold, "tokens": 10, "verifier": s} for a, s in zip(answers, scores, strict=True)
    ]
    return {"id": "p", "gold": gold, "samples": samples}


def test_select_answer_rules():
    record = _record(["8", "7", "7", "9"], [0.9, 0.5, 0.5, 0.1])
    samples = record["samples"]
    assert select_answer("best_of_n", samples, "verifier") == "8"
    assert select_answer("self_consistency", samples) == "7"
    assert select_answer("weighted_best_of_n", samples, "verifier") == "7"  # 1.0 > 0.9
    samples[0]["verifier"] = 1.2
    assert select_answer("weighted_best_of_n", samples, "verifier") == "8"
    with pytest.raises(ValueError):
        select_answer("best_of_n", samples)


def test_pool_accuracy_expectations_over_subsets():
    # one correct sample with the top score among 4
    record = _record(["8", "1", "2", "3"], [0.9, 0.1, 0.2, 0.3])
    assert pool_accuracy(record, "best_of_n", 4, "verifier") == 1.0
    # size 1: every rule returns a uniformly drawn sample's answer, expected accuracy 1/4
    for rule in ("best_of_n", "self_consistency"):
        value = pool_accuracy(record, rule, 1, "verifier", draws=4000)
        assert abs(value - 0.25) < 0.03
    # size 2: best-of-2 is right iff the correct sample is in the subset: 1 - C(3,2)/C(4,2) = 0.5
    assert abs(pool_accuracy(record, "best_of_n", 2, "verifier", draws=4000) - 0.5) < 0.03
    assert pool_accuracy(record, "pass_at_k", 2) == pytest.approx(0.5)
    # common random subsets: at N = 1 every rule returns the same sampled answer, so all rules agree exactly
    mixed = _record(["8", "8", "2", "3", "8", "5"], [0.1, 0.7, 0.9, 0.3, 0.2, 0.4])
    for size in (1,):
        values = {pool_accuracy(mixed, r, size, "verifier", draws=16) for r in ("best_of_n", "weighted_best_of_n",
                                                                                 "self_consistency")}  # fmt: skip
        assert len(values) == 1
    # seeded: the same call gives the same value
    assert pool_accuracy(record, "self_consistency", 3, draws=10, seed=1) == pool_accuracy(
        record, "self_consistency", 3, draws=10, seed=1
    )


def test_pool_rows_compute_and_best_of_n_monotone_with_a_perfect_reward():
    records = [
        _record(["8", "1", "2", "3"], [0.9, 0.1, 0.2, 0.3]),
        {**_record(["5", "5", "4", "4"], [0.2, 0.2, 0.8, 0.8], gold="4"), "id": "q"},
    ]
    rows = pool_rows(records, draws=500, resamples=200)
    bon = {r["n"]: r for r in rows if r["method"] == "best_of_n"}
    assert bon[4]["accuracy"]["estimate"] == 1.0
    assert bon[1]["accuracy"]["estimate"] < bon[2]["accuracy"]["estimate"] < bon[4]["accuracy"]["estimate"]
    assert bon[3]["compute_per_problem"] == pytest.approx(3 * 10 + 3)
    sc = next(r for r in rows if r["method"] == "self_consistency" and r["n"] == 2)
    assert sc["compute_per_problem"] == pytest.approx(20)


# ------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_on_known_data():
    constant = bootstrap_mean([0.5] * 30, resamples=500)
    assert (constant.estimate, constant.low, constant.high) == (0.5, 0.5, 0.5)
    same = paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], resamples=500)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # 100 problems, a = b + 1 on 20 of them: a Binomial-like difference of mean 0.2 with sd sqrt(.2*.8/100) = 0.04
    b = np.zeros(100)
    a = b.copy()
    a[:20] = 1
    diff = paired_bootstrap(a, b, resamples=20_000, seed=3)
    assert diff.estimate == pytest.approx(0.2)
    assert diff.low == pytest.approx(0.2 - 1.96 * 0.04, abs=0.015)
    assert diff.high == pytest.approx(0.2 + 1.96 * 0.04, abs=0.015)
    assert diff.excludes_zero()
    assert paired_bootstrap(a, b, resamples=500, seed=1) == paired_bootstrap(a, b, resamples=500, seed=1)


def test_paired_interval_is_narrower_than_unpaired_when_methods_agree():
    rng = np.random.default_rng(0)
    b = (rng.random(200) < 0.4).astype(float)
    a = b.copy()
    a[rng.choice(200, 6, replace=False)] = 1.0
    paired = paired_bootstrap(a, b, resamples=5000)
    wa, wb = bootstrap_mean(a, resamples=5000), bootstrap_mean(b, resamples=5000)
    assert paired.high - paired.low < 0.5 * ((wa.high - wa.low) + (wb.high - wb.low)) / 2
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap([1, 0], [1])


# ----------------------------------------------------------------------------------------------------- shards
def test_ranges_and_shard_names():
    assert parse_range("0:50") == (0, 50)
    for bad in ("5:5", "a:b", "10", "-1:3"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert split_range(0, 25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert shard_path("d", "particle_filter:prm:8", 0, 10).name == "particle_filter_prm_8__0-10.json"


def test_load_units_merges_ranges_and_rejects_mixed_configs(tmp_path):
    for a, b in ((0, 2), (2, 4)):
        records = [{"id": f"test/x/{i}", "correct": True} for i in range(a, b)]
        write_shard(shard_path(tmp_path, "dvts:prm:4", a, b), {"unit": "dvts:prm:4", "range": [a, b],
                                                                "config": {"seed": 0}, "records": records})  # fmt: skip
    units = load_units(tmp_path)
    assert units["dvts:prm:4"]["ranges"] == [[0, 2], [2, 4]]
    assert len(units["dvts:prm:4"]["records"]) == 4
    assert not list(tmp_path.glob("*.tmp"))
    write_shard(shard_path(tmp_path, "dvts:prm:4", 4, 6), {"unit": "dvts:prm:4", "range": [4, 6],
                                                           "config": {"seed": 1}, "records": []})  # fmt: skip
    with pytest.raises(ValueError, match="another config"):
        load_units(tmp_path)


def test_expand_methods():
    assert expand_methods(["dvts:prm"]) == ["dvts:prm:4", "dvts:prm:8"]
    assert len(expand_methods(["pool", "steps", "pool"])) == 1 + 2 * (3 + 3 + 2 + 2)
    assert parse_method("particle_gibbs:verifier:16") == ("particle_gibbs", "verifier", 16)
    for bad in ("particle_filter:oracle:4", "sample:prm:4", "dvts"):
        with pytest.raises(ValueError):
            parse_method(bad)


# ------------------------------------------------------------------------------------------ tiny-model runs
def test_generated_lengths_stop_at_first_eos():
    seqs = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert generated_lengths(seqs, [2]) == [2, 4, 1]


def test_draw_pool_is_seeded_per_problem_and_consistent(tiny):
    model, tok = tiny
    problems = word_problems(2)
    verifier = ArithmeticStepVerifier(step_delimiter="\n")
    kwargs = {"pool_size": 4, "max_new_tokens": 6, "step_delimiter": "\n"}
    both = draw_pool(model, tok, problems, {"verifier": verifier}, **kwargs)
    alone = draw_pool(model, tok, problems[1:], {"verifier": verifier}, **kwargs)
    strip = lambda rec: [{k: v for k, v in s.items()} for s in rec["samples"]]  # noqa: E731
    assert strip(both[1]) == strip(alone[0])  # the shard a problem lands in does not change its samples
    other_seed = draw_pool(model, tok, problems[1:], {"verifier": verifier}, seed=1, **kwargs)
    assert [s["text"] for s in other_seed[0]["samples"]] != [s["text"] for s in alone[0]["samples"]]
    for record, problem in zip(both, problems, strict=True):
        assert record["gold"] == problem.answer and len(record["samples"]) == 4
        for s in record["samples"]:
            assert 1 <= s["tokens"] <= 6
            assert s["correct"] == (s["answer"] == problem.answer)
            assert len(s["verifier_steps"]) == len(split_steps(s["text"], "\n"))
            assert s["verifier"] == pytest.approx(verifier.score_whole([""], [s["text"]])[0], abs=1e-5)


def test_run_search_records_cost(tiny):
    model, tok = tiny
    problems = word_problems(2)
    verifier = ArithmeticStepVerifier(step_delimiter="\n")
    first = run_search(model, tok, problems, "particle_filter:verifier:4", verifier, max_new_tokens=6)
    again = run_search(model, tok, problems, "particle_filter:verifier:4", verifier, max_new_tokens=6)
    assert [r["text"] for r in first] == [r["text"] for r in again]
    for r, p in zip(first, problems, strict=True):
        assert r["id"] == p.id
        assert r["compute"] == r["cost"]["generated_tokens"] + r["cost"]["reward_calls"]
        assert 0 < r["cost"]["generated_tokens"] <= 4 * 6
        assert r["cost"]["reward_calls"] >= 4
    beam = run_search(model, tok, problems[:1], "beam_search_prm:verifier:4", verifier, max_new_tokens=6)
    assert beam[0]["cost"]["generated_tokens"] > 0


def test_run_search_batches_problems_and_shares_their_cost(tiny):
    model, tok = tiny
    problems = word_problems(3)
    verifier = ArithmeticStepVerifier(step_delimiter="\n")
    kwargs = {"max_new_tokens": 6, "batch_problems": 2}
    first = run_search(model, tok, problems, "particle_filter:verifier:4", verifier, **kwargs)
    again = run_search(model, tok, problems, "particle_filter:verifier:4", verifier, **kwargs)
    assert [r["id"] for r in first] == [p.id for p in problems]
    assert [r["text"] for r in first] == [r["text"] for r in again]
    # the two problems of the first call share its cost (totals / 2); the third ran alone
    assert first[0]["batch"] == first[1]["batch"] == 2 and "batch" not in first[2]
    assert first[0]["cost"] == first[1]["cost"] and first[0]["compute"] == first[1]["compute"]
    assert first[0]["cost"]["reward_calls"] >= 4 and isinstance(first[2]["cost"]["generated_tokens"], int)
    for r, p in zip(first, problems, strict=True):
        assert r["correct"] == (r["answer"] == p.answer)
    with pytest.raises(ValueError, match="batch_problems"):
        run_search(model, tok, problems, "particle_filter:verifier:4", verifier, batch_problems=0)


def test_sampling_units_and_meanshift_setting():
    assert parse_sampling_unit("sampling:vendor") == "vendor"
    for bad in ("sampling:nope", "vendor", "pool"):
        with pytest.raises(ValueError, match="sampling:<setting>"):
            parse_sampling_unit(bad)
    assert evidence.expand_units(["autodeco", "pool"])[-2:] == ["sampling:meanshift", "pool"]
    records = [
        {"applied": {"temperature": 0.5, "top_p": 0.9, "tokens": 30}},
        {"applied": {"temperature": 1.0, "top_p": 0.8, "tokens": 10}},
    ]
    # token-weighted: (0.5 * 30 + 1.0 * 10) / 40
    assert meanshift_setting(records) == {"do_sample": True, "temperature": 0.625, "top_p": 0.875}
    with pytest.raises(ValueError, match="sampling:autodeco"):
        meanshift_setting([{"applied": {"temperature": 1.0, "top_p": 1.0, "tokens": 0}}])


def test_cli_sampling_units_run_autodeco_and_its_baselines(tiny, tmp_path, monkeypatch):
    from hf_decoding.autodeco import AutoDecoModelForCausalLM, defaults

    model, tok = tiny
    monkeypatch.setattr(evidence, "_load", lambda args: (model, tok))
    monkeypatch.setattr(
        defaults, "load_default_autodeco", lambda name, base_model, tokenizer: (
            AutoDecoModelForCausalLM.from_base(base_model, init_temperature=0.7, init_top_p=0.9, seed=1), tokenizer)
    )  # fmt: skip
    common = ["--specs", "word@1", "--out-dir", str(tmp_path), "--max-new-tokens", "5", "--samples", "2",
              "--batch-problems", "2", "--shard-size", "2"]  # fmt: skip
    # meanshift alone has no autodeco records to take its mean from
    with pytest.raises(ValueError, match="run sampling:autodeco over that range first"):
        evidence.main(["run", *common, "--problem-range", "0:3", "--methods", "sampling:meanshift"])
    assert evidence.main(["run", *common, "--problem-range", "0:3", "--methods", "autodeco"]) == 0
    units = load_units(tmp_path)
    assert sorted(units) == [f"sampling:{s}" for s in ("autodeco", "default", "greedy", "meanshift", "vendor")]
    assert all(sorted(e["records"]) == [p.id for p in word_problems(3)] for e in units.values())
    greedy = units["sampling:greedy"]["records"]
    assert all(len(r["samples"]) == 1 for r in greedy.values())
    auto = list(units["sampling:autodeco"]["records"].values())
    assert all(len(r["samples"]) == 2 and r["applied"]["tokens"] > 0 for r in auto)
    assert units["sampling:meanshift"]["config"]["setting"] == meanshift_setting(auto)
    assert units["sampling:vendor"]["config"]["setting"] == {"do_sample": True, "temperature": 0.2, "top_p": 0.9}
    gold = {p.id: p.answer for p in word_problems(3)}
    for entry in units.values():
        for r in entry["records"].values():
            assert all(s["correct"] == (s["answer"] == gold[r["id"]]) for s in r["samples"])
    document = write_report(tmp_path, tmp_path / "out" / "summary.json", resamples=200, draws=8)
    rows = {r["setting"]: r for r in document["sampling_rows"]}
    assert set(rows) == {"autodeco", "default", "greedy", "meanshift", "vendor"}
    assert rows["greedy"]["pass1"] == rows["greedy"]["pass4"]  # one completion: pass@k is pass@1
    assert set(rows["autodeco"]["vs"]) == {"greedy", "vendor", "meanshift"}
    assert "vs" not in rows["greedy"] or "greedy" not in rows["greedy"]["vs"]
    assert "| autodeco | 3 |" in (tmp_path / "out" / "autodeco.md").read_text()
    assert (tmp_path / "out" / "autodeco.png").stat().st_size > 0


def test_cli_run_writes_shards_resumes_and_summarizes(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    loads = []

    def fake_load(args):
        loads.append(args.threads)
        return model, tok

    monkeypatch.setattr(evidence, "_load", fake_load)
    monkeypatch.setattr(
        evidence, "_rewards", lambda m, t, args, names: {n: ArithmeticStepVerifier(step_delimiter="\n") for n in names}
    )
    argv = ["run", "--specs", "word@1", "--out-dir", str(tmp_path), "--max-new-tokens", "5", "--pool-size", "4",
            "--problem-range", "0:3", "--shard-size", "2", "--methods", "pool", "dvts:verifier:4"]  # fmt: skip
    assert evidence.main(argv) == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["dvts_verifier_4__0-2.json", "dvts_verifier_4__2-3.json", "pool__0-2.json", "pool__2-3.json"]
    assert loads == [1]
    assert evidence.main(argv) == 0  # everything exists: skipped without loading a model
    assert loads == [1]
    (tmp_path / "pool__2-3.json").unlink()
    evidence.main(argv)
    assert loads == [1, 1] and (tmp_path / "pool__2-3.json").exists()
    shard = json.loads((tmp_path / "pool__0-2.json").read_text())
    assert shard["range"] == [0, 2] and [r["id"] for r in shard["records"]] == ["test/word@1/0", "test/word@1/1"]
    document = write_report(tmp_path, tmp_path / "out" / "summary.json", resamples=200, draws=8)
    rows = document["rows"]
    dvts_row = next(r for r in rows if r["method"] == "dvts")
    assert dvts_row["problems"] == 3 and dvts_row["vs_best_of_n"]["vs"] == "best_of_n:verifier:4"
    assert "vs_best_of_n_equal_compute" in dvts_row
    assert (tmp_path / "out" / "summary.md").read_text().count("\n") > 4
    assert (tmp_path / "out" / "evidence_verifier.png").stat().st_size > 0
