"""`AutoDecoConfig`: what an AutoDeco checkpoint records about its heads and the base model they sit on."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from transformers import PreTrainedConfig

from ..errors import invalid_argument

__all__ = ["AutoDecoConfig", "package_version"]


def package_version() -> str:
    """The installed `hf-decoding` version (written into every checkpoint)."""
    try:
        return importlib.metadata.version("hf-decoding")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+unknown"


class AutoDecoConfig(PreTrainedConfig):
    r"""Configuration of [`AutoDecoModelForCausalLM`]: the two AutoDeco heads and the base model they read.

    The same keys as the official AutoDeco checkpoints (`enable_temperature_head`, `enable_top_p_head`,
    `use_enhanced_features`, `base_model_name_or_path`, `base_model_type`, `temperature_hidden_size`,
    `top_p_hidden_size`) so that official heads-only directories load unchanged; the other keys are ours.

    Args:
        base_model_name_or_path (`str`, *optional*):
            Hub id (or local path) of the causal LM the heads were trained on; `from_pretrained` loads it from there
            unless `base_model=` is passed.
        base_model_revision (`str`, *optional*):
            Git revision (commit, tag or branch) of the base model on the Hub.
        base_model_type (`str`, *optional*):
            `model_type` of the base (e.g. `"llama"`); checked on load.
        base_architectures (`list[str]`, *optional*):
            `architectures` of the base config (informational).
        hidden_size (`int`, *optional*):
            Hidden size `H` of the base, the input size of both heads; checked on load.
        vocab_size (`int`, *optional*):
            Vocabulary size of the base (informational).
        enable_temperature_head (`bool`, *optional*, defaults to `True`):
            Use (and train) the temperature head. A disabled head predicts the neutral temperature 1.
        enable_top_p_head (`bool`, *optional*, defaults to `True`):
            Use (and train) the top-p head. A disabled head predicts the neutral top-p 1.
        use_enhanced_features (`bool`, *optional*, defaults to `True`):
            Feed the top-p head the four statistics of the tempered distribution (max prob, entropy, variance,
            top-5 mass) besides the hidden state and the predicted temperature (the paper's default).
        head_hidden_size (`int`, *optional*, defaults to 256):
            Width of the hidden layer of each head (256 in the paper).
        max_temperature (`float`, *optional*, defaults to 2.0):
            `T_max`: the temperature head outputs `sigmoid(.) * T_max`, a value in `(0, T_max)`.
        min_temperature (`float`, *optional*, defaults to 0.01):
            Floor applied to the predicted temperature (the official loss clamps at 0.01 too).
        min_top_p (`float`, *optional*, defaults to 0.0):
            Floor applied to the final top-p (values that round to 0 are lifted to 1e-6; top-p always keeps at
            least one token).
        lora_adapter (`str`, *optional*):
            Sub-folder holding a PEFT LoRA adapter of the base trained jointly with the heads.
        hf_decoding_version (`str`, *optional*):
            Version of `hf-decoding` that wrote the checkpoint.
    """

    model_type = "autodeco"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        base_model_type: str | None = None,
        base_architectures: list[str] | None = None,
        hidden_size: int | None = None,
        vocab_size: int | None = None,
        enable_temperature_head: bool = True,
        enable_top_p_head: bool = True,
        use_enhanced_features: bool = True,
        head_hidden_size: int = 256,
        max_temperature: float = 2.0,
        min_temperature: float = 0.01,
        min_top_p: float = 0.0,
        lora_adapter: str | None = None,
        hf_decoding_version: str | None = None,
        **kwargs: Any,
    ):
        # Every named argument becomes the attribute of the same name (first statement: `locals()` is the arguments).
        attributes = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "__class__")}
        # Official checkpoints store the head input size as `temperature_hidden_size` / `top_p_hidden_size`.
        official_size = kwargs.get("temperature_hidden_size") or kwargs.get("top_p_hidden_size")
        if hidden_size is None:
            hidden_size = official_size
        if hidden_size is None and kwargs.get("n_embd") is not None:  # GPT-2 style base configs
            hidden_size = kwargs["n_embd"]
        attributes["hidden_size"] = hidden_size
        for switch in ("enable_temperature_head", "enable_top_p_head", "use_enhanced_features"):
            attributes[switch] = bool(attributes[switch])
        for name, value in attributes.items():
            setattr(self, name, value)
        kwargs.setdefault("temperature_hidden_size", hidden_size)
        kwargs.setdefault("top_p_hidden_size", hidden_size)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.hidden_size is not None and (not isinstance(self.hidden_size, int) or self.hidden_size < 1):
            raise invalid_argument("hidden_size", self.hidden_size, "a positive integer")
        if not isinstance(self.head_hidden_size, int) or self.head_hidden_size < 1:
            raise invalid_argument("head_hidden_size", self.head_hidden_size, "a positive integer")
        if not self.max_temperature > 0:
            raise invalid_argument("max_temperature", self.max_temperature, "a positive number")
        if not 0 <= self.min_temperature < self.max_temperature:
            raise invalid_argument("min_temperature", self.min_temperature, "in [0, max_temperature)")
        if not 0 <= self.min_top_p <= 1:
            raise invalid_argument("min_top_p", self.min_top_p, "in [0, 1]")

    @property
    def is_official_layout(self) -> bool:
        """Whether the config was written by the official AutoDeco code (it has no `hf_decoding_version`)."""
        return self.hf_decoding_version is None
