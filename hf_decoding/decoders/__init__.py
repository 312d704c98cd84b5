"""Decoders: one module per method. Each is a `custom_generate` callable and is registered by name."""

from ..registry import register_decoder
from .distortion_aware_nucleus import distortion_aware_nucleus
from .sample import sample

register_decoder("sample", sample, overwrite=True)
register_decoder("distortion_aware_nucleus", distortion_aware_nucleus, overwrite=True)

__all__ = ["distortion_aware_nucleus", "sample"]
