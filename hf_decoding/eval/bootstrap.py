"""Percentile bootstrap intervals over problems: one method's mean, and the paired difference of two methods.

Paired: both methods were run on the same problems; each bootstrap replicate resamples problem indices with
replacement and takes the mean of `a[i] - b[i]` over them, so per-problem difficulty cancels (the interval is
much narrower than two independent intervals would suggest when the methods agree on most problems).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "format_percent", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    Attributes:
        estimate (`float`): the mean over problems (or of the paired differences).
        low (`float`) / high (`float`): the `(1 - level) / 2` and `(1 + level) / 2` percentiles of the replicates.
        n (`int`): problems.
        level (`float`): coverage, 0.95 by default.
    """

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(resamples)
    # Chunks bound the index matrix at ~8 MB whatever the number of problems.
    chunk = max(1, 1_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (R_chunk, n)
        means[start:stop] = values[idx].mean(-1)
    return means


def bootstrap_mean(values: Sequence[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of `values` (one per problem) with a percentile bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {x.shape}")
    means = _means(x, resamples, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(low), float(high), len(x), level)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of `a - b` over problems (`a[i]`, `b[i]` on the same problem `i`) with a paired percentile interval."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same problems: shapes {x.shape} and {y.shape}")
    return bootstrap_mean(x - y, resamples=resamples, level=level, seed=seed)


def format_percent(interval: dict[str, float] | None, signed: bool = False) -> str:
    """An interval dict (`Interval.to_dict()`) in percent: `"12.5 [9.0, 16.0]"`, or `"+2.1 [+1.1, +3.2]"` with
    `signed` (for differences); `"–"` for none."""
    if not interval:
        return "–"
    sign = "+" if signed else ""
    e, lo, hi = (interval[x] * 100 for x in ("estimate", "low", "high"))
    return f"{e:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]"
