"""`VllmAutoDecoConfig`: the AutoDeco config as vLLM reads a merged checkpoint (`model_type: autodeco`).

A merged checkpoint's `config.json` is the base model's config with the AutoDeco keys added (the official layout).
vLLM sizes the KV cache and the attention from `config.get_text_config()`; this subclass answers with the base
model's own config class (`LlamaConfig`, `Qwen2Config`, ...) rebuilt from those keys, so every base architecture
vLLM supports reads its config exactly as it would without the heads.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..autodeco.config import AutoDecoConfig
from ..errors import IncompatibleCheckpointError

__all__ = ["AUTODECO_KEYS", "VllmAutoDecoConfig", "base_config_dict"]

#: Keys of a merged `config.json` that describe the heads (everything else describes the base model).
AUTODECO_KEYS = frozenset(
    name
    for name in inspect.signature(AutoDecoConfig.__init__).parameters
    if name not in ("self", "kwargs", "hidden_size", "vocab_size")  # these two are the base's too
) | {"temperature_hidden_size", "top_p_hidden_size", "model_type", "architectures", "auto_map", "transformers_version"}

_CACHE = "_hf_decoding_base_config"


def base_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The base model's config keys of a merged AutoDeco `config.json` dict."""
    return {key: value for key, value in config.items() if key not in AUTODECO_KEYS and key != _CACHE}


class VllmAutoDecoConfig(AutoDecoConfig):
    r"""[`AutoDecoConfig`] whose `get_text_config()` is the base model's config (what vLLM sizes the engine from).

    Registered for `model_type="autodeco"` in vLLM's config registry by the `vllm.general_plugins` entry point
    ([`hf_decoding.vllm.plugin.register`]); `base_model_type` must name a transformers model type.
    """

    model_type = "autodeco"

    @property
    def base_config(self) -> PreTrainedConfig:
        """The base model's config (built once, then cached on the instance, outside `to_dict()`)."""
        cached = self.__dict__.get(_CACHE)
        if cached is None:
            model_type = self.base_model_type
            if model_type not in CONFIG_MAPPING:
                raise IncompatibleCheckpointError(
                    f"The AutoDeco config names the base model type {model_type!r}, which transformers does not know. "
                    "Fix: export the checkpoint with `hf_decoding.vllm.export_for_vllm`, which records "
                    "`base_model_type`, or add it to config.json."
                )
            values = base_config_dict(super().to_dict())
            cached = CONFIG_MAPPING[model_type].from_dict(values)
            architectures = self.base_architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)]
            cached.architectures = [name for name in architectures if name]
            self.__dict__[_CACHE] = cached
        return cached

    def get_text_config(self, *args: Any, **kwargs: Any) -> PreTrainedConfig:
        if not self.__dict__.get("base_model_type"):
            return self  # still being constructed
        return self.base_config

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop(_CACHE, None)
        return output
