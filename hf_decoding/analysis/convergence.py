r"""Exact convergence check of masked-diffusion sampling (Li & Cai, arXiv 2505.21400) on enumerable joints.

The target `p` is a toy joint over `V ** L` sequences (`hf_decoding.diffusion.toy`: a sticky Markov chain or a
hidden Markov model, with tunable dependence) and the denoiser is `p`'s own conditionals, so `eps_train = 0`.
Everything is computed exactly, by dynamic programming over the revealed set, not by sampling:

- [`sampler_distribution`]: the output law `q` of the sampler for a schedule `(s_1, ..., s_T)` and a position
  rule: `random` (the theorem's setting: `s_t` uniformly random masked positions, each sampled independently
  from `p(x_i | revealed)`), or the confidence rules of the decoder (`low_confidence`, `margin`, `entropy`,
  `threshold`, `entropy_bound`), which are outside the theorem.
- [`expected_kl`]: the theorem's left-hand side `E_M KL(p || p_{Y | M})` in closed form. For a fixed mask path
  `KL(p || q_M) = sum_t sum_{i in S_t} H(X_i | X_{R_{t-1}}) - H(X)`, so averaging over random paths gives
  `sum_t s_t h(c_{t-1}) - H(X)` with `h(c)` the mean of `H(X_i | X_R)` over `|R| = c`, `i not in R`
  (the "information curve" of Chen, Cong & Li, arXiv 2511.04647). `KL(p || q_T)` of the mixture is at most this.
- [`mutual_information_terms`]: `I(X_i; X_{-i}) = H(X_i) + H(X_{-i}) - H(X)` exactly.
- [`theorem1_bound`]: `(2 ** ceil(log2 s_max) - 1) / L * sum_i I(X_i; X_{-i})`; for the balanced schedule this is
  the `C / T` rate of Corollary 1 with `C ~ 1`.

Costs: the random rule is `O(sum over transitions of V ** |R u S|)`, seconds for `L = 10, V = 3`; confidence rules
that depend on the sampled values (`low_confidence`, `threshold`) enumerate every draw, `O(2 ** L * L * V ** L)`:
about a minute at `L = 10, V = 3`, a second at `L = 8`. Plots need the `plot` extra (matplotlib).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..diffusion.schedules import unmasking_schedule
from ..diffusion.toy import EnumeratedJoint, hidden_markov_joint, markov_chain_joint
from ..errors import invalid_argument

__all__ = [
    "CONFIDENCE_RULES",
    "ConvergenceCurve",
    "EnumeratedJoint",
    "SamplerDistribution",
    "convergence_curve",
    "dependence_sweep",
    "expected_kl",
    "hidden_markov_joint",
    "information_profile",
    "kl_divergence",
    "loglog_slope",
    "markov_chain_joint",
    "mutual_information_terms",
    "plot_convergence",
    "run_convergence_study",
    "sampler_distribution",
    "theorem1_bound",
    "total_correlation",
]

logger = logging.getLogger(__name__)

#: Position rules of the decoder that choose by confidence (outside Li & Cai's theorems).
CONFIDENCE_RULES = ("entropy", "entropy_bound", "low_confidence", "margin", "threshold")
_SAMPLE_DEPENDENT = ("low_confidence", "threshold")  # confidence of the *drawn* candidate
_ALL_RULES = ("random", *CONFIDENCE_RULES)


# ----------------------------------------------------------------------------------------------------------- tables
class _Tables:
    """Marginals `p(x_R)` of every subset `R` (a bitmask), kept broadcastable: size `V` on `R`'s axes, 1 elsewhere."""

    def __init__(self, joint: EnumeratedJoint):
        self.joint = joint
        self.length = joint.length
        self.full = (1 << self.length) - 1
        self._marginals: dict[int, np.ndarray] = {self.full: joint.probs}
        self._entropies: dict[int, float] = {}

    def marginal(self, mask: int) -> np.ndarray:
        cached = self._marginals.get(mask)
        if cached is not None:
            return cached
        missing = next(j for j in range(self.length) if not mask >> j & 1)
        out = self.marginal(mask | 1 << missing).sum(axis=missing, keepdims=True)
        self._marginals[mask] = out
        return out

    def conditional(self, position: int, mask: int) -> np.ndarray:
        """`p(x_i | x_R)`, size `V` on `R u {i}`."""
        numerator = self.marginal(mask | 1 << position)
        denominator = self.marginal(mask)
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

    def entropy(self, mask: int) -> float:
        """`H(X_R)` in nats."""
        if mask not in self._entropies:
            p = self.marginal(mask)
            positive = p[p > 0]
            self._entropies[mask] = float(-(positive * np.log(positive)).sum())
        return self._entropies[mask]


def _bits(mask: int, length: int) -> list[int]:
    return [j for j in range(length) if mask >> j & 1]


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """`KL(p || q)` in nats (`inf` when `q` misses mass of `p`)."""
    p, q = np.asarray(p, dtype=np.float64).ravel(), np.asarray(q, dtype=np.float64).ravel()
    support = p > 0
    if (q[support] <= 0).any():
        return math.inf
    return max(float((p[support] * (np.log(p[support]) - np.log(q[support]))).sum()), 0.0)


def mutual_information_terms(joint: EnumeratedJoint) -> np.ndarray:
    """`I(X_i; X_{-i})` for every position `i`, shape `(L,)`, in nats."""
    tables = _Tables(joint)
    h_all = tables.entropy(tables.full)
    return np.array(
        [tables.entropy(1 << i) + tables.entropy(tables.full & ~(1 << i)) - h_all for i in range(joint.length)]
    )


def total_correlation(joint: EnumeratedJoint) -> float:
    """`sum_i H(X_i) - H(X)`: the KL of sampling every token at once from its marginal (`T = 1`)."""
    tables = _Tables(joint)
    return sum(tables.entropy(1 << i) for i in range(joint.length)) - tables.entropy(tables.full)


def information_profile(joint: EnumeratedJoint) -> np.ndarray:
    """`h(c)` = mean of `H(X_i | X_R)` over `|R| = c`, `i not in R`; shape `(L,)`. `sum_c h(c) = H(X)`."""
    tables = _Tables(joint)
    length = joint.length
    totals = np.zeros(length)
    counts = np.zeros(length)
    for mask in range(tables.full):
        h_r = tables.entropy(mask)
        c = mask.bit_count()
        for i in range(length):
            if not mask >> i & 1:
                totals[c] += tables.entropy(mask | 1 << i) - h_r
                counts[c] += 1
    return totals / counts


def _check_schedule(joint: EnumeratedJoint, schedule: Sequence[int]) -> list[int]:
    schedule = [int(s) for s in schedule]
    if any(s < 0 for s in schedule) or sum(schedule) != joint.length:
        raise invalid_argument("schedule", schedule, f"non-negative counts summing to L = {joint.length}")
    return schedule


def expected_kl(joint: EnumeratedJoint, schedule: Sequence[int], profile: np.ndarray | None = None) -> float:
    """Theorem 1's left-hand side `E_M KL(p || p_{Y | M})` for random-position unmasking, exactly."""
    schedule = _check_schedule(joint, schedule)
    profile = information_profile(joint) if profile is None else profile
    revealed, cross_entropy = 0, 0.0
    for s in schedule:
        cross_entropy += s * profile[revealed] if s else 0.0
        revealed += s
    return max(float(cross_entropy - profile.sum()), 0.0)


def theorem1_bound(joint: EnumeratedJoint, schedule: Sequence[int], mi_sum: float | None = None) -> float:
    """`(2 ** ceil(log2 s_max) - 1) / L * sum_i I(X_i; X_{-i})` (Li & Cai, Theorem 1, `eps_train = 0`)."""
    schedule = _check_schedule(joint, schedule)
    mi_sum = float(mutual_information_terms(joint).sum()) if mi_sum is None else mi_sum
    s_max = max(schedule)
    return (2 ** math.ceil(math.log2(s_max)) - 1) / joint.length * mi_sum


# --------------------------------------------------------------------------------------------- sampler distribution
@dataclass
class SamplerDistribution:
    """Exact output law of a sampler.

    Args:
        probs (`np.ndarray` of shape `(V,) * L`): `q(x)`.
        expected_steps (`float`): expected number of denoiser calls (forward passes).
        rule (`str`): the position rule.
    """

    probs: np.ndarray
    expected_steps: float
    rule: str


def _scores(rule: str, conditionals: dict[int, np.ndarray], free: list[int], shape_r: tuple[int, ...]) -> np.ndarray:
    """State-dependent priorities, shape `(m, *shape_r)` (higher first); `entropy_bound` returns entropies."""
    out = []
    for i in free:
        c = conditionals[i]
        if rule in ("entropy", "entropy_bound"):
            logc = np.log(np.where(c > 0, c, 1.0))
            h = -(c * logc).sum(axis=i, keepdims=True)
            out.append(np.broadcast_to(h if rule == "entropy_bound" else -h, shape_r))
        elif rule in ("low_confidence", "threshold"):  # confidence of the distribution: max_v p(v | state)
            out.append(np.broadcast_to(c.max(axis=i, keepdims=True), shape_r))
        elif rule == "margin":
            top = -np.sort(-c, axis=i)
            first = np.take(top, [0], axis=i)
            second = np.take(top, [1], axis=i) if c.shape[i] > 1 else np.zeros_like(first)
            out.append(np.broadcast_to(first - second, shape_r))
        else:  # pragma: no cover - guarded by the caller
            raise invalid_argument("rule", rule, f"one of {_ALL_RULES}")
    return np.stack(out)


def _select(rule: str, scores: np.ndarray, count: int, threshold: float, entropy_bound: float) -> np.ndarray:
    """Chosen positions per state: a boolean array `(m, n)` from scores `(m, n)`, as the decoder chooses them."""
    m, n = scores.shape
    if rule == "entropy_bound":
        order = np.argsort(scores, axis=0, kind="stable")  # ascending entropy
        ordered = np.take_along_axis(scores, order, axis=0)
        within = (np.cumsum(ordered, axis=0) - ordered) <= entropy_bound
        k = np.maximum(within.sum(0), max(count, 1))
    else:
        order = np.argsort(-scores, axis=0, kind="stable")  # descending, ties to the lower position
        if rule == "threshold":
            k = np.maximum((scores >= threshold).sum(0), max(count, 1))
        else:
            k = np.full(n, count)
    k = np.minimum(k, m)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(m)[:, None].repeat(n, 1), axis=0)
    return ranks < k[None, :]


def sampler_distribution(
    joint: EnumeratedJoint,
    schedule: Sequence[int] | None = None,
    rule: str = "random",
    *,
    threshold: float = 0.9,
    entropy_bound: float = 0.1,
    confidence: str = "candidate",
) -> SamplerDistribution:
    r"""The exact output distribution of masked-diffusion sampling with the perfect denoiser of `joint`.

    Args:
        joint ([`EnumeratedJoint`]): the target `p`.
        schedule (`Sequence[int]`, *optional*): tokens revealed per step, summing to `L` (the decoder's schedule).
            Default: one token per step. For `threshold` / `entropy_bound` the counts are minimums, as in the
            decoder; `None` there means "at least one".
        rule (`str`, *optional*, defaults to `"random"`): `"random"` or one of [`CONFIDENCE_RULES`], with the
            decoder's semantics at temperature 1 (candidates drawn from the exact conditionals; `low_confidence`
            and `threshold` rank by the probability of the *drawn* candidate).
        threshold (`float`, *optional*, defaults to 0.9): the `threshold` rule's level.
        entropy_bound (`float`, *optional*, defaults to 0.1): the `entropy_bound` rule's budget.
        confidence (`str`, *optional*, defaults to `"candidate"`): for `low_confidence` and `threshold`, rank by the
            probability of the drawn candidate (`"candidate"`, LLaDA / Fast-dLLM) or by `max_v p(v | state)`
            (`"max_prob"`, which does not look at the draw). The decoder's `unmasking_confidence`.

    Returns:
        [`SamplerDistribution`] with `q` and the expected number of forward passes.
    """
    if confidence not in ("candidate", "max_prob"):
        raise invalid_argument("confidence", confidence, "'candidate' or 'max_prob'")
    if rule not in _ALL_RULES:
        raise invalid_argument("rule", rule, f"one of {', '.join(map(repr, _ALL_RULES))}")
    length = joint.length
    adaptive = rule in ("threshold", "entropy_bound")
    schedule = [1] * length if schedule is None else _check_schedule(joint, schedule)
    # an adaptive rule commits at least one position, so a remaining minimum of <= 1 per step is "at least one"
    # and the step index no longer matters: collapse it, so that equal states merge
    free_from = next((t for t in range(len(schedule), 0, -1) if schedule[t - 1] > 1), 0) if adaptive else None
    tables = _Tables(joint)
    # probability of reaching revealed set R (by step index) with values x_R
    frontier: dict[tuple[int, int], np.ndarray] = {(0, 0): np.ones((1,) * length)}
    finals = np.zeros(joint.probs.shape)
    expected_steps = 0.0
    while frontier:
        step, mask = min(frontier, key=lambda key: (key[1].bit_count(), key[0]))
        mass = frontier.pop((step, mask))
        if mask == tables.full:
            finals = finals + mass
            continue
        if adaptive and step >= free_from:
            step = len(schedule)
        count = schedule[step] if step < len(schedule) else (1 if adaptive else length)
        if count == 0 and not adaptive:
            _accumulate(frontier, (step + 1, mask), mass)
            continue
        expected_steps += float(mass.sum())
        free = [j for j in range(length) if not mask >> j & 1]
        conditionals = {i: tables.conditional(i, mask) for i in free}
        next_step = min(step + 1, len(schedule))
        if rule == "random":
            weight = 1.0 / math.comb(len(free), count)
            for chosen in itertools.combinations(free, count):
                new = mass * weight
                for i in chosen:
                    new = new * conditionals[i]
                _accumulate(frontier, (next_step, mask | sum(1 << i for i in chosen)), new)
        elif rule in _SAMPLE_DEPENDENT and confidence == "candidate":
            _expand_drawn(frontier, next_step, mask, mass, conditionals, free, count, rule, threshold, length)
        else:
            shape_r = np.broadcast_shapes(mass.shape, *(tables.marginal(mask).shape,))
            scores = _scores(rule, conditionals, free, shape_r)  # (m, *shape_r)
            flat = scores.reshape(len(free), -1)
            chosen = _select(rule, flat, count, threshold, entropy_bound)  # (m, n)
            codes = (chosen * np.array([1 << i for i in free])[:, None]).sum(0).reshape(shape_r)
            for code in np.unique(codes):
                indicator = (codes == code).astype(np.float64)
                new = mass * indicator
                for i in _bits(int(code), length):
                    new = new * conditionals[i]
                _accumulate(frontier, (next_step, mask | int(code)), new)
    return SamplerDistribution(
        probs=np.broadcast_to(finals, joint.probs.shape).copy(), expected_steps=expected_steps, rule=rule
    )


def _accumulate(frontier: dict[tuple[int, int], np.ndarray], key: tuple[int, int], value: np.ndarray) -> None:
    if key in frontier:
        current = frontier[key]
        if current.shape != value.shape:
            shape = np.broadcast_shapes(current.shape, value.shape)
            current = np.broadcast_to(current, shape)
        frontier[key] = current + value
    else:
        frontier[key] = value


def _expand_drawn(
    frontier: dict[tuple[int, int], np.ndarray],
    next_step: int,
    mask: int,
    mass: np.ndarray,
    conditionals: dict[int, np.ndarray],
    free: list[int],
    count: int,
    rule: str,
    threshold: float,
    length: int,
) -> None:
    """Rules whose choice depends on the drawn candidates: enumerate every joint draw of the masked positions."""
    joint_draw = mass
    for i in free:
        joint_draw = joint_draw * conditionals[i]  # (V,) * L: revealed values x candidate values
    full_shape = joint_draw.shape
    confidence = np.stack([np.broadcast_to(conditionals[i], full_shape).ravel() for i in free])  # (m, V**L)
    chosen = _select("threshold" if rule == "threshold" else "low_confidence", confidence, count, threshold, 0.0)
    codes = (chosen * np.array([1 << i for i in free])[:, None]).sum(0).reshape(full_shape)
    for code in np.unique(codes):
        new_mask = mask | int(code)
        dropped = tuple(j for j in range(length) if not new_mask >> j & 1)
        contribution = np.where(codes == code, joint_draw, 0.0).sum(axis=dropped, keepdims=True)
        _accumulate(frontier, (next_step, new_mask), contribution)


# ----------------------------------------------------------------------------------------------------- the curves
@dataclass
class ConvergenceCurve:
    """KL against the number of steps for one joint and one rule.

    Args:
        joint (`str`): the joint's name; `params` its parameters.
        rule (`str`): position rule; `in_theorem` is `True` only for `"random"`.
        length, vocab_size (`int`): `L` and `V`.
        mi_sum (`float`): `sum_i I(X_i; X_{-i})` (nats); `total_correlation` the KL at `T = 1`.
        steps (`list[int]`): `T` values (balanced schedules).
        kl (`list[float]`): `KL(p || q_T)` of the sampler's output law.
        expected_kl (`list[float] | None`): `E_M KL(p || p_{Y|M})` (random rule only): Theorem 1's left side.
        bound (`list[float]`): Theorem 1's bound at each `T`; `c_over_t` the rate `sum_i I / T`.
        expected_steps (`list[float]`): expected forward passes (differs from `T` for adaptive rules).
        slope (`float | None`): least-squares slope of `log KL(p || q_T)` on `log T` over `1 <= T <= L / 2`.
        slope_expected_kl (`float | None`): the same for `E_M KL` (random rule only).
        rate_exponent (`float | None`): slope of `log E_M KL` (random rule) or `log KL` (other rules) on
            `log(1 / T - 1 / L)`, the finite-`L` form of `C / T` that the bound itself takes for powers of two
            (`(2 ** ceil(log2 s) - 1) / L = 1 / T - 1 / L`); 1 means "exactly the theorem's rate".
    """

    joint: str
    rule: str
    in_theorem: bool
    length: int
    vocab_size: int
    mi_sum: float
    total_correlation: float
    steps: list[int]
    kl: list[float]
    expected_kl: list[float] | None
    bound: list[float]
    c_over_t: list[float]
    expected_steps: list[float]
    slope: float | None = None
    slope_expected_kl: float | None = None
    rate_exponent: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (`inf` becomes `None`)."""
        return _finite(asdict(self))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def loglog_slope(steps: Sequence[float], values: Sequence[float], max_steps: float | None = None) -> float | None:
    """Least-squares slope of `log(values)` on `log(steps)` over positive values with `steps <= max_steps`."""
    points = [
        (math.log(t), math.log(v))
        for t, v in zip(steps, values, strict=True)
        if v is not None and v > 0 and math.isfinite(v) and (max_steps is None or t <= max_steps)
    ]
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def convergence_curve(
    joint: EnumeratedJoint,
    steps: Iterable[int] | None = None,
    rule: str = "random",
    *,
    threshold: float = 0.9,
    entropy_bound: float = 0.1,
    confidence: str = "candidate",
) -> ConvergenceCurve:
    r"""KL of the sampler against `T` for balanced (`linear`) schedules, with the theorem's quantities.

    Args:
        joint ([`EnumeratedJoint`]): the target.
        steps (`Iterable[int]`, *optional*): the `T` values (default `1, 2, 4, ..., L` plus `L`).
        rule (`str`, *optional*, defaults to `"random"`): position rule (see [`sampler_distribution`]).
        threshold, entropy_bound: the adaptive rules' parameters (their schedule is a per-step minimum).
        confidence (`str`, *optional*, defaults to `"candidate"`): see [`sampler_distribution`].
    """
    length = joint.length
    if steps is None:
        steps = sorted({2**k for k in range(int(math.log2(length)) + 1)} | {length})
    steps = [int(t) for t in steps]
    for t in steps:
        if not 1 <= t <= length:
            raise invalid_argument("steps", t, f"an integer in [1, L = {length}]")
    mi_sum = float(mutual_information_terms(joint).sum())
    profile = information_profile(joint)
    kl, expected, bound, expected_steps = [], [], [], []
    for t in steps:
        schedule = unmasking_schedule(length, t, "linear")
        distribution = sampler_distribution(
            joint, schedule, rule, threshold=threshold, entropy_bound=entropy_bound, confidence=confidence
        )
        kl.append(kl_divergence(joint.probs, distribution.probs))
        expected.append(expected_kl(joint, schedule, profile))
        bound.append(theorem1_bound(joint, schedule, mi_sum))
        expected_steps.append(distribution.expected_steps)
        logger.info("%s %s T=%d KL=%.6g bound=%.6g", joint.name, rule, t, kl[-1], bound[-1])
    sample_dependent = rule in _SAMPLE_DEPENDENT
    return ConvergenceCurve(
        joint=joint.name,
        rule=f"{rule} ({confidence})" if sample_dependent else rule,
        in_theorem=rule == "random",
        length=length,
        vocab_size=joint.vocab_size,
        mi_sum=mi_sum,
        total_correlation=total_correlation(joint),
        steps=steps,
        kl=kl,
        expected_kl=expected if rule == "random" else None,
        bound=bound,
        c_over_t=[mi_sum / t for t in steps],
        expected_steps=expected_steps,
        slope=loglog_slope(steps, kl, max_steps=length / 2),
        slope_expected_kl=loglog_slope(steps, expected, max_steps=length / 2) if rule == "random" else None,
        rate_exponent=_rate_exponent(steps, expected if rule == "random" else kl, length),
        params=dict(joint.params),
    )


def _rate_exponent(steps: Sequence[int], values: Sequence[float], length: int) -> float | None:
    pairs = [(1 / t - 1 / length, v) for t, v in zip(steps, values, strict=True) if t <= length / 2]
    return loglog_slope([x for x, _ in pairs], [v for _, v in pairs])


def dependence_sweep(
    kind: str = "markov",
    dependences: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9),
    *,
    length: int = 8,
    vocab_size: int = 3,
    steps: Sequence[int] = (1, 2, 4),
) -> list[dict[str, Any]]:
    """KL at fixed `T` against the dependence parameter: KL grows with `sum_i I(X_i; X_{-i})`, bound holds.

    Returns:
        One dict per dependence value: `dependence`, `mi_sum`, and per `T` the exact KL, `E_M KL` and the bound.
    """
    rows = []
    for a in dependences:
        joint = _make_joint(kind, length, vocab_size, a)
        curve = convergence_curve(joint, steps)
        rows.append(
            {
                "dependence": a,
                "mi_sum": curve.mi_sum,
                "steps": curve.steps,
                "kl": curve.kl,
                "expected_kl": curve.expected_kl,
                "bound": curve.bound,
            }
        )
    return rows


def _make_joint(kind: str, length: int, vocab_size: int, dependence: float) -> EnumeratedJoint:
    if kind == "markov":
        return markov_chain_joint(length, vocab_size, dependence)
    if kind == "hmm":
        return hidden_markov_joint(length, vocab_size, dependence=dependence)
    raise invalid_argument("kind", kind, "'markov' or 'hmm'")


def run_convergence_study(
    length: int = 10,
    vocab_size: int = 3,
    dependence: float = 0.7,
    confidence_length: int = 8,
    rules: Sequence[str] = CONFIDENCE_RULES,
    sweep: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9),
) -> dict[str, Any]:
    r"""The full check: random-position curves on a Markov chain and an HMM (`length`, every `T` in `1..L`),
    confidence rules on joints of `confidence_length` (outside the theorem), and a dependence sweep.

    Returns:
        A JSON-able dict with `curves` (list of [`ConvergenceCurve`] dicts), `sweep`, and `checks`:
        `kl_zero_at_L`, `bound_holds`, `mixture_below_expected`, `slope` (Markov chain, random rule).
    """
    curves: list[ConvergenceCurve] = []
    all_steps = list(range(1, length + 1))
    for kind in ("markov", "hmm"):
        joint = _make_joint(kind, length, vocab_size, dependence)
        curves.append(convergence_curve(joint, all_steps, "random"))
    confidence_steps = sorted({2**k for k in range(int(math.log2(confidence_length)) + 1)} | {confidence_length})
    small = _make_joint("markov", confidence_length, vocab_size, dependence)
    curves.append(convergence_curve(small, confidence_steps, "random"))
    for rule in rules:
        curves.append(convergence_curve(small, confidence_steps, rule))
        if rule in _SAMPLE_DEPENDENT:
            curves.append(convergence_curve(small, confidence_steps, rule, confidence="max_prob"))
    sweep_rows = dependence_sweep("markov", sweep, length=confidence_length, vocab_size=vocab_size)
    random_curves = [c for c in curves if c.in_theorem]
    tolerance = 1e-10
    checks = {
        "kl_zero_at_L": all(abs(c.kl[c.steps.index(c.length)]) < 1e-10 for c in random_curves),
        "bound_holds": all(
            e <= b + tolerance for c in random_curves for e, b in zip(c.expected_kl, c.bound, strict=True)
        )
        and all(e <= b + tolerance for r in sweep_rows for e, b in zip(r["expected_kl"], r["bound"], strict=True)),
        "mixture_below_expected": all(
            k <= e + tolerance for c in random_curves for k, e in zip(c.kl, c.expected_kl, strict=True)
        ),
        "kl_grows_with_mi": all(a["kl"][0] <= b["kl"][0] + tolerance for a, b in itertools.pairwise(sweep_rows)),
        "slope": curves[0].slope,
        "slope_expected_kl": curves[0].slope_expected_kl,
        "rate_exponent_expected_kl": curves[0].rate_exponent,
        "slope_bound": loglog_slope(curves[0].steps, curves[0].bound, max_steps=length / 2),
        "slope_hmm": curves[1].slope,
        "slope_expected_kl_hmm": curves[1].slope_expected_kl,
    }
    return {
        "setup": {
            "length": length,
            "vocab_size": vocab_size,
            "dependence": dependence,
            "confidence_length": confidence_length,
            "schedule": "linear (balanced)",
            "eps_train": 0.0,
        },
        "curves": [c.to_dict() for c in curves],
        "sweep": _finite(sweep_rows),
        "checks": checks,
    }


def plot_convergence(study: dict[str, Any], path: str) -> str:
    """Draws the study: KL vs `T` (log-log) with the bound and `C / T`, the confidence rules (labelled as outside
    the theorem) and KL against the mutual information. Needs matplotlib (`pip install hf-decoding[plot]`).

    Returns:
        `path`.
    """
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        from ..errors import MissingModelError

        raise MissingModelError("Plots need matplotlib: pip install 'hf-decoding[plot]'.") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = study["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))

    def positive(values: list) -> np.ndarray:  # zeros (exact at T = L) cannot sit on a log axis
        return np.array([np.nan if v is None or v <= 1e-12 else v for v in values], dtype=float)

    ax = axes[0]
    main = [c for c in curves if c["length"] == study["setup"]["length"] and c["in_theorem"]]
    for curve, colour in zip(main, ("C0", "C1"), strict=False):
        steps = np.array(curve["steps"], dtype=float)
        ax.loglog(
            steps,
            positive(curve["kl"]),
            "o-",
            color=colour,
            label=f"{curve['joint']}: KL(p‖q_T), slope {curve['slope']:.2f}",
        )
        ax.loglog(
            steps,
            positive(curve["expected_kl"]),
            "s--",
            color=colour,
            alpha=0.7,
            label=f"{curve['joint']}: E_M KL (Thm 1 LHS), slope {curve['slope_expected_kl']:.2f}",
        )
        ax.loglog(steps, positive(curve["bound"]), ":", color=colour, lw=2, label=f"{curve['joint']}: Theorem 1 bound")
        ax.loglog(steps, curve["c_over_t"], "-", color=colour, alpha=0.2, lw=5, label=f"{curve['joint']}: ΣI / T")
    length = study["setup"]["length"]
    ax.set_xticks(range(1, length + 1), [str(t) for t in range(1, length + 1)])
    ax.set_xlabel(f"steps T (balanced random unmasking); T = L = {length} gives KL = 0 exactly (not drawn)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"Exact KL vs steps, L={length}, V={study['setup']['vocab_size']}, ε_train = 0")
    ax.legend(fontsize=6.5, loc="lower left")
    ax = axes[1]
    small = [c for c in curves if c["length"] == study["setup"]["confidence_length"]]
    floor = 1e-4
    for curve in small:
        label = curve["rule"] + ("" if curve["in_theorem"] else "  [outside theorem]")
        values = [floor if v is not None and v < floor else (np.nan if v is None else v) for v in curve["kl"]]
        style = "o-" if curve["in_theorem"] else "s--"
        ax.semilogy(curve["expected_steps"], values, style, label=label, alpha=0.85)
    ax.axhline(floor, color="grey", lw=0.5)
    ax.text(1, floor * 1.3, "KL = 0 (exact) drawn at 1e-4", fontsize=7, color="grey")
    ax.set_ylim(floor / 2, 20)
    ax.set_xlabel("expected forward passes")
    ax.set_ylabel("KL(p‖q) (nats)")
    ax.set_title(
        f"Position rules, Markov L={study['setup']['confidence_length']} (confidence rules: outside the theorem)"
    )
    ax.legend(fontsize=6.5)
    ax = axes[2]
    sweep = study["sweep"]
    for j, t in enumerate(sweep[0]["steps"]):
        mi = [row["mi_sum"] for row in sweep]
        ax.plot(mi, [row["kl"][j] for row in sweep], "o-", color=f"C{j}", label=f"KL(p‖q_T), T={t}")
        ax.plot(mi, [row["expected_kl"][j] for row in sweep], "s--", color=f"C{j}", alpha=0.6, label=f"E_M KL, T={t}")
        ax.plot(mi, [row["bound"][j] for row in sweep], ":", color=f"C{j}", lw=2, label=f"bound, T={t}")
    ax.set_xlabel("Σ_i I(X_i; X_−i) (nats), Markov chains of growing dependence")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL grows with the mutual information (L={study['setup']['confidence_length']})")
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
