"""Typed errors and warnings raised by `hf_decoding`.

Every error derives from [`HfDecodingError`] and also from the builtin exception it refines, so callers that
already catch `ValueError` or `ImportError` keep working. Messages name the argument, the offending value and
the fix.
"""

from __future__ import annotations

import sys
import warnings

__all__ = [
    "EmptyTextError",
    "HfDecodingError",
    "HfDecodingWarning",
    "IncompatibleCheckpointError",
    "InvalidDecodingArgument",
    "InvalidLogitsError",
    "MissingModelError",
    "RewardModelError",
    "TextTooShortError",
    "TokenizerMismatchError",
    "UnknownDecodingError",
]


class HfDecodingError(Exception):
    """Root of every error raised by `hf_decoding`."""


class InvalidDecodingArgument(HfDecodingError, ValueError):
    """A decoding argument has a value outside its valid range or of the wrong type."""


class EmptyTextError(InvalidDecodingArgument):
    """A text to score (machine-text detection) is empty or only whitespace."""


class TextTooShortError(InvalidDecodingArgument):
    """A text to score has fewer tokens than the detector's `min_tokens`."""


class TokenizerMismatchError(InvalidDecodingArgument):
    """The tokenizer produces ids the model has no logits for (the tokenizer of another model)."""


class InvalidLogitsError(HfDecodingError, ValueError):
    """The model produced logits nothing can be sampled from (NaN, or every token at `-inf`)."""


class UnknownDecodingError(HfDecodingError, ValueError):
    """`decoding=` names a method that is not registered."""


class IncompatibleCheckpointError(HfDecodingError, ValueError):
    """A checkpoint does not fit the model it is loaded onto (hidden size, architecture, layout)."""


class MissingModelError(HfDecodingError, ImportError):
    """An offline model package is not installed."""


class RewardModelError(HfDecodingError, RuntimeError):
    """A reward model failed or returned an unusable score."""


class HfDecodingWarning(UserWarning):
    """Warnings emitted by `hf_decoding` (filter them with `warnings.filterwarnings`)."""


# frames of these packages lie between a user's `model.generate(...)` and the code that notices a problem
_LIBRARY_PACKAGES = frozenset({"hf_decoding", "transformers", "torch", "accelerate", "peft", "vllm"})


def warn(message: str, category: type[Warning] = HfDecodingWarning) -> None:
    """`warnings.warn` attributed to the first caller outside the libraries (usually the user's `generate` line),
    however deep inside the decoders the problem is noticed; a fixed `stacklevel` would point into `transformers`
    or `torch` for some call paths and into `hf_decoding` for others. Internal helper, not part of the API."""
    frame = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _LIBRARY_PACKAGES:
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def invalid_argument(name: str, value: object, expected: str, fix: str | None = None) -> InvalidDecodingArgument:
    """Builds an [`InvalidDecodingArgument`] whose message names the argument, the value and the fix."""
    message = f"`{name}` must be {expected}, got {value!r}."
    if fix:
        message += f" {fix}"
    return InvalidDecodingArgument(message)
