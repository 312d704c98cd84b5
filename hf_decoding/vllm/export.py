"""`export_for_vllm`: an AutoDeco model as one merged checkpoint that stock vLLM serves (`LLM(model=out_dir)`).

The layout is the official merged one (`merge_autodeco.py merge`): the base model's tensors under `llm.`, the head
tensors `temp_head.mlp.{0,2}.*` / `top_p_head.mlp.{0,2}.*`, and a `config.json` that is the base model's config plus
the AutoDeco keys, with `model_type: autodeco` and `architectures: ["AutoDecoModelForCausalLM"]`. The tokenizer files,
and a generation config sampling at `temperature=1, top_p=1, top_k=0` (the heads' raw predictions), sit beside them.
vLLM then needs the `hf_decoding` plugin (installed with hf-decoding) to know the architecture.

Needs neither vLLM nor a GPU: export on any machine, serve on another.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import torch
from safetensors.torch import save_file

from ..autodeco.config import package_version
from ..autodeco.modeling import AutoDecoModelForCausalLM
from ..errors import invalid_argument
from .config import AUTODECO_KEYS

__all__ = ["TOKENIZER_FILES", "export_for_vllm"]

#: Files copied from the heads directory and the base model's directory when they exist (the first found wins).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
_ARCHITECTURE = "AutoDecoModelForCausalLM"
_INDEX_NAME = "model.safetensors.index.json"


def export_for_vllm(
    heads_dir_or_model: str | os.PathLike[str] | AutoDecoModelForCausalLM,
    out_dir: str | os.PathLike[str],
    *,
    base_model: Any = None,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 * 1024**3,
) -> pathlib.Path:
    r"""Writes a merged AutoDeco checkpoint that `vllm.LLM(model=out_dir)` serves with the heads applied.

    Args:
        heads_dir_or_model (`str`, `os.PathLike` or [`AutoDecoModelForCausalLM`]):
            An AutoDeco model, or a heads checkpoint (directory or Hub id; ours or the official heads-only layout),
            loaded with [`AutoDecoModelForCausalLM.from_pretrained`].
        out_dir (`str` or `os.PathLike`):
            Target directory (created; existing files of the same names are overwritten).
        base_model (`PreTrainedModel` or `str`, *optional*):
            When loading heads from a directory: the base model, already loaded, or its directory / Hub id (default:
            the base named in the heads' config).
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Saved into `out_dir`; otherwise the tokenizer files of the heads' directory, then of the base model's
            local directory, are copied.
        dtype (`torch.dtype`, *optional*):
            Cast the base model's floating-point tensors to this dtype (e.g. `torch.bfloat16`); the heads stay float32.
        max_shard_size (`int`, *optional*, defaults to 5 GiB):
            Largest shard in bytes; above it the tensors are split into `model-0000k-of-0000n.safetensors` with a
            `model.safetensors.index.json`.

    Returns:
        `pathlib.Path`: `out_dir`.
    """
    if isinstance(heads_dir_or_model, AutoDecoModelForCausalLM):
        model, heads_dir = heads_dir_or_model, None
    elif isinstance(heads_dir_or_model, (str, os.PathLike)):
        kwargs: dict[str, Any] = {}
        if isinstance(base_model, (str, os.PathLike)):
            kwargs["base_model_name_or_path"] = os.fspath(base_model)
        elif base_model is not None:
            kwargs["base_model"] = base_model
        model = AutoDecoModelForCausalLM.from_pretrained(heads_dir_or_model, **kwargs)
        heads_dir = os.fspath(heads_dir_or_model) if os.path.isdir(heads_dir_or_model) else None
    else:
        raise invalid_argument(
            "heads_dir_or_model",
            type(heads_dir_or_model).__name__,
            "an AutoDecoModelForCausalLM or a heads checkpoint directory / Hub id",
        )
    if max_shard_size < 1:
        raise invalid_argument("max_shard_size", max_shard_size, "a positive number of bytes")
    base = model.llm
    if hasattr(base, "merge_and_unload"):  # a jointly trained LoRA: serve the merged weights
        base = base.merge_and_unload()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tensors = _base_tensors(base, dtype)
    tensors.update(
        {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in model.heads.state_dict().items()}
    )
    _write_tensors(tensors, out, max_shard_size)
    with open(out / "config.json", "w", encoding="utf-8") as handle:
        json.dump(_merged_config(model, base, dtype), handle, indent=2, sort_keys=True)
        handle.write("\n")
    model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    else:
        _copy_tokenizer_files(out, [heads_dir, getattr(base, "name_or_path", None)])
    return out


def _base_tensors(base: Any, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The base's state dict under `llm.`, each storage once (tied embeddings keep the input embedding's name)."""
    state = base.state_dict()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    output_names = (
        {name for name, param in state.items() if param.data_ptr() == head_weight.data_ptr()}
        if isinstance(head_weight, torch.Tensor)
        else set()
    )
    seen: dict[tuple[int, int], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    # Output embeddings last, so a tied pair is stored under the input embedding's name (what loaders expect).
    for name in sorted(state, key=lambda key: key in output_names):
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen[key] = name
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[f"llm.{name}"] = tensor.contiguous()
    return tensors


def _write_tensors(tensors: dict[str, torch.Tensor], out: pathlib.Path, max_shard_size: int) -> None:
    metadata = {"format": "pt", "hf_decoding_version": package_version()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in [*out.glob("model-*-of-*.safetensors"), out / _INDEX_NAME, out / "model.safetensors"]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(out / _INDEX_NAME, "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)


def _merged_config(model: AutoDecoModelForCausalLM, base: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    """The base's config dict plus the AutoDeco keys (the official merged layout)."""
    base_config = base.config
    getter = getattr(base_config, "get_text_config", None)
    text_config = getter() if callable(getter) else base_config
    merged = text_config.to_dict()
    merged.pop("auto_map", None)
    heads = model.config.to_dict()
    for key in AUTODECO_KEYS:
        if key in heads and key not in ("model_type", "architectures", "auto_map", "transformers_version"):
            merged[key] = heads[key]
    merged["base_model_type"] = text_config.model_type
    merged["base_architectures"] = list(getattr(text_config, "architectures", None) or []) or None
    merged["hidden_size"] = model.heads.config.hidden_size
    merged["temperature_hidden_size"] = merged["top_p_hidden_size"] = model.heads.config.hidden_size
    merged["hf_decoding_version"] = package_version()
    merged["lora_adapter"] = None  # merged into the base weights above
    merged["model_type"] = "autodeco"
    merged["architectures"] = [_ARCHITECTURE]
    if dtype is not None:
        merged["dtype"] = str(dtype).removeprefix("torch.")
    return merged


def _copy_tokenizer_files(out: pathlib.Path, sources: list[str | None]) -> None:
    for name in TOKENIZER_FILES:
        for source in sources:
            if source and os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), out / name)
                break
