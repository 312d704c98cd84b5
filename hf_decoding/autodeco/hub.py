"""Sharing AutoDeco heads on the Hub: the model card and the `custom_generate/` export.

- [`build_model_card`] (from `card.py`, re-exported): the `README.md` written by `save_pretrained`.
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
from .card import build_model_card
from .config import AutoDecoConfig
from .modeling import AutoDecoModelForCausalLM

__all__ = ["CUSTOM_GENERATE_REQUIREMENTS", "build_model_card", "export_custom_generate"]

#: `custom_generate/requirements.txt`; transformers checks it before running the recipe.
CUSTOM_GENERATE_REQUIREMENTS = "torch>=2.4\ntransformers>=5.17\nsafetensors>=0.4\nhuggingface_hub>=1.5\n"


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
