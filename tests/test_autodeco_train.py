"""AutoDeco training: losses go down, cached == uncached, exact resume, joint LoRA saved with the heads, control."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from conftest import build_tiny_llama

from hf_decoding.autodeco import (
    AutoDecoLossConfig,
    AutoDecoModelForCausalLM,
    AutoDecoTrainingConfig,
    train_heads,
)
from hf_decoding.autodeco.control import ControlConfig, control_ranking_loss, measure_control_consistency, with_phrase
from hf_decoding.autodeco.data import encode_example
from hf_decoding.autodeco.heads import HeadPredictions
from hf_decoding.errors import InvalidDecodingArgument


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and oversubscribed OpenMP threads are very slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class CharTokenizer:
    """A character tokenizer over the tiny Llama's 64 ids (0 pad, 1 bos, 2 eos); no chat template."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, text, add_special_tokens: bool = True, **kwargs):
        ids = [3 + (ord(c) % 61) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


ROWS = [
    {"prompt": [{"role": "user", "content": f"add {a} {b}"}], "completion": str(a + b)}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (9, 9)]
]


def _model(seed: int = 0) -> AutoDecoModelForCausalLM:
    return AutoDecoModelForCausalLM.from_base(build_tiny_llama(), seed=seed, init_temperature=1.0, init_top_p=0.8)


def _config(tmp_path: pathlib.Path, **kwargs) -> AutoDecoTrainingConfig:
    options = {
        "output_dir": str(tmp_path / "out"),
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 3,
        "max_steps": 6,
        "warmup_steps": 0,
        "logging_steps": 1,
        "progress_bar": False,
        "loss": AutoDecoLossConfig(top_k_candidates=16, chunk_size=8),
    }
    options.update(kwargs)
    return AutoDecoTrainingConfig(**options)


def test_encode_example_masks_the_prompt_and_keeps_every_token() -> None:
    tokenizer = CharTokenizer()
    example = encode_example(tokenizer, "ab", "cd")
    assert example.input_ids[0] == 1 and len(example.input_ids) == 1 + 2 + 2 + 1  # bos, prompt, completion, eos
    assert example.labels[:3] == [-100] * 3 and example.labels[-1] == 2
    assert encode_example(tokenizer, "ab", "cd", max_length=4).input_ids == example.input_ids[:4]


def test_training_lowers_the_loss_and_saves(tmp_path: pathlib.Path) -> None:
    model = _model()
    result = train_heads(model, ROWS, CharTokenizer(), _config(tmp_path, max_steps=25))
    losses = [entry["loss"] for entry in result.history]
    assert result.global_step == 25 and len(losses) == 25
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    saved = AutoDecoModelForCausalLM.from_pretrained(tmp_path / "out", base_model=model.llm)
    torch.testing.assert_close(saved.heads.temp_head.mlp[0].weight, model.heads.temp_head.mlp[0].weight)
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert log["num_examples"] == len(ROWS) and log["config"]["loss"]["cumsum"] == "exclusive"
    assert not any(p.requires_grad for p in model.llm.parameters())


def test_cached_and_uncached_base_outputs_agree(tmp_path: pathlib.Path) -> None:
    histories = []
    for cache in (True, False):
        config = _config(tmp_path / str(cache), cache_base_outputs=cache, cache_logits_dtype="float32", max_steps=3)
        histories.append(train_heads(_model(), ROWS, CharTokenizer(), config).history)
    for a, b in zip(*histories, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4


def test_resume_reproduces_an_uninterrupted_run(tmp_path: pathlib.Path) -> None:
    straight = _model()
    train_heads(straight, ROWS, CharTokenizer(), _config(tmp_path / "a", max_steps=6))
    interrupted = _model()
    train_heads(interrupted, ROWS, CharTokenizer(), _config(tmp_path / "b", max_steps=6, save_steps=3))
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    assert (checkpoint / "optimizer.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    resumed = _model()
    result = train_heads(
        resumed, ROWS, CharTokenizer(), _config(tmp_path / "b", max_steps=6, resume_from_checkpoint=True)
    )
    assert result.global_step == 6 and [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    for key, value in straight.heads.state_dict().items():
        torch.testing.assert_close(resumed.heads.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_gradient_accumulation_and_single_head(tmp_path: pathlib.Path) -> None:
    model = _model()
    before = model.heads.top_p_head.mlp[0].weight.clone()
    result = train_heads(
        model,
        ROWS,
        CharTokenizer(),
        _config(tmp_path, max_steps=2, gradient_accumulation_steps=2, train_top_p_head=False),
    )
    assert result.global_step == 2
    assert torch.equal(model.heads.top_p_head.mlp[0].weight, before)
    assert all(entry["top_p_loss"] == 0 for entry in result.history)


def test_joint_lora_is_saved_with_the_heads(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("peft")
    from peft import PeftModel

    model = _model()
    original = {k: v.clone() for k, v in model.llm.state_dict().items()}
    config = _config(tmp_path, max_steps=3, lora_r=2, lora_target_modules=["q_proj", "v_proj"], lora_learning_rate=1e-2)
    train_heads(model, ROWS, CharTokenizer(), config)
    assert isinstance(model.llm, PeftModel)
    out = tmp_path / "out"
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["lora_adapter"] == "lora_adapter"
    adapter = {k: v for k, v in model.llm.state_dict().items() if "lora_B" in k}
    assert any(float(v.abs().sum()) > 0 for v in adapter.values())  # the adapter moved
    fresh = build_tiny_llama()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, original[key])
    loaded = AutoDecoModelForCausalLM.from_pretrained(out, base_model=fresh)
    assert isinstance(loaded.llm, PeftModel)
    ids = torch.tensor([[3, 4, 5, 6]])
    model.eval()
    torch.testing.assert_close(loaded(input_ids=ids).temperature, model(input_ids=ids).temperature)
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(InvalidDecodingArgument, match="cache_base_outputs"):
        train_heads(_model(), ROWS, CharTokenizer(), _config(tmp_path / "x", lora_r=2, cache_base_outputs=True))


def test_control_ranking_loss_and_consistency(tmp_path: pathlib.Path) -> None:
    base = HeadPredictions(torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.8]))
    low = HeadPredictions(torch.tensor([0.3, 0.5]), torch.tensor([0.8, 0.6]))
    high = HeadPredictions(torch.tensor([0.7, 0.7]), torch.tensor([0.9, 0.9]))
    loss = control_ranking_loss(base, low, high, ControlConfig(margin=0.1))
    assert abs(float(loss) - (0.05 + 0.0 + 0.05 + 0.0)) < 1e-6
    assert with_phrase(ROWS[0]["prompt"], "Use low diversity.")[0]["content"] == "add 1 2\nUse low diversity."
    assert ROWS[0]["prompt"][0]["content"] == "add 1 2"

    model = _model()
    control = ControlConfig(margin=0.2, weight=5.0, control_top_p=False)
    result = train_heads(model, ROWS, CharTokenizer(), _config(tmp_path, max_steps=40, control=control))
    assert result.history[-1]["control_loss"] < result.history[0]["control_loss"]
    report = measure_control_consistency(
        model, CharTokenizer(), [r["prompt"] for r in ROWS], [r["completion"] for r in ROWS], control
    )
    assert report.num_prompts == len(ROWS)
    assert report.consistency_temperature["low"] >= 0.75 and report.consistency_temperature["high"] >= 0.75
    assert report.mean_temperature["low"] < report.mean_temperature["base"] < report.mean_temperature["high"]


def test_training_config_validation() -> None:
    with pytest.raises(InvalidDecodingArgument, match="lr_scheduler_type"):
        AutoDecoTrainingConfig(lr_scheduler_type="linear")
    with pytest.raises(InvalidDecodingArgument, match="train_temperature_head"):
        AutoDecoTrainingConfig(train_temperature_head=False, train_top_p_head=False)
    assert AutoDecoTrainingConfig(loss={"cumsum": "inclusive"}).loss.cumsum == "inclusive"
