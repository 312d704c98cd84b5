"""Final-answer parsing, shared by the arithmetic verifier, the answer votes of the particle methods and the
evaluations: the one home of [`extract_answer`] and [`normalize_answer`]."""

from __future__ import annotations

import re

__all__ = ["extract_answer", "normalize_answer"]

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"(?:answer is|answer:|####)\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for comparing answers: a lone number loses `$`, commas and trailing zeros; other text is
    whitespace-normalised."""
    if answer is None:
        return None
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1 and re.fullmatch(r"[\s$\\a-zA-Z{}]*-?\d[\d,]*(?:\.\d+)?[\s\\a-zA-Z{}%]*", text):
        value = float(numbers[0].replace(",", ""))
        return str(int(value)) if value == int(value) else f"{value:g}"
    return re.sub(r"\s+", " ", text) or None


def extract_answer(text: str, last_number_fallback: bool = True) -> str | None:
    """The final answer in `text`: the last `\\boxed{...}`, else "answer is N" / "#### N", else (by default) the
    last number, normalised with [`normalize_answer`]; `None` when there is none."""
    boxed = _BOXED.findall(text)
    if boxed:
        return normalize_answer(boxed[-1])
    stated = _ANSWER_IS.findall(text)
    if stated:
        return normalize_answer(stated[-1])
    if last_number_fallback:
        numbers = _NUMBER.findall(text)
        if numbers:
            return normalize_answer(numbers[-1])
    return None
