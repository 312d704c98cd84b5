"""ROC curve and AUROC of detector scores (no scikit-learn needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import invalid_argument

__all__ = ["auroc", "roc_curve"]


def _as_tensor(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if tensor.numel() == 0:
        raise invalid_argument(name, list(values), "a non-empty sequence of scores")
    if torch.isnan(tensor).any():
        raise invalid_argument(name, "scores with NaN", "finite or infinite scores, no NaN")
    return tensor


def auroc(positive: Sequence[float] | torch.Tensor, negative: Sequence[float] | torch.Tensor) -> float:
    """Probability that a positive scores above a negative (ties count one half): the area under the ROC curve.

    Args:
        positive (sequence of `float`): scores of the positive class (machine text for this package's detectors).
        negative (sequence of `float`): scores of the negative class (human text).

    Returns:
        `float` in `[0, 1]`.
    """
    pos = _as_tensor(positive, "positive")
    neg = _as_tensor(negative, "negative")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (pos.numel() * neg.numel()))


def roc_curve(
    positive: Sequence[float] | torch.Tensor, negative: Sequence[float] | torch.Tensor
) -> tuple[list[float], list[float]]:
    """False- and true-positive rates at every threshold, from `(0, 0)` to `(1, 1)`.

    Returns:
        `(fpr, tpr)`: two lists of equal length, non-decreasing.
    """
    pos = _as_tensor(positive, "positive")
    neg = _as_tensor(negative, "negative")
    thresholds = torch.unique(torch.cat([pos, neg])).flip(0)  # descending
    fpr, tpr = [0.0], [0.0]
    for threshold in thresholds.tolist():
        fpr.append(float((neg >= threshold).double().mean()))
        tpr.append(float((pos >= threshold).double().mean()))
    return fpr, tpr
