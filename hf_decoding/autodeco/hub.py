"""Sharing AutoDeco heads on the Hub: the model card and the `custom_generate/` export.

- [`build_model_card`]: the `README.md` written by `save_pretrained` (`library_name: hf-decoding`, `base_model:`
  metadata, a usage snippet, the head size).
- [`export_custom_generate`]: a repository folder with the heads *and* `custom_generate/generate.py` (+
  `requirements.txt`), so that `base.generate(custom_generate="<repo>", trust_remote_code=True)` runs AutoDeco
  without `hf-decoding` installed.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from ..errors import invalid_argument
from .config import AutoDecoConfig

__all__ = ["CUSTOM_GENERATE_REQUIREMENTS", "build_model_card", "export_custom_generate"]

#: `custom_generate/requirements.txt`; transformers checks it before running the recipe.
CUSTOM_GENERATE_REQUIREMENTS = "torch>=2.4\ntransformers>=5.17\nsafetensors>=0.4\nhuggingface_hub>=0.34\n"


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


def export_custom_generate(
    model_or_path: Any,
    output_dir: str | os.PathLike[str],
    heads_source: str | None = None,
    repo_id: str | None = None,
) -> pathlib.Path:
    r"""Writes a Hub-ready folder: the heads checkpoint plus `custom_generate/{generate.py, requirements.txt}`.

    Args:
        model_or_path ([`AutoDecoModelForCausalLM`] or `str`): the model, or a directory written by
            `save_pretrained` (copied).
        output_dir (`str` or `os.PathLike`): the folder to upload (e.g. with `huggingface-cli upload`).
        heads_source (`str`, *optional*): where `generate.py` reads the heads from: the Hub id the folder will be
            uploaded to (`repo_id`), else the absolute path of `output_dir` (local use and tests).
        repo_id (`str`, *optional*): the target Hub repository (used for `heads_source` and the model card).

    Returns:
        The output directory. Run it with `base.generate(custom_generate=<repo id or directory>,
        trust_remote_code=True, ...)`.
    """
    import shutil

    from .modeling import AutoDecoModelForCausalLM

    out = pathlib.Path(output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model_or_path, AutoDecoModelForCausalLM):
        model_or_path.save_pretrained(out, repo_id=repo_id)
        config = model_or_path.config
        head_bytes = model_or_path.heads.size_bytes()
    elif isinstance(model_or_path, (str, os.PathLike)) and os.path.isdir(model_or_path):
        source = pathlib.Path(model_or_path)
        for name in ("config.json", "model.safetensors", "autodeco_heads.safetensors", "generation_config.json"):
            if (source / name).is_file() and source.absolute() != out:
                shutil.copyfile(source / name, out / name)
        config = AutoDecoConfig.from_pretrained(out)
        head_bytes = None
    else:
        raise invalid_argument("model_or_path", model_or_path, "an AutoDecoModelForCausalLM or a checkpoint directory")
    source_value = heads_source or repo_id or str(out)
    template = (pathlib.Path(__file__).parent / "_custom_generate.py").read_text(encoding="utf-8")
    template, count = re.subn(
        r"^HEADS_SOURCE = None.*$", f"HEADS_SOURCE = {source_value!r}", template, count=1, flags=re.MULTILINE
    )
    if count != 1:  # pragma: no cover - guards the template
        raise RuntimeError("custom_generate template has no HEADS_SOURCE line")
    folder = out / "custom_generate"
    folder.mkdir(exist_ok=True)
    (folder / "generate.py").write_text(template, encoding="utf-8")
    (folder / "requirements.txt").write_text(CUSTOM_GENERATE_REQUIREMENTS, encoding="utf-8")
    (out / "README.md").write_text(
        build_model_card(config, repo_id=repo_id, head_bytes=head_bytes, custom_generate=True), encoding="utf-8"
    )
    return out
