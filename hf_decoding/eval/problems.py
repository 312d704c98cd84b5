"""Held-out evaluation problems from `reasoning-gym` generators (and the offline word problems), with fixed seeds,
a dev split disjoint from the test split, and one difficulty knob per family.

A problem set is named by a list of *family specs* `"family@level"`, e.g. `["chain_sum@2", "word@1"]`; problem
`i` of a split comes from family `i % len(specs)` (the families are interleaved, so every prefix `0:k` of the test
split is balanced). Each family's problems are generated in order from its own seeded stream, and a question that
already appeared in the same split or in the dev split is skipped, so dev and test never share a question.

Families and levels (`FAMILIES`):

- `chain_sum` (reasoning-gym): sums and differences of non-negative integers; level = (terms, min digits, max
  digits) from `CHAIN_SUM_LEVELS` (level 1, two one-digit terms, has only 200 distinct questions: too few for
  disjoint dev and test splits).
- `basic_arithmetic` (reasoning-gym): `+ - *` without parentheses or negation; same level table.
- `gsm_symbolic` (reasoning-gym): grade-school word problems; one level (reasoning-gym 0.1.25 supports only
  `difficulty=1.0`).
- `word` (offline, [`~hf_decoding.eval.arithmetic.make_problems`]): arithmetic word problems with `steps=level`
  operations (1 or 2), the task the shipped learned PRM was trained on.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ..rewards.answers import normalize_answer
from .arithmetic import make_problems

__all__ = [
    "CHAIN_SUM_LEVELS",
    "FAMILIES",
    "SPLIT_SEEDS",
    "EvalProblem",
    "make_split",
    "parse_spec",
]

# (terms, min digits, max digits) per level, easiest first.
CHAIN_SUM_LEVELS = {1: (2, 1, 1), 2: (2, 1, 2), 3: (2, 2, 2), 4: (3, 1, 1), 5: (3, 2, 2), 6: (4, 2, 2)}
FAMILIES = {
    "chain_sum": tuple(CHAIN_SUM_LEVELS),
    "basic_arithmetic": tuple(CHAIN_SUM_LEVELS),
    "gsm_symbolic": (1,),
    "word": (1, 2),
}
# Seeds of the splits' generator streams; the test split also excludes every dev question.
SPLIT_SEEDS = {"dev": 1_000, "test": 2_000}
# Dev questions generated per family to exclude from the test split (more than any calibration uses).
_DEV_EXCLUDE = 300


@dataclass(frozen=True)
class EvalProblem:
    """One problem: a stable id (`split/family@level/k`), the question, the normalised gold answer.

    Has `question` and `answer` like [`~hf_decoding.eval.arithmetic.Problem`], so
    [`~hf_decoding.eval.arithmetic.problem_inputs`] formats it (chat template + the "The answer is N" instruction).
    """

    id: str
    family: str
    level: int
    question: str
    answer: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_spec(spec: str) -> tuple[str, int]:
    """`"chain_sum@2"` -> `("chain_sum", 2)`; validates the family and level."""
    family, _, level_text = spec.partition("@")
    if family not in FAMILIES:
        raise ValueError(f"unknown problem family {family!r} in {spec!r}; valid: {sorted(FAMILIES)}")
    try:
        level = int(level_text) if level_text else FAMILIES[family][0]
    except ValueError:
        raise ValueError(f"level of {spec!r} must be an integer, e.g. '{family}@{FAMILIES[family][0]}'") from None
    if level not in FAMILIES[family]:
        raise ValueError(f"level {level} of {family!r} not in {list(FAMILIES[family])}")
    return family, level


def _seed(split: str, family: str, level: int) -> int:
    # A stable per-(split, family, level) seed (Python's hash() is salted per process).
    digest = hashlib.sha256(f"{SPLIT_SEEDS[split]}/{family}@{level}".encode()).hexdigest()
    return int(digest[:8], 16)


def _stream(split: str, family: str, level: int, block: int = 256) -> Iterator[tuple[str, str]]:
    """Endless `(question, answer)` stream of one family, deterministic in (split, family, level)."""
    seed = _seed(split, family, level)
    if family == "word":
        # make_problems is a prefix-stable generator: the first k of a longer list are the list of k.
        for size in itertools.count(1):
            batch = make_problems(block * size, seed=seed, steps=level)
            for p in batch[block * (size - 1) :]:
                yield p.question, p.answer
    import reasoning_gym  # the `eval` extra

    options: dict[str, object] = {}
    if family in ("chain_sum", "basic_arithmetic"):
        terms, low, high = CHAIN_SUM_LEVELS[level]
        options = {"min_terms": terms, "max_terms": terms, "min_digits": low, "max_digits": high}
    if family == "basic_arithmetic":
        options.update(operators=("+", "-", "*"), allow_parentheses=False, allow_negation=False)
    # reasoning-gym items are a function of (seed, index): consecutive blocks of one seed are one stream.
    for start in itertools.count(0, block):
        dataset = reasoning_gym.create_dataset(family, seed=seed, size=start + block, **options)
        for index in range(start, start + block):
            item = dataset[index]
            yield item["question"], str(item["answer"])


def _family_problems(
    split: str, family: str, level: int, count: int, exclude: set[str], strict: bool = True
) -> list[tuple[str, str]]:
    """`count` distinct questions not in `exclude`; a small question space (e.g. one-digit sums) can run out: then
    a `ValueError` (`strict`) or the ones found."""
    seen = set(exclude)
    out: list[tuple[str, str]] = []
    for tries, (question, answer) in enumerate(_stream(split, family, level)):
        if len(out) == count:
            break
        if tries > 20 * count + 2_000:
            if strict:
                raise ValueError(f"{family}@{level} has fewer than {count} distinct new questions for {split!r}")
            break
        if question in seen or normalize_answer(answer) is None:
            continue
        seen.add(question)
        out.append((question, answer))
    return out


def make_split(split: str, count: int, specs: list[str]) -> list[EvalProblem]:
    """The first `count` problems of `split` (`"dev"` or `"test"`) for the interleaved families `specs`.

    Deterministic: the same arguments give the same list, and a longer list starts with the shorter one.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    if not specs:
        raise ValueError("at least one family spec is needed, e.g. ['chain_sum@2']")
    parsed = [parse_spec(s) for s in specs]
    per_family = [len(range(i, count, len(parsed))) for i in range(len(parsed))]
    lists = []
    for (family, level), k in zip(parsed, per_family, strict=True):
        exclude: set[str] = set()
        if split != "dev":
            exclude = {q for q, _ in _family_problems("dev", family, level, _DEV_EXCLUDE, set(), strict=False)}
        lists.append(_family_problems(split, family, level, k, exclude))
    problems = []
    for i in range(count):
        j, k = i % len(parsed), i // len(parsed)
        family, level = parsed[j]
        question, answer = lists[j][k]
        problems.append(
            EvalProblem(
                id=f"{split}/{family}@{level}/{k}",
                family=family,
                level=level,
                question=question,
                answer=normalize_answer(answer) or answer,
            )
        )
    return problems
