"""Typed errors and warnings raised by `hf_decoding`.

Every error derives from [`HfDecodingError`] and also from the builtin exception it refines, so callers that
already catch `ValueError` or `ImportError` keep working. Messages name the argument, the offending value and
the fix.
"""

from __future__ import annotations

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


def invalid_argument(name: str, value: object, expected: str, fix: str | None = None) -> InvalidDecodingArgument:
    """Builds an [`InvalidDecodingArgument`] whose message names the argument, the value and the fix."""
    message = f"`{name}` must be {expected}, got {value!r}."
    if fix:
        message += f" {fix}"
    return InvalidDecodingArgument(message)
