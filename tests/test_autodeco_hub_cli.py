"""AutoDeco Hub mirror (`custom_generate/` from a local directory), data tools, evaluation helpers and the CLI."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import types

import pytest
import torch
from conftest import build_tiny_llama

from hf_decoding.autodeco import AutoDecoModelForCausalLM, register_auto_classes
from hf_decoding.autodeco.data import (
    ArithmeticTask,
    PromptPrefix,
    WordProblemTask,
    extract_answer,
    get_task,
    read_jsonl,
    write_jsonl,
)
from hf_decoding.autodeco.eval import pass_at_k
from hf_decoding.autodeco.hub import export_custom_generate
from hf_decoding.decoders.autodeco import autodeco
from hf_decoding.errors import InvalidDecodingArgument

register_auto_classes()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and oversubscribed OpenMP threads are very slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------------------
# custom_generate/ export
# --------------------------------------------------------------------------------------------------------------------


def test_custom_generate_folder_runs_without_the_package(tmp_path: pathlib.Path, prompt) -> None:
    model = AutoDecoModelForCausalLM.from_base(build_tiny_llama(), seed=2, base_model_name_or_path="org/tiny")
    folder = export_custom_generate(model, tmp_path / "repo")
    assert (folder / "custom_generate" / "generate.py").is_file()
    requirements = (folder / "custom_generate" / "requirements.txt").read_text()
    assert "transformers>=5.17" in requirements and "safetensors" in requirements
    card = (folder / "README.md").read_text()
    assert "- custom_generate" in card and "custom_generate=" in card
    source = (folder / "custom_generate" / "generate.py").read_text()
    assert "hf_decoding" not in source.split('"""', 2)[2]  # standalone: no import of this package
    assert f"HEADS_SOURCE = {str(folder)!r}" in source

    plain = build_tiny_llama()  # a fresh base, as a user without hf-decoding would have
    kwargs = {"max_new_tokens": 6, "do_sample": True, "top_k": 0, "temperature": 0.9}
    torch.manual_seed(0)
    hub = plain.generate(**prompt, custom_generate=str(folder), trust_remote_code=True, **kwargs)
    torch.manual_seed(0)
    ours = plain.generate(**prompt, custom_generate=autodeco, autodeco_heads=model.heads, **kwargs)
    assert torch.equal(hub, ours)
    out = plain.generate(
        **prompt, custom_generate=str(folder), trust_remote_code=True, return_dict_in_generate=True, **kwargs
    )
    assert out["autodeco_temperature"].shape == (3, out.sequences.shape[1] - prompt["input_ids"].shape[1])
    with pytest.raises(ValueError, match="trust_remote_code"):
        plain.generate(**prompt, custom_generate=str(folder), trust_remote_code=False, max_new_tokens=2)


def test_export_from_a_saved_directory(tmp_path: pathlib.Path) -> None:
    model = AutoDecoModelForCausalLM.from_base(build_tiny_llama())
    model.save_pretrained(tmp_path / "heads")
    folder = export_custom_generate(tmp_path / "heads", tmp_path / "repo", repo_id="me/heads")
    assert "HEADS_SOURCE = 'me/heads'" in (folder / "custom_generate" / "generate.py").read_text()
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("14 + 15 = 29", "29"),
        ("5 * 7 = 35\n\nIn this case 3", "35"),
        ("The answer is 80.", "80"),
        ("\\boxed{1,024} or 3", "1024"),
        ("no number", None),
        ("-4", "-4"),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def test_tasks_are_seeded() -> None:
    a, b = ArithmeticTask().generate(20, seed=3), ArithmeticTask().generate(20, seed=3)
    assert [p.messages for p in a] == [p.messages for p in b]
    assert [p.messages for p in a] != [p.messages for p in ArithmeticTask().generate(20, seed=4)]
    for problem in a:
        x, y, op = problem.meta["a"], problem.meta["b"], problem.meta["op"]
        assert int(problem.answer) == {"+": x + y, "-": x - y, "*": x * y}[op] and int(problem.answer) >= 0
        assert problem.score(f"{x} {op} {y} = {problem.answer}")
    assert len(WordProblemTask().generate(5, seed=0)) == 5
    with pytest.raises(InvalidDecodingArgument, match="task"):
        get_task("gsm8k")


def test_reasoning_gym_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("reasoning_gym")
    fake.create_dataset = lambda name, size, seed, **kw: [
        {"question": f"{name} q{i}", "answer": str(i + seed)} for i in range(size)
    ]
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
    problems = get_task("reasoning_gym:basic_arithmetic").generate(3, seed=10)
    assert [p.answer for p in problems] == ["10", "11", "12"]
    assert problems[0].messages[0]["content"].startswith("basic_arithmetic q0")


def test_jsonl_round_trip_and_validation(tmp_path: pathlib.Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "x"}], "completion": "1"}]
    assert write_jsonl(tmp_path / "d.jsonl", rows) == 1
    assert read_jsonl(tmp_path / "d.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(InvalidDecodingArgument, match="completion"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_prompt_prefix_cache_matches_plain_generation(prompt) -> None:
    base = build_tiny_llama()
    prefix = PromptPrefix(base, prompt["input_ids"], prompt["attention_mask"])
    reused = base.generate(**prefix.inputs(2), max_new_tokens=5, do_sample=False)
    plain = base.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(reused[::2], plain) and torch.equal(reused[1::2], plain)
    again = base.generate(**prefix.inputs(1), max_new_tokens=5, do_sample=False)  # the cache is not consumed
    assert torch.equal(again, plain)


def test_pass_at_k() -> None:
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert abs(pass_at_k(4, 1, 1) - 0.25) < 1e-12
    assert abs(pass_at_k(4, 1, 2) - 0.5) < 1e-12  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0


# --------------------------------------------------------------------------------------------------------------------
# CLI, end to end on a tiny model with a real tokenizer
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, smollm2) -> pathlib.Path:
    tokenizer = smollm2[1]  # a real tokenizer (SmolLM2's) on a tiny random model
    directory = tmp_path_factory.mktemp("tiny")
    model = build_tiny_llama(vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    from hf_decoding.cli.autodeco import add_parser, run

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["autodeco", *argv, "--json"])
    assert run(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.real
def test_cli_workflow(
    tiny_dir: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    common = ["--model", str(tiny_dir), "--no-progress"]
    stats = _cli(
        [
            "build-data",
            *common,
            "--num-problems",
            "4",
            "--samples-per-problem",
            "2",
            "--max-new-tokens",
            "3",
            "--output",
            str(tmp_path / "built.jsonl"),
        ],
        capsys,
    )
    assert stats["samples"] == 8 and (tmp_path / "built.jsonl").is_file()
    # The random tiny model solves nothing; train on hand-written rows instead.
    rows = [{"prompt": p.messages, "completion": p.answer} for p in ArithmeticTask().generate(6, seed=5)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    result = _cli(
        [
            "train",
            *common,
            "--data",
            str(tmp_path / "train.jsonl"),
            "--output-dir",
            str(tmp_path / "heads"),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--learning-rate",
            "1e-2",
            "--base-id",
            "org/tiny",
            "--init-temperature",
            "0.7",
            "--init-top-p",
            "0.9",
        ],
        capsys,
    )
    assert result["global_step"] == 3 and (tmp_path / "heads" / "model.safetensors").is_file()
    _cli(
        [
            "train",
            *common,
            "--data",
            str(tmp_path / "train.jsonl"),
            "--output-dir",
            str(tmp_path / "control"),
            "--heads",
            str(tmp_path / "heads"),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--control",
        ],
        capsys,
    )
    eval_argv = [
        "eval",
        *common,
        "--heads",
        str(tmp_path / "heads"),
        "--num-problems",
        "3",
        "--seeds",
        "0",
        "1",
        "--num-samples",
        "2",
        "--k",
        "2",
        "--max-new-tokens",
        "3",
        "--grid-temperatures",
        "0.5",
        "1.0",
        "--grid-top-ps",
        "0.9",
        "--exclude-data",
        str(tmp_path / "train.jsonl"),
        "--control-heads",
        str(tmp_path / "control"),
        "--control-prompts",
        "3",
        "--output-md",
        str(tmp_path / "table.md"),
        "--checkpoint",
        str(tmp_path / "runs.json"),
    ]
    report = _cli(eval_argv, capsys)
    names = [m["name"] for m in report["methods"]]
    assert names[0] == "greedy" and names[-1] == "AutoDeco" and any(n.startswith("MeanShift") for n in names)
    assert all(len(m["pass1"]) == 2 for m in report["methods"])
    assert report["methods"][-1]["applied"]["tokens"] > 0
    assert len(report["grid"]) == 3 and set(report["nll"]) >= {"default (T=1)", "AutoDeco (T̂ per token)"}
    assert set(report["control"]) == {"heads", "control_heads"}
    assert "| AutoDeco |" in (tmp_path / "table.md").read_text()
    # A rerun with the same checkpoint file reuses every finished run (nothing is generated again).
    import hf_decoding.autodeco.eval as eval_module

    def no_generation(*args, **kwargs):
        raise AssertionError("a stored run was generated again")

    monkeypatch.setattr(eval_module, "_run", no_generation)
    again = _cli(eval_argv, capsys)
    assert [m["pass1"] for m in again["methods"]] == [m["pass1"] for m in report["methods"]]
    monkeypatch.undo()
    exported = _cli(
        ["export-custom-generate", "--heads", str(tmp_path / "heads"), "--output", str(tmp_path / "repo")], capsys
    )
    assert "custom_generate/generate.py" in exported["files"]
    merged = _cli(
        ["export-vllm", str(tmp_path / "heads"), str(tmp_path / "vllm"), "--base-model", str(tiny_dir), "--json"],
        capsys,
    )
    config = json.loads((tmp_path / "vllm" / "config.json").read_text())
    assert config["model_type"] == "autodeco" and config["architectures"] == ["AutoDecoModelForCausalLM"]
    from safetensors import safe_open

    names = set()
    for file in merged["files"]:
        if file.endswith(".safetensors"):
            with safe_open(str(tmp_path / "vllm" / file), "pt") as handle:
                names |= set(handle.keys())
    assert any(n.startswith("llm.") for n in names)
    assert any(n.startswith("temp_head.") for n in names) and any(n.startswith("top_p_head.") for n in names)


def test_autodeco_is_a_subcommand_of_the_main_cli() -> None:
    from hf_decoding.cli import build_parser

    args = build_parser().parse_args(["autodeco", "train", "--data", "d.jsonl", "--output-dir", "out"])
    assert args.command == "autodeco" and args.autodeco_action == "train" and callable(args.handler)
