r"""Training the AutoDeco heads: frozen base (optionally with a jointly trained LoRA), accelerate-aware.

```python
from hf_decoding.autodeco import AutoDecoModelForCausalLM, AutoDecoTrainingConfig, train_heads
model = AutoDecoModelForCausalLM.from_base(base, init_temperature=1.0, init_top_p=0.9)
result = train_heads(model, "train.jsonl", tokenizer, AutoDecoTrainingConfig(output_dir="heads", max_steps=300))
```

Multi-GPU and mixed precision come from `accelerate`: `accelerate launch -m hf_decoding autodeco train ...`
(or `accelerate launch your_script.py`) runs data-parallel with the heads (and LoRA) in DDP; `mixed_precision="bf16"`
runs the base and the losses under autocast.

What is trained: only the heads (and the LoRA adapter when `lora_r > 0`); every base parameter is frozen. When the
base is frozen, its hidden states and logits at the supervised positions never change, so by default
(`cache_base_outputs="auto"`) they are computed once and kept (logits in float16 if they fit `max_cache_gb`):
each step then costs only the heads and the losses. Data order, easy-token masks and checkpoints are all derived
from `seed` and the step number, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import invalid_argument
from .control import ControlConfig, control_ranking_loss, with_phrase
from .data import EncodedExample, encode_example, read_jsonl
from .heads import HeadPredictions
from .losses import AutoDecoLossConfig, chunked_autodeco_loss
from .modeling import AutoDecoModelForCausalLM, base_hidden_states, logits_from_hidden

__all__ = ["AutoDecoTrainingConfig", "TrainingResult", "train_heads"]

logger = logging.getLogger(__name__)

_STATE_FILE = "trainer_state.json"
_OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass
class AutoDecoTrainingConfig:
    """Options of [`train_heads`] (and of `hf-decoding autodeco train`).

    Args:
        output_dir (`str`): where the final heads and the checkpoints go.
        learning_rate (`float`, *optional*, defaults to 1e-4): AdamW learning rate of the heads (the paper uses
            5e-6 with ~1k steps on 7B-235B models; small heads trained for a few hundred steps need more).
        num_train_epochs (`float`, *optional*, defaults to 1.0): epochs when `max_steps` is unset.
        max_steps (`int`, *optional*): optimizer steps (overrides `num_train_epochs`).
        per_device_train_batch_size (`int`, *optional*, defaults to 8): examples per micro-batch and device.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1): micro-batches per optimizer step.
        max_length (`int`, *optional*, defaults to 2048): tokens per example (the completion end is cut).
        warmup_steps (`int`, *optional*, defaults to 20): linear warmup.
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`): `"cosine"` or `"constant"`.
        min_lr_ratio (`float`, *optional*, defaults to 0.0): final learning rate of the cosine, as a ratio.
        weight_decay (`float`, *optional*, defaults to 0.0): AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to 1.0): gradient clipping.
        mixed_precision (`str`, *optional*, defaults to `"no"`): `"no"`, `"bf16"` or `"fp16"` (accelerate).
        seed (`int`, *optional*, defaults to 0): data order and easy-token masks.
        save_steps (`int`, *optional*): checkpoint every this many steps into `output_dir/checkpoint-<step>`.
        save_total_limit (`int`, *optional*, defaults to 2): checkpoints kept.
        logging_steps (`int`, *optional*, defaults to 10): log the losses every this many steps.
        resume_from_checkpoint (`str` or `bool`, *optional*): a checkpoint directory, or `True` for the latest one
            in `output_dir`.
        train_temperature_head (`bool`), train_top_p_head (`bool`): which heads (and losses) to train.
        loss ([`AutoDecoLossConfig`]): loss options.
        lora_r (`int`, *optional*, defaults to 0): rank of a LoRA adapter of the base trained jointly (0: none).
        lora_alpha (`int`), lora_target_modules (`list[str]`): LoRA options (peft; no dropout: the base and its
            adapter run in eval mode, so cached and recomputed outputs agree).
        lora_learning_rate (`float`, *optional*): learning rate of the adapter (defaults to `learning_rate`).
        cache_base_outputs (`bool` or `"auto"`, *optional*, defaults to `"auto"`): compute the frozen base's
            hidden states (and logits) at the supervised positions once; never with LoRA.
        cache_logits_dtype (`str`, *optional*, defaults to `"float16"`): storage dtype of cached logits.
        max_cache_gb (`float`, *optional*, defaults to 4.0): cached logits above this size are recomputed from the
            cached hidden states instead.
        control ([`ControlConfig`], *optional*): add the natural-language control ranking loss.
        progress_bar (`bool`, *optional*, defaults to `True`): show tqdm bars.
    """

    output_dir: str = "autodeco-heads"
    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    max_steps: int | None = None
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    warmup_steps: int = 20
    lr_scheduler_type: str = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    save_steps: int | None = None
    save_total_limit: int | None = 2
    logging_steps: int = 10
    resume_from_checkpoint: str | bool | None = None
    train_temperature_head: bool = True
    train_top_p_head: bool = True
    loss: AutoDecoLossConfig = field(default_factory=AutoDecoLossConfig)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None
    lora_learning_rate: float | None = None
    cache_base_outputs: bool | str = "auto"
    cache_logits_dtype: str = "float16"
    max_cache_gb: float = 4.0
    control: ControlConfig | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = AutoDecoLossConfig(**self.loss)
        if isinstance(self.control, dict):
            self.control = ControlConfig(**self.control)
        if self.lr_scheduler_type not in ("cosine", "constant"):
            raise invalid_argument("lr_scheduler_type", self.lr_scheduler_type, "'cosine' or 'constant'")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise invalid_argument("mixed_precision", self.mixed_precision, "'no', 'bf16' or 'fp16'")
        if self.cache_base_outputs not in (True, False, "auto"):
            raise invalid_argument("cache_base_outputs", self.cache_base_outputs, "True, False or 'auto'")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) < 1:
                raise invalid_argument(name, getattr(self, name), "a positive integer")
        if self.max_steps is not None and self.max_steps < 1:
            raise invalid_argument("max_steps", self.max_steps, "a positive integer or None")
        if not (self.train_temperature_head or self.train_top_p_head):
            raise invalid_argument("train_temperature_head", False, "True when train_top_p_head is False")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingResult:
    """What [`train_heads`] did.

    Args:
        global_step (`int`): optimizer steps done (including resumed ones).
        history (`list[dict]`): logged losses (`step`, `loss`, `temperature_loss`, `top_p_loss`, `control_loss`, `lr`).
        output_dir (`str`): where the final heads were saved.
        num_examples (`int`), num_positions (`int`): training examples and supervised positions.
        seconds (`float`): wall time of this call.
    """

    global_step: int
    history: list[dict[str, float]]
    output_dir: str
    num_examples: int
    num_positions: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# Supervised positions
# --------------------------------------------------------------------------------------------------------------------


def _pad(examples: Sequence[EncodedExample], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):  # right padding: positions of real tokens are unaffected
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids.to(device), mask.to(device), labels.to(device)


class _Positions:
    """Hidden states, labels and logits at the supervised positions of a list of examples.

    Either computed from the base at every request (`precompute=False`; needed when a LoRA adapter trains), or once
    up front (`precompute=True`): hidden states `(N, H)` in float32 and, if they fit `max_cache_bytes`, logits `(N, V)`
    in `logits_dtype` (else recomputed from the cached hidden states by the LM head).
    """

    def __init__(
        self,
        model: AutoDecoModelForCausalLM,
        examples: Sequence[EncodedExample],
        pad_id: int,
        device: torch.device,
        precompute: bool,
        logits_dtype: torch.dtype,
        max_cache_bytes: float,
        batch_size: int,
        progress: bool,
        desc: str = "caching base outputs",
    ):
        self.model = model
        self.examples = list(examples)
        self.pad_id = pad_id
        self.device = device
        self.precompute = precompute
        self.counts = [sum(1 for y in e.labels[1:] if y != -100) for e in self.examples]
        self.offsets = [0]
        for count in self.counts:
            self.offsets.append(self.offsets[-1] + count)
        self.hidden: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        if precompute:
            self._build(logits_dtype, max_cache_bytes, batch_size, progress, desc)

    @property
    def num_positions(self) -> int:
        return self.offsets[-1]

    @torch.no_grad()
    def _build(self, dtype: torch.dtype, max_bytes: float, batch_size: int, progress: bool, desc: str) -> None:
        base = self.model.llm
        vocab = base.get_output_embeddings().weight.shape[0]
        keep_logits = self.num_positions * vocab * torch.empty((), dtype=dtype).element_size() <= max_bytes
        hidden, logits, labels = [], [], []
        starts = range(0, len(self.examples), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress):
            h, y = self._compute(range(start, min(start + batch_size, len(self.examples))))
            hidden.append(h.float().cpu())
            labels.append(y.cpu())
            if keep_logits:
                logits.append(logits_from_hidden(base, h).to(dtype).cpu())
        self.hidden = torch.cat(hidden)  # (N, H)
        self.labels = torch.cat(labels)  # (N,)
        self.logits = torch.cat(logits) if keep_logits else None  # (N, V)
        logger.info(
            "Cached %d supervised positions (hidden states%s).",
            self.num_positions,
            f" and {dtype} logits" if keep_logits else "; logits recomputed",
        )

    def _compute(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, labels = _pad([self.examples[i] for i in indices], self.pad_id, self.device)
        hidden = base_hidden_states(self.model.llm, ids, mask)[:, :-1]  # (B, L-1, H)
        targets = labels[:, 1:]
        selected = targets != -100
        return hidden[selected], targets[selected]  # (N, H), (N,)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """`(hidden (N, H), labels (N,), logits_fn)` for the examples `indices`, in that order."""
        base = self.model.llm
        if not self.precompute:
            hidden, labels = self._compute(indices)

            def computed_logits(h: torch.Tensor, positions: slice) -> torch.Tensor:
                return logits_from_hidden(base, h)

            return hidden, labels, computed_logits
        rows = torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])
        hidden = self.hidden[rows].to(self.device)
        labels = self.labels[rows].to(self.device)
        if self.logits is None:

            def recomputed_logits(h: torch.Tensor, positions: slice) -> torch.Tensor:
                with torch.no_grad():
                    return logits_from_hidden(base, h)

            return hidden, labels, recomputed_logits
        logits = self.logits[rows]

        def cached_logits(h: torch.Tensor, positions: slice) -> torch.Tensor:
            return logits[positions].to(self.device, torch.float32)

        return hidden, labels, cached_logits


def _predict(heads: nn.Module, hidden: torch.Tensor, logits_fn: Any, chunk: int) -> HeadPredictions:
    temperature, top_p = [], []
    for start in range(0, hidden.shape[0], chunk):
        positions = slice(start, min(start + chunk, hidden.shape[0]))
        h = hidden[positions]
        predictions = heads(h, logits_fn(h, positions))
        temperature.append(predictions.temperature)
        top_p.append(predictions.top_p)
    return HeadPredictions(torch.cat(temperature), torch.cat(top_p))


class _Trainee(nn.Module):
    """The module accelerate prepares (DDP wraps it): its forward returns the losses of a batch of examples."""

    def __init__(
        self,
        model: AutoDecoModelForCausalLM,
        config: AutoDecoTrainingConfig,
        positions: _Positions,
        control: tuple[_Positions, _Positions] | None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.positions = positions
        self.control = control

    def forward(self, indices: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        config = self.config
        heads = self.model.heads
        hidden, labels, logits_fn = self.positions.get(indices)
        uniform = torch.rand(labels.shape[0], generator=generator).to(hidden.device)
        losses = chunked_autodeco_loss(
            heads,
            hidden,
            labels,
            logits_fn,
            config.loss,
            uniform,
            config.train_temperature_head,
            config.train_top_p_head,
        )
        out = {"loss": losses.loss, "temperature_loss": losses.temperature_loss, "top_p_loss": losses.top_p_loss}
        if self.control is not None and config.control is not None:
            low_positions, high_positions = self.control
            chunk = config.loss.chunk_size
            base_pred = _predict(heads, hidden, logits_fn, chunk)
            low_pred = _predict(heads, *_without_labels(low_positions.get(indices)), chunk)
            high_pred = _predict(heads, *_without_labels(high_positions.get(indices)), chunk)
            control_loss = control_ranking_loss(base_pred, low_pred, high_pred, config.control)
            out["control_loss"] = control_loss
            out["loss"] = out["loss"] + config.control.weight * control_loss
        return out


def _without_labels(item: tuple[torch.Tensor, torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
    return item[0], item[2]


# --------------------------------------------------------------------------------------------------------------------
# Optimizer state as safetensors
# --------------------------------------------------------------------------------------------------------------------


def _save_optimizer(optimizer: torch.optim.Optimizer, directory: str) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, os.path.join(directory, _OPTIMIZER_FILE))
    with open(os.path.join(directory, "optimizer.json"), "w", encoding="utf-8") as handle:
        json.dump({"param_groups": state["param_groups"], "scalars": scalars}, handle)


def _load_optimizer(optimizer: torch.optim.Optimizer, directory: str) -> None:
    tensors = load_file(os.path.join(directory, _OPTIMIZER_FILE))
    with open(os.path.join(directory, "optimizer.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _latest_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    found = [
        (int(name.split("-")[-1]), os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if name.startswith("checkpoint-")
        and name.split("-")[-1].isdigit()
        and os.path.isfile(os.path.join(output_dir, name, _STATE_FILE))
    ]
    return max(found)[1] if found else None


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def _load_rows(train_data: Any) -> list[dict[str, Any]]:
    if isinstance(train_data, (str, os.PathLike)):
        return read_jsonl(train_data)
    rows = list(train_data)
    for row in rows:
        if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
            raise invalid_argument("train_data", row, "rows with `prompt` and `completion`")
    return rows


def _attach_lora(model: AutoDecoModelForCausalLM, config: AutoDecoTrainingConfig) -> None:
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is an optional extra
        raise ImportError('Joint LoRA training needs peft: pip install "hf-decoding[train]"') from err
    if isinstance(model.llm, PeftModel):
        return
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model.llm = get_peft_model(model.llm, lora)


def _schedule(config: AutoDecoTrainingConfig, total_steps: int) -> Any:
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def train_heads(
    model: AutoDecoModelForCausalLM,
    train_data: str | os.PathLike[str] | Sequence[dict[str, Any]],
    tokenizer: Any,
    config: AutoDecoTrainingConfig | None = None,
) -> TrainingResult:
    r"""Trains the AutoDeco heads of `model` on prompt/completion data.

    Args:
        model ([`AutoDecoModelForCausalLM`]): the wrapper; its base is frozen (and gets a LoRA adapter when
            `config.lora_r > 0`, saved with the heads).
        train_data (`str`, `os.PathLike` or `Sequence[dict]`): a JSONL path or rows `{"prompt": messages | str,
            "completion": str}` (e.g. from [`build_rejection_sampled_data`]).
        tokenizer: the base's tokenizer.
        config ([`AutoDecoTrainingConfig`], *optional*): training options.

    Returns:
        [`TrainingResult`]. The final heads are saved to `config.output_dir` (loadable with
        `AutoDecoModelForCausalLM.from_pretrained(output_dir, base_model=...)`), with `training_log.json`.
    """
    from accelerate import Accelerator

    config = config or AutoDecoTrainingConfig()
    started = time.perf_counter()
    rows = _load_rows(train_data)
    if not rows:
        raise invalid_argument("train_data", "no rows", "at least one prompt/completion row")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
    )
    device = accelerator.device
    model.to(device)
    for parameter in model.llm.parameters():
        parameter.requires_grad_(False)
    if config.lora_r:
        _attach_lora(model, config)
    model.llm.eval()  # deterministic base (and adapter): no dropout
    for name, parameter in model.heads.named_parameters():
        trains = config.train_temperature_head if name.startswith("temp_head.") else config.train_top_p_head
        parameter.requires_grad_(trains)

    examples = [
        encode_example(
            tokenizer, r["prompt"], r["completion"], config.max_length, add_eos=not r.get("truncated", False)
        )
        for r in rows
    ]
    keep = [i for i, e in enumerate(examples) if any(y != -100 for y in e.labels[1:])]
    examples = [examples[i] for i in keep]
    rows = [rows[i] for i in keep]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    precompute = config.cache_base_outputs
    if precompute == "auto":
        precompute = not config.lora_r
    if precompute and config.lora_r:
        raise invalid_argument("cache_base_outputs", True, "False when lora_r > 0 (the base changes while training)")
    logits_dtype = getattr(torch, config.cache_logits_dtype)
    max_bytes = config.max_cache_gb * 2**30
    batch = config.per_device_train_batch_size
    # How every `_Positions` (the examples and each control variant) batches and caches.
    caching = (pad_id, device, bool(precompute), logits_dtype, max_bytes, batch)
    show_progress = config.progress_bar and accelerator.is_local_main_process
    positions = _Positions(model, examples, *caching, show_progress)
    control = None
    if config.control is not None:
        variants = []
        for phrase in (config.control.low_phrase, config.control.high_phrase):
            encoded = [
                encode_example(
                    tokenizer,
                    with_phrase(r["prompt"], phrase),
                    r["completion"],
                    config.max_length,
                    add_eos=not r.get("truncated", False),
                )
                for r in rows
            ]
            for base_example, variant in zip(examples, encoded, strict=True):
                if sum(y != -100 for y in variant.labels[1:]) != sum(y != -100 for y in base_example.labels[1:]):
                    raise invalid_argument(
                        "max_length", config.max_length, "large enough to keep whole completions with the commands"
                    )
            variants.append(_Positions(model, encoded, *caching, show_progress, desc=f"caching '{phrase}'"))
        control = (variants[0], variants[1])

    trainee = _Trainee(model, config, positions, control)
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": config.learning_rate}]
    lora_params = [p for p in model.llm.parameters() if p.requires_grad]
    if lora_params:
        groups.append({"params": lora_params, "lr": config.lora_learning_rate or config.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    world = accelerator.num_processes
    per_process = math.ceil(len(examples) / world)
    batches_per_epoch = max(1, math.ceil(per_process / batch))
    total_steps = config.max_steps or max(
        1, math.ceil(config.num_train_epochs * batches_per_epoch / config.gradient_accumulation_steps)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    trainee, optimizer = accelerator.prepare(trainee, optimizer)

    start_step, history = 0, []
    resume = config.resume_from_checkpoint
    if resume is True:
        resume = _latest_checkpoint(config.output_dir)
    if resume:
        start_step, history = _resume(model, optimizer, scheduler, resume)
        logger.info("Resumed from %s at step %d.", resume, start_step)

    def batch_indices(micro: int) -> list[int]:
        epoch, within = divmod(micro, batches_per_epoch)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
        shard = order[accelerator.process_index :: world]
        return shard[within * batch : (within + 1) * batch] or shard[:batch]

    trainee.train()
    model.llm.eval()
    step = start_step
    micro = start_step * config.gradient_accumulation_steps
    window: list[dict[str, float]] = []
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="autodeco train",
        disable=not (config.progress_bar and accelerator.is_local_main_process),
    )
    while step < total_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro)
        with accelerator.accumulate(trainee):
            out = trainee(batch_indices(micro), generator)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        micro += 1
        window.append({k: float(v.detach()) for k, v in out.items()})
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        step += 1
        bar.update(1)
        if step % config.logging_steps == 0 or step == total_steps:
            entry = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            entry.update(step=step, lr=scheduler.get_last_lr()[0])
            history.append(entry)
            window = []
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            logger.info("step %d: %s", step, {k: round(v, 5) for k, v in entry.items()})
        if config.save_steps and step % config.save_steps == 0 and step < total_steps:
            _save_checkpoint(accelerator, model, optimizer, scheduler, config, step, history)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, "training_log.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "config": _jsonable(config.to_dict()),
                    "history": history,
                    "num_examples": len(examples),
                    "num_positions": positions.num_positions,
                },
                handle,
                indent=2,
            )
    model.eval()
    return TrainingResult(
        global_step=step,
        history=history,
        output_dir=config.output_dir,
        num_examples=len(examples),
        num_positions=positions.num_positions,
        seconds=time.perf_counter() - started,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _save_checkpoint(
    accelerator: Any,
    model: AutoDecoModelForCausalLM,
    optimizer: Any,
    scheduler: Any,
    config: AutoDecoTrainingConfig,
    step: int,
    history: list[dict[str, float]],
) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    directory = os.path.join(config.output_dir, f"checkpoint-{step}")
    model.save_pretrained(directory, model_card=False)
    _save_optimizer(optimizer, directory)
    state = {
        "global_step": step,
        "history": history,
        "scheduler": scheduler.state_dict(),
        "config": _jsonable(config.to_dict()),
    }
    with open(os.path.join(directory, _STATE_FILE), "w", encoding="utf-8") as handle:
        json.dump(_jsonable(state), handle, indent=2)
    if config.save_total_limit:
        found = sorted(
            (int(n.split("-")[-1]), n)
            for n in os.listdir(config.output_dir)
            if n.startswith("checkpoint-") and n.split("-")[-1].isdigit()
        )
        for _, name in found[: max(0, len(found) - config.save_total_limit)]:
            shutil.rmtree(os.path.join(config.output_dir, name), ignore_errors=True)


def _resume(
    model: AutoDecoModelForCausalLM, optimizer: Any, scheduler: Any, directory: str
) -> tuple[int, list[dict[str, float]]]:
    with open(os.path.join(directory, _STATE_FILE), encoding="utf-8") as handle:
        state = json.load(handle)
    model.heads.load_head_state(load_file(os.path.join(directory, "model.safetensors")), source=directory)
    adapter = os.path.join(directory, "lora_adapter", "adapter_model.safetensors")
    if os.path.isfile(adapter):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.llm, load_file(adapter))
    _load_optimizer(optimizer, directory)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["global_step"]), list(state.get("history", []))
