"""The model card (`README.md`) of a heads-only AutoDeco checkpoint: `library_name: hf-decoding`, `base_model:`
metadata, a usage snippet, the head size. Written by `AutoDecoModelForCausalLM.save_pretrained` and by the
`custom_generate/` export."""

from __future__ import annotations

import os

from .config import AutoDecoConfig

__all__ = ["build_model_card"]


def build_model_card(
    config: AutoDecoConfig, repo_id: str | None = None, head_bytes: int | None = None, custom_generate: bool = False
) -> str:
    """The model card (`README.md`) of a heads-only AutoDeco checkpoint."""
    base = config.base_model_name_or_path or "unknown"
    repo = repo_id or "<this repo>"
    tags = ["autodeco", "hf-decoding", "text-generation"] + (["custom_generate"] if custom_generate else [])
    lines = ["---", "library_name: hf-decoding", "pipeline_tag: text-generation"]
    if config.base_model_name_or_path and not os.path.isabs(config.base_model_name_or_path):
        lines.append(f"base_model: {base}")
    lines.append("tags:")
    lines.extend(f"- {tag}" for tag in tags)
    lines.append("---")
    size = f"{head_bytes / 2**20:.2f} MB" if head_bytes is not None else "a few MB"
    heads = [
        name
        for name, on in (("temperature", config.enable_temperature_head), ("top-p", config.enable_top_p_head))
        if on
    ]
    body = f"""
# AutoDeco heads for `{base}`

Per-token temperature and top-p heads ([AutoDeco](https://arxiv.org/abs/2510.26697)) for `{base}`
(revision `{config.base_model_revision or "main"}`), as written by
[hf-decoding](https://github.com/hf-decoding/hf-decoding) {config.hf_decoding_version or ""}. The repository holds
**only the heads** ({", ".join(heads)}; {size} in `model.safetensors`); the base model is loaded from its own
repository.

## Usage

```python
import hf_decoding  # registers the `autodeco` model type
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}")          # loads {base} + the heads
tokenizer = AutoTokenizer.from_pretrained("{base}", padding_side="left")
inputs = tokenizer(["..."], return_tensors="pt", padding=True)
out = model.generate(**inputs, max_new_tokens=128, return_dict_in_generate=True)   # decoding="autodeco"
out.autodeco.temperature, out.autodeco.top_p                                      # values applied per token
```

`temperature` and `top_p` passed to `generate` multiply the predicted values (default 1: the raw predictions);
`temperature=0` is greedy.
"""
    if custom_generate:
        body += f"""
### Without installing hf-decoding

```python
base = AutoModelForCausalLM.from_pretrained("{base}")
out = base.generate(**inputs, custom_generate="{repo}", trust_remote_code=True, do_sample=True, top_k=0,
                    max_new_tokens=128)
```
"""
    body += f"""
## Heads

| | |
|---|---|
| hidden size | {config.hidden_size} |
| head width | {config.head_hidden_size} |
| temperature range | ({config.min_temperature}, {config.max_temperature}) |
| enhanced top-p features | {config.use_enhanced_features} |
"""
    return "\n".join(lines) + "\n" + body
