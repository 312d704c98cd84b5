"""AutoDeco checkpoints: heads-only saving, loading by id, the official layout, mismatches, Hub ids and pushes."""

from __future__ import annotations

import io
import json
import pathlib
import types

import pytest
import torch
from conftest import build_tiny_llama
from safetensors.torch import load, load_file, save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import hf_decoding as hfd
from hf_decoding.autodeco import AutoDecoConfig, AutoDecoModelForCausalLM, register_auto_classes
from hf_decoding.errors import IncompatibleCheckpointError, InvalidDecodingArgument

register_auto_classes()

HEAD_KEYS = {
    "temp_head.mlp.0.weight",
    "temp_head.mlp.0.bias",
    "temp_head.mlp.2.weight",
    "temp_head.mlp.2.bias",
    "top_p_head.mlp.0.weight",
    "top_p_head.mlp.0.bias",
    "top_p_head.mlp.2.weight",
    "top_p_head.mlp.2.bias",
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and oversubscribed OpenMP threads are very slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def base():
    return build_tiny_llama()


@pytest.fixture
def model(base) -> AutoDecoModelForCausalLM:
    return AutoDecoModelForCausalLM.from_base(
        base, base_model_name_or_path="org/tiny-llama", base_model_revision="abc123", seed=4
    )


def _same_heads(a: AutoDecoModelForCausalLM, b: AutoDecoModelForCausalLM) -> bool:
    sa, sb = a.heads.state_dict(), b.heads.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_writes_heads_only(model, tmp_path: pathlib.Path) -> None:
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == HEAD_KEYS  # no base weights
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "autodeco"
    assert config["architectures"] == ["AutoDecoModelForCausalLM"]
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    assert config["base_model_revision"] == "abc123"
    assert config["base_model_type"] == "llama"
    assert config["hidden_size"] == 32
    assert config["hf_decoding_version"]
    assert config["enable_temperature_head"] and config["enable_top_p_head"] and config["use_enhanced_features"]
    card = (tmp_path / "README.md").read_text()
    assert "library_name: hf-decoding" in card and "base_model: org/tiny-llama" in card
    assert "AutoModelForCausalLM.from_pretrained" in card
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["decoding"] == "autodeco" and generation["top_k"] == 0
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    assert size_mb < 5


def test_round_trip_and_auto_class(model, base, tmp_path: pathlib.Path) -> None:
    model.save_pretrained(tmp_path)
    loaded = AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)
    assert _same_heads(model, loaded) and loaded.llm is base
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, base_model=base)
    assert isinstance(auto, AutoDecoModelForCausalLM) and _same_heads(model, auto)
    assert auto.generation_config.decoding == "autodeco"


def test_base_is_loaded_by_id(tmp_path: pathlib.Path) -> None:
    base = build_tiny_llama(seed=7)
    base.save_pretrained(tmp_path / "base")
    model = AutoDecoModelForCausalLM.from_base(base, base_model_name_or_path=str(tmp_path / "base"))
    model.save_pretrained(tmp_path / "heads")
    loaded = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "heads")
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    torch.testing.assert_close(loaded(input_ids=ids).temperature, model(input_ids=ids).temperature)


def test_safe_serialization_is_required(model, tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidDecodingArgument, match="safetensors"):
        model.save_pretrained(tmp_path, safe_serialization=False)


# --------------------------------------------------------------------------------------------------------------------
# The official heads-only layout
# --------------------------------------------------------------------------------------------------------------------


def _official_checkpoint(
    directory: pathlib.Path,
    hidden: int = 32,
    filename: str = "autodeco_heads.safetensors",
    base_model_type: str = "llama",
    drop: str | None = None,
) -> dict[str, torch.Tensor]:
    """Writes a checkpoint the way the official `templlm_auto.py` does (config = base keys + head keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "autodeco",
        "architectures": ["AutoDecoModelForCausalLM"],
        "base_model_name_or_path": "/mnt/training-machine/Llama-tiny",
        "base_model_type": base_model_type,
        "enable_temperature_head": True,
        "enable_top_p_head": True,
        "use_enhanced_features": True,
        "temperature_hidden_size": hidden,
        "top_p_hidden_size": hidden,
        "hidden_size": hidden,
        "vocab_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "rms_norm_eps": 1e-6,
        "transformers_version": "4.56.1",
    }
    (directory / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(11)
    state = {
        "temp_head.mlp.0.weight": torch.randn(256, hidden, generator=generator) * 0.1,
        "temp_head.mlp.0.bias": torch.randn(256, generator=generator) * 0.1,
        "temp_head.mlp.2.weight": torch.randn(1, 256, generator=generator) * 0.1,
        "temp_head.mlp.2.bias": torch.randn(1, generator=generator) * 0.1,
        "top_p_head.mlp.0.weight": torch.randn(256, hidden + 5, generator=generator) * 0.1,
        "top_p_head.mlp.0.bias": torch.randn(256, generator=generator) * 0.1,
        "top_p_head.mlp.2.weight": torch.randn(1, 256, generator=generator) * 0.1,
        "top_p_head.mlp.2.bias": torch.randn(1, generator=generator) * 0.1,
    }
    if drop:
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
    save_file(state, str(directory / filename))
    return state


def _official_predictions(state: dict[str, torch.Tensor], hidden: torch.Tensor, logits: torch.Tensor):
    """The official TempHead / TopPHead forward, written out."""

    def mlp(prefix: str, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x @ state[f"{prefix}.mlp.0.weight"].T + state[f"{prefix}.mlp.0.bias"])
        return torch.sigmoid(x @ state[f"{prefix}.mlp.2.weight"].T + state[f"{prefix}.mlp.2.bias"])

    t = mlp("temp_head", hidden) * 2  # (N, 1)
    probs = torch.softmax(logits / (t + 1e-8), dim=-1)
    stats = torch.cat(
        [
            probs.max(-1, keepdim=True)[0],
            -(probs * torch.log(probs + 1e-8)).sum(-1, keepdim=True),
            probs.var(-1, keepdim=True),
            torch.topk(probs, 5, -1)[0].sum(-1, keepdim=True),
        ],
        -1,
    )
    p = mlp("top_p_head", torch.cat([hidden, t, stats], -1))
    return t.squeeze(-1), p.squeeze(-1)


@pytest.mark.parametrize("filename", ["autodeco_heads.safetensors", "model.safetensors"])
def test_reads_the_official_layout(base, tmp_path: pathlib.Path, filename: str) -> None:
    state = _official_checkpoint(tmp_path, filename=filename)
    model = AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)
    assert model.config.is_official_layout
    hidden, logits = torch.randn(5, 32), torch.randn(5, 64) * 3
    t, p = _official_predictions(state, hidden, logits)
    predictions = model.heads(hidden, logits)
    torch.testing.assert_close(predictions.temperature, t)
    torch.testing.assert_close(predictions.top_p, p)
    ids = torch.tensor([[3, 4, 5, 6]])
    out = model.generate(input_ids=ids, max_new_tokens=3, seed=0, return_dict_in_generate=True)
    assert out.autodeco.temperature.shape == (1, out.sequences.shape[1] - 4)


def test_official_checkpoint_with_dead_base_path_needs_a_base(tmp_path: pathlib.Path) -> None:
    _official_checkpoint(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="base_model="):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path)


def test_hidden_size_mismatch(tmp_path: pathlib.Path) -> None:
    _official_checkpoint(tmp_path, hidden=48)
    with pytest.raises(IncompatibleCheckpointError, match="hidden size 48"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=build_tiny_llama())


def test_architecture_mismatch(base, tmp_path: pathlib.Path) -> None:
    _official_checkpoint(tmp_path, base_model_type="qwen2")
    with pytest.raises(IncompatibleCheckpointError, match="qwen2"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)


def test_tensor_shape_mismatch_and_missing_tensors(base, tmp_path: pathlib.Path) -> None:
    state = _official_checkpoint(tmp_path / "a")
    state["temp_head.mlp.0.weight"] = torch.zeros(256, 31)
    save_file(state, str(tmp_path / "a" / "autodeco_heads.safetensors"))
    with pytest.raises(IncompatibleCheckpointError, match="shape"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "a", base_model=base)
    _official_checkpoint(tmp_path / "b", drop="top_p_head")
    with pytest.raises(IncompatibleCheckpointError, match="enable_top_p_head"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "b", base_model=base)


def test_only_safetensors_are_read(base, tmp_path: pathlib.Path) -> None:
    _official_checkpoint(tmp_path)
    (tmp_path / "autodeco_heads.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(IncompatibleCheckpointError, match="No AutoDeco head tensors"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)


def test_merged_sharded_checkpoint(base, tmp_path: pathlib.Path) -> None:
    state = _official_checkpoint(tmp_path, filename="model-00002-of-00002.safetensors")
    save_file({"llm.lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00002-of-00002.safetensors" for k in state}
    weight_map["llm.lm_head.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)
    torch.testing.assert_close(model.heads.temp_head.mlp[0].weight, state["temp_head.mlp.0.weight"])


# --------------------------------------------------------------------------------------------------------------------
# Hub: loading by repo id from the cache, pushing with the client mocked at its HTTP boundary
# --------------------------------------------------------------------------------------------------------------------


def test_from_pretrained_with_a_hub_id(model, base, tmp_path: pathlib.Path) -> None:
    model.save_pretrained(tmp_path / "src")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--autodeco-tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in (tmp_path / "src").iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = AutoDecoModelForCausalLM.from_pretrained(
        "org/autodeco-tiny", base_model=base, cache_dir=str(tmp_path / "hub"), local_files_only=True
    )
    assert _same_heads(model, loaded)


def test_push_to_hub_uploads_heads_only(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    uploaded: dict[str, bytes] = {}
    calls: dict[str, object] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return types.SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        calls["create_commit"] = (repo_id, kwargs)
        for operation in operations:
            source = operation.path_or_fileobj
            uploaded[operation.path_in_repo] = (
                source if isinstance(source, bytes) else pathlib.Path(source).read_bytes()
            )
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/x")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    info = model.push_to_hub("me/autodeco-tiny", private=True)
    assert info.commit_url.endswith("/commit/x")
    assert calls["create_repo"] == ("me/autodeco-tiny", {"private": True, "exist_ok": True})
    assert sorted(uploaded) == ["README.md", "config.json", "generation_config.json", "model.safetensors"]
    assert set(load(uploaded["model.safetensors"])) == HEAD_KEYS
    assert 'from_pretrained("me/autodeco-tiny")' in uploaded["README.md"].decode()
    assert json.load(io.BytesIO(uploaded["config.json"]))["base_model_name_or_path"] == "org/tiny-llama"


def test_config_validation() -> None:
    with pytest.raises(InvalidDecodingArgument, match="min_top_p"):
        AutoDecoConfig(hidden_size=8, min_top_p=2.0)
    assert AutoDecoConfig(temperature_hidden_size=16).hidden_size == 16


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_weights_are_an_incompatible_checkpoint(model, base, tmp_path: pathlib.Path, damage: str) -> None:
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a safetensors file")
    with pytest.raises(IncompatibleCheckpointError, match=r"model\.safetensors.*corrupted or truncated.*Fix"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path, base_model=base)


@pytest.mark.parametrize("where", ["absolute", "relative", "home"])
def test_missing_directory_says_the_path_is_missing(base, tmp_path: pathlib.Path, where: str) -> None:
    path = {"absolute": str(tmp_path / "nowhere"), "relative": "./runs/nowhere", "home": "~/nowhere/heads"}[where]
    with pytest.raises(InvalidDecodingArgument, match=r"pretrained_model_name_or_path.*No directory .*nowhere"):
        AutoDecoModelForCausalLM.from_pretrained(path, base_model=base)


def test_a_file_is_not_a_checkpoint_directory(model, base, tmp_path: pathlib.Path) -> None:
    model.save_pretrained(tmp_path)
    with pytest.raises(InvalidDecodingArgument, match="It is a file"):
        AutoDecoModelForCausalLM.from_pretrained(tmp_path / "model.safetensors", base_model=base)


def test_unreachable_hub_id_names_both_places(base, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IncompatibleCheckpointError, match=r"no directory .*org/heads.* exists here and the Hub"):
        AutoDecoModelForCausalLM.from_pretrained("org/heads", base_model=base, local_files_only=True)


def test_custom_generate_checks_heads_against_the_base(base) -> None:
    config = build_tiny_llama().config
    config.hidden_size, config.intermediate_size = 64, 128
    wide = AutoDecoModelForCausalLM.from_base(LlamaForCausalLM(config).eval(), seed=0)  # heads of hidden size 64
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    for given in (wide.heads, wide):
        with pytest.raises(IncompatibleCheckpointError, match=r"hidden size 64.*hidden size 32"):
            base.generate(**inputs, custom_generate=hfd.decoders.autodeco, autodeco_heads=given, max_new_tokens=2)
