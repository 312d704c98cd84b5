"""A seeded generator of short arithmetic word problems with gold answers (offline, no dependency).

Why not reasoning-gym's GSM-symbolic generators: they are far beyond a 135M-parameter model (accuracy near 0, so
no budget scaling can be seen), while these two-operation problems put SmolLM2-135M-Instruct in a range where
search can help, and every solution step is an `a op b = c` statement the
[`~hf_decoding.rewards.ArithmeticStepVerifier`] can check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["INSTRUCTION", "Problem", "make_problems", "problem_inputs"]

INSTRUCTION = 'Solve it step by step, showing each calculation, and end with "The answer is" followed by the number.'

_NAMES = ["Tom", "Ana", "Liam", "Mia", "Noah", "Zoe", "Omar", "Ivy"]
_ONE_STEP = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", lambda a, b: a + b, "+"),
    ("{name} has {a} dollars and spends {b} dollars. How many dollars are left?", lambda a, b: a - b, "-"),
    ("A shelf has {a} rows of {b} books. How many books are on the shelf?", lambda a, b: a * b, "*"),
    ("There are {a} birds on a tree and {b} fly away. How many birds are left?", lambda a, b: a - b, "-"),
    ("A class has {a} girls and {b} boys. How many children are in the class?", lambda a, b: a + b, "+"),
    ("{name} buys {a} bags with {b} candies each. How many candies does {name} have?", lambda a, b: a * b, "*"),
]
_TWO_STEP = [
    (
        "{name} has {a} apples. {name} buys {b} more and eats {c}. How many apples does {name} have now?",
        lambda a, b, c: a + b - c,
    ),
    (
        "A baker makes {a} trays of {b} cookies and sells {c} cookies. How many cookies are left?",
        lambda a, b, c: a * b - c,
    ),
    (
        "{name} has {a} dollars, spends {b} dollars on lunch and {c} dollars on a book. How many dollars are left?",
        lambda a, b, c: a - b - c,
    ),
    (
        "There are {a} rows of {b} chairs and {c} more chairs by the door. How many chairs are there?",
        lambda a, b, c: a * b + c,
    ),
    (
        "{name} reads {a} pages a day for {b} days, then {c} pages more. How many pages did {name} read?",
        lambda a, b, c: a * b + c,
    ),
    (
        "A box holds {a} pens. {name} adds {b} pens and then gives away {c}. How many pens are in the box?",
        lambda a, b, c: a + b - c,
    ),
]


@dataclass
class Problem:
    """One problem: its text, the gold answer (as a normalised string) and the numbers used."""

    question: str
    answer: str
    numbers: tuple[int, ...]


def make_problems(count: int, seed: int = 0, steps: int = 1) -> list[Problem]:
    """`count` problems, deterministic in `seed`; answers are non-negative integers.

    Args:
        count (`int`): number of problems.
        seed (`int`, *optional*, defaults to 0): the generator seed.
        steps (`int`, *optional*, defaults to 1): arithmetic operations per problem, 1 or 2. SmolLM2-135M-Instruct
            solves a useful fraction of 1-step problems and almost none of the 2-step ones.
    """
    if steps not in (1, 2):
        raise ValueError("steps must be 1 or 2")
    rng = random.Random(seed)
    problems: list[Problem] = []
    while len(problems) < count:
        if steps == 1:
            template, fn, op = rng.choice(_ONE_STEP)
            a = rng.randint(2, 9) if op == "*" else rng.randint(5, 30)
            b = rng.randint(2, 9) if op == "*" else rng.randint(2, 15)
            if op == "-" and b >= a:
                continue
            question = template.format(name=rng.choice(_NAMES), a=a, b=b)
            problems.append(Problem(question=question, answer=str(fn(a, b)), numbers=(a, b)))
            continue
        template, fn = rng.choice(_TWO_STEP)
        multiplicative = "trays" in template or "rows" in template or "a day" in template
        a = rng.randint(2, 9) if multiplicative else rng.randint(10, 40)
        b = rng.randint(2, 9) if multiplicative else rng.randint(2, 20)
        c = rng.randint(1, 9)
        value = fn(a, b, c)
        if value < 0:
            continue
        question = template.format(name=rng.choice(_NAMES), a=a, b=b, c=c)
        problems.append(Problem(question=question, answer=str(value), numbers=(a, b, c)))
    return problems


def problem_inputs(tokenizer: Any, problems: list[Problem], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Left-padded chat-formatted inputs for `problems`."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{p.question} {INSTRUCTION}"}], add_generation_prompt=True, tokenize=False
        )
        for p in problems
    ]
    # The chat template writes the special tokens itself (a BOS token included, where the model has one).
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in encoded.items()}
