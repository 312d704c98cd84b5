"""`ArithmeticStepVerifier`: a real, verifiable process reward for arithmetic reasoning (no model needed)."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from .answers import extract_answer, normalize_answer
from .base import RewardModel, split_steps

__all__ = ["ArithmeticStepVerifier", "check_equations", "extract_answer", "normalize_answer"]

# An arithmetic expression immediately left of "=", and the number right of it.
_EQUATION = re.compile(r"(?P<lhs>[\d$(][\d$.,\s+\-*/×÷x()]*[\d)])\s*=\s*\$?(?P<rhs>-?\d[\d,]*(?:\.\d+)?)")
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not arithmetic")


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


def check_equations(text: str) -> tuple[int, int]:
    """`(correct, total)` over every `a op b [op c ...] = d` stated in `text`.

    The left side must contain at least one of `+ - * / × ÷ x` between numbers; `$` and thousands separators are
    ignored; a result counts as correct when it equals the exact value, or the exact value rounded to the number
    of decimals written.
    """
    correct = total = 0
    for match in _EQUATION.finditer(text):
        lhs = match.group("lhs").replace("$", "").replace("×", "*").replace("÷", "/")
        lhs = re.sub(r"(?<=\d),(?=\d{3})", "", lhs)
        lhs = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", lhs)
        if not re.search(r"\d\s*\)?\s*[-+*/]\s*\(?\s*-?\d", lhs):
            continue
        try:
            value = _evaluate(ast.parse(lhs.strip(), mode="eval"))
            stated = _number(match.group("rhs"))
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
            continue
        total += 1
        decimals = len(match.group("rhs").split(".")[1]) if "." in match.group("rhs") else 0
        if math.isclose(value, stated, rel_tol=1e-9, abs_tol=1e-9) or (
            round(value, decimals) == stated and decimals > 0
        ):
            correct += 1
    return correct, total


class ArithmeticStepVerifier(RewardModel):
    r"""Checks every `a op b = c` a partial solution states; optionally the final answer against a reference.

    Step score (a probability-like value in `(0, 1)`, usable with every weight transform):

    - a step with equations: `wrong + (correct - wrong) * fraction_correct`;
    - a step without equations: `neutral`;
    - when a reference answer is known for the prompt and the step states a final answer: `answer_correct` /
      `answer_wrong` (the minimum with the equation score when the step also has equations).

    `score_whole` (`score_mode="model"`) applies the same rule to the whole partial answer at once. Passing
    reference answers turns this into an oracle outcome check: keep it off when comparing decoders.

    Args:
        correct (`float`, *optional*, defaults to 0.9): score of a step whose equations are all right.
        wrong (`float`, *optional*, defaults to 0.1): score of a step whose equations are all wrong.
        neutral (`float`, *optional*, defaults to 0.5): score of a step without equations.
        references (`Mapping[str, str]` or `Callable[[str], str | None]`, *optional*): gold answer per prompt.
        answer_correct (`float`, *optional*, defaults to 0.99) / answer_wrong (`float`, defaults to 0.01).
        step_delimiter (`str`, *optional*, defaults to `"\n\n"`): how `score` splits a partial answer into steps.

    Example:

    ```python
    >>> ArithmeticStepVerifier().score(["q"], ["3 + 5 = 8\n\n8 * 2 = 15"])
    [[0.9, 0.1]]
    ```
    """

    def __init__(
        self,
        correct: float = 0.9,
        wrong: float = 0.1,
        neutral: float = 0.5,
        references: Mapping[str, str] | Callable[[str], str | None] | None = None,
        answer_correct: float = 0.99,
        answer_wrong: float = 0.01,
        step_delimiter: str = "\n\n",
    ):
        self.correct = correct
        self.wrong = wrong
        self.neutral = neutral
        self.references = references
        self.answer_correct = answer_correct
        self.answer_wrong = answer_wrong
        self.step_delimiter = step_delimiter

    def _reference(self, prompt: str) -> str | None:
        if self.references is None:
            return None
        if callable(self.references):
            return normalize_answer(self.references(prompt))
        return normalize_answer(self.references.get(prompt))

    def _score_text(self, text: str, reference: str | None) -> float:
        right, total = check_equations(text)
        score = self.neutral if total == 0 else self.wrong + (self.correct - self.wrong) * right / total
        if reference is not None:
            answer = extract_answer(text, last_number_fallback=False)  # only a stated answer counts
            if answer is not None:
                verdict = self.answer_correct if answer == reference else self.answer_wrong
                score = verdict if total == 0 else min(score, verdict)
        return score

    def score(self, prompts: list[str], partial_texts: list[str]) -> list[list[float]]:
        out = []
        for prompt, text in zip(prompts, partial_texts, strict=False):
            reference = self._reference(prompt)
            out.append([self._score_text(step, reference) for step in split_steps(text, self.step_delimiter)])
        return out

    def score_whole(self, prompts: list[str], partial_texts: list[str]) -> list[float]:
        return [self._score_text(text, self._reference(p)) for p, text in zip(prompts, partial_texts, strict=False)]

    def __repr__(self) -> str:
        return f"ArithmeticStepVerifier(correct={self.correct}, wrong={self.wrong}, neutral={self.neutral})"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)
