"""Tests for the `hf-decoding` command: `main([...])` called directly, output captured with capsys."""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import pytest
from conftest import EOS, PAD, VOCAB, build_tiny_llama

from hf_decoding.cli import analyze as analyze_cli
from hf_decoding.cli import error_line, main
from hf_decoding.cli._common import parse_set

SUBCOMMANDS = [["demo"], ["generate"], ["env"], ["analyze"], ["analyze", "distortion"]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny random Llama and a 64-token word-level tokenizer (`t4 ... t63`) saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama().save_pretrained(path)
    vocab = {"<pad>": PAD, "<s>": 1, "</s>": EOS, "<unk>": 3, **{f"t{i}": i for i in range(4, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(path)
    assert list(path.glob("*.safetensors"))
    return path


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)


# --------------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *SUBCOMMANDS], ids=lambda c: " ".join(c) or "top")
def test_help_exits_zero(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hf-decoding" in capsys.readouterr().out


def test_top_level_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("demo", "generate", "analyze", "autodeco", "diffusion", "detect", "env"):
        assert name in out


def test_analyze_lists_its_analyses_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = capsys.readouterr().out
    for name in ("distortion", "embeddings", "convergence"):
        assert name in out
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "no-such-analysis"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", [[], ["analyze"]])
def test_missing_subcommand_prints_help_and_returns_2(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 2
    assert "usage: hf-decoding" in capsys.readouterr().err


def test_parse_set_reads_json_values() -> None:
    assert parse_set("top_k=0") == ("top_k", 0)
    assert parse_set("temperature=0.7") == ("temperature", 0.7)
    assert parse_set('stop_strings=["\\n"]') == ("stop_strings", ["\n"])
    assert parse_set("do_sample=true") == ("do_sample", True)
    assert parse_set("cache_implementation=static") == ("cache_implementation", "static")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_set("no-equals-sign")


def test_error_line_joins_lines() -> None:
    assert error_line(ValueError("first\n  second\n\nthird")) == "first second third"


# --------------------------------------------------------------------------------------------------------------------
# env
# --------------------------------------------------------------------------------------------------------------------


def test_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, ["env", "--json"])
    assert "sample" in report["decoders"] and "distortion_aware_nucleus" in report["decoders"]
    assert report["packages"]["torch"] and report["packages"]["transformers"]
    for name in ("hf_decoding", "safetensors", "huggingface_hub", "accelerate", "peft", "gguf", "matplotlib"):
        assert name in report["packages"]
    assert isinstance(report["cuda"]["available"], bool)
    assert {m["name"] for m in report["models"]} == {"gemma-3-270m", "smollm2-135m-instruct"}
    assert all(isinstance(m["cached"], bool) for m in report["models"])


def test_env_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "decoders:" in out and "smollm2-135m-instruct" in out


# --------------------------------------------------------------------------------------------------------------------
# generate (tiny random model saved to a directory)
# --------------------------------------------------------------------------------------------------------------------


def test_generate_json_on_local_dir(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "generate",
        "--model",
        str(tiny_dir),
        "--prompt",
        "t5 t6 t7",
        "--prompt",
        "t8 t9",
        "--decoding",
        "sample",
        "--do-sample",
        "--top-k",
        "0",
        "--top-p",
        "0.6",
        "--seed",
        "0",
        "--max-new-tokens",
        "5",
        "--json",
    ]
    document = run_json(capsys, argv)
    assert document["decoding"] == "sample"
    assert document["generate_kwargs"]["top_p"] == 0.6 and document["generate_kwargs"]["seed"] == 0
    assert [row["prompt"] for row in document["sequences"]] == ["t5 t6 t7", "t8 t9"]
    for row in document["sequences"]:
        assert 1 <= row["num_new_tokens"] <= 5
        assert isinstance(row["text"], str)
        steps = row["distortion"]["per_step"]
        assert len(steps) == row["num_new_tokens"]
        assert all(step >= -1e-6 for step in steps)
        assert row["distortion"]["total"] == pytest.approx(sum(steps), abs=1e-4)
        assert row["distortion"]["total"] > 0  # top-p 0.6 truncates
    assert document["cost"]["forward_passes"] >= 1 and "total" in document["cost"]["seconds"]


def test_generate_is_seeded(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "generate",
        "--model",
        str(tiny_dir),
        "--prompt",
        "t5 t6",
        "--do-sample",
        "--top-k",
        "0",
        "--seed",
        "3",
        "--max-new-tokens",
        "6",
        "--json",
    ]
    first = run_json(capsys, argv)["sequences"]
    second = run_json(capsys, argv)["sequences"]
    assert first == second


def test_generate_distortion_aware_nucleus_and_set(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = run_json(
        capsys,
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--prompt",
            "t5 t6 t7",
            "--prompt",
            "t10",
            "--decoding",
            "distortion_aware_nucleus",
            "--do-sample",
            "--top-k",
            "0",
            "--top-p",
            "0.8",
            "--max-new-tokens",
            "4",
            "--set",
            "min_new_tokens=4",
            "--set",
            "temperature=1.0",
            "--json",
        ],
    )
    assert document["generate_kwargs"]["min_new_tokens"] == 4
    for row in document["sequences"]:
        assert row["num_new_tokens"] == 4
        assert row["distortion"]["per_step"] == pytest.approx([-math.log(0.8)] * 4, abs=1e-5)


def test_generate_num_return_sequences_maps_rows_to_prompts(
    tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_json(
        capsys,
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--prompt",
            "t5",
            "--prompt",
            "t6",
            "--do-sample",
            "--seed",
            "0",
            "--max-new-tokens",
            "3",
            "--set",
            "num_return_sequences=2",
            "--json",
        ],
    )
    assert [row["prompt_index"] for row in document["sequences"]] == [0, 0, 1, 1]


def test_generate_text_output(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "t5 t6", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "prompt: t5 t6" in out and "total distortion" in out and "forward passes" in out


def test_unknown_decoding_exits_2(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", str(tiny_dir), "--prompt", "t5", "--decoding", "no_such_method"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "Unknown decoding method" in captured.err and "no_such_method" in captured.err
    assert "sample" in captured.err


def test_invalid_generate_argument_exits_2(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", str(tiny_dir), "--prompt", "t5", "--do-sample", "--top-p", "1.5"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-decoding: error:")]
    assert len(errors) == 1 and "`top_p`" in errors[0] and "1.5" in errors[0]


def test_chat_without_template_exits_2(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "t5", "--chat"]) == 2
    assert "chat template" in capsys.readouterr().err


def test_unknown_model_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", "no-such-model-xyz", "--prompt", "hi"]) == 2
    assert "no-such-model-xyz" in capsys.readouterr().err


def test_bad_set_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "hi", "--set", "novalue"])
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# analyze distortion
# --------------------------------------------------------------------------------------------------------------------


def test_analyze_distortion_on_local_dir(
    tiny_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_json(
        capsys,
        [
            "analyze",
            "distortion",
            "--model",
            str(tiny_dir),
            "--prompt",
            "t5 t6",
            "--prompt",
            "t7 t8 t9",
            "--target-mass",
            "0.65",
            "0.88",
            "--num-samples",
            "4",
            "--max-new-tokens",
            "4",
            "--num-contexts",
            "16",
            "--no-progress",
            "--plot",
            str(tmp_path),
            "--json",
        ],
    )
    assert len(document["table"]) == 2 * 4
    nucleus = [row for row in document["table"] if row["strategy"] == "distortion_aware_nucleus"]
    assert all(row["distortion_std"] < 1e-5 for row in nucleus)
    assert pathlib.Path(document["plot"]).is_file()
    assert pathlib.Path(document["quality_diversity_plot"]).name.startswith("quality_diversity_")
    assert pathlib.Path(document["quality_diversity_plot"]).is_file()


def test_analyze_distortion_text_table(tiny_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "analyze",
            "distortion",
            "--model",
            str(tiny_dir),
            "--prompt",
            "t5 t6",
            "--strategies",
            "top_k",
            "top_p",
            "--num-samples",
            "2",
            "--max-new-tokens",
            "3",
            "--num-contexts",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "top_k" in out and "top_p" in out and "ratio p10" in out


def test_analyze_plot_without_matplotlib_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = analyze_cli.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "matplotlib" else real_find_spec(name, *args)

    monkeypatch.setattr(analyze_cli.importlib.util, "find_spec", find_spec)
    assert main(["analyze", "distortion", "--plot", str(tmp_path)]) == 2
    assert 'pip install "hf-decoding[plot]"' in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Real model (SmolLM2-135M-Instruct)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.real
def test_demo_json(smollm2: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    document = run_json(capsys, ["demo", "--max-new-tokens", "8", "--seed", "0", "--json"])
    names = [entry["name"] for entry in document["strategies"]]
    assert names == ["greedy", "sample", "top-k 40", "top-p 0.9", "distortion-aware nucleus 0.9"]
    for entry in document["strategies"]:
        assert len(entry["completions"]) == 3
        assert entry["tokens_per_second"] > 0
        assert all(c["text"] for c in entry["completions"])
    greedy, sample = document["strategies"][0], document["strategies"][1]
    assert all(c["total_distortion"] == 0 for c in greedy["completions"] + sample["completions"])
    nucleus = document["strategies"][-1]["completions"]
    full = [c for c in nucleus if c["num_new_tokens"] == 8]
    for completion in full:  # rows that ran all 8 steps: exactly 8 * -log(0.9)
        assert completion["total_distortion"] == pytest.approx(-8 * math.log(0.9), abs=1e-4)
    # AutoDeco with the shipped heads: one (T, top-p) per generated token, in the heads' ranges.
    for row in document["autodeco"]["rows"]:
        assert len(row["tokens"]) == len(row["temperature"]) == len(row["top_p"]) >= 1
        assert all(0.01 <= t <= 2.0 for t in row["temperature"]) and all(0 < p <= 1 for p in row["top_p"])
    # The particle filter with the shipped PRM: N weights, an ESS per step, a cost that counts PRM calls.
    particles = document["particle_filter"]
    assert len(particles["log_weights"]) == len(particles["answers"]) == particles["num_particles"] == 4
    assert len(particles["ess_per_step"]) >= 1 and all(0 < e <= 4 + 1e-6 for e in particles["ess_per_step"])
    assert 0 <= particles["selected"] < 4 and particles["cost"]["reward_calls"] >= 1
    assert set(particles["resampled_at_steps"]) <= set(range(len(particles["ess_per_step"])))


@pytest.mark.real
def test_analyze_distortion_real(smollm2: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    document = run_json(
        capsys,
        [
            "analyze",
            "distortion",
            "--num-samples",
            "4",
            "--max-new-tokens",
            "8",
            "--num-contexts",
            "16",
            "--prompt",
            "Tell me a story.",
            "--no-progress",
            "--json",
        ],
    )
    rows = {row["strategy"]: row for row in document["table"]}
    assert set(rows) == {"top_k", "top_p", "temperature", "distortion_aware_nucleus"}
    assert rows["distortion_aware_nucleus"]["distortion_std"] < 1e-4
    assert rows["distortion_aware_nucleus"]["distortion_mean"] == pytest.approx(-8 * math.log(0.88), abs=1e-3)
    assert 1 <= rows["top_k"]["parameter"] <= 49152
