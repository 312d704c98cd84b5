"""Smoke-runs every script in examples/ on the offline SmolLM2 (the `real` marker)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "distortion_tracker", "custom_decoder"}


@pytest.mark.real
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, smollm2, capsys):
    module = _load(path)
    module.main()
    printed = capsys.readouterr().out
    assert printed.strip(), f"{path.name} printed nothing"
    if path.stem == "quickstart":
        # the distortion-aware nucleus prints a constant -log(0.9) per step
        assert "0.1054" in printed
    if path.stem == "custom_decoder":
        assert "sample_then_greedy" in printed
