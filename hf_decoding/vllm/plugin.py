"""The `vllm.general_plugins` entry point: registers AutoDeco with vLLM in every vLLM process.

vLLM calls [`register`] once per process (engine, workers) before it reads a model's config. It registers the
architecture `AutoDecoModelForCausalLM` lazily (by name: the model module, which imports vLLM's layers, is imported
only when a merged AutoDeco checkpoint is served) and the config class for `model_type: autodeco`.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURE", "register"]

#: The architecture name written into merged checkpoints (`config.json` `architectures`), as the official ones.
ARCHITECTURE = "AutoDecoModelForCausalLM"


def register() -> None:
    """Registers the AutoDeco architecture and config class with vLLM (idempotent)."""
    from vllm import ModelRegistry

    from ._compat import register_config_class
    from .config import VllmAutoDecoConfig

    register_config_class("autodeco", VllmAutoDecoConfig)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "hf_decoding.vllm.autodeco:AutoDecoForCausalLM")
