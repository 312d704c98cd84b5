"""Zero-shot machine-text detection: TempTest, the distortion detector for truncation samplers, and baselines."""

from .detector import METHODS, Detector, EmptyTextError, TextTooShortError, TokenizerMismatchError
from .metrics import auroc, roc_curve
from .statistics import DEFAULT_GRID, SamplerSetting, sampler_grid

__all__ = [
    "DEFAULT_GRID",
    "METHODS",
    "Detector",
    "EmptyTextError",
    "SamplerSetting",
    "TextTooShortError",
    "TokenizerMismatchError",
    "auroc",
    "roc_curve",
    "sampler_grid",
]
