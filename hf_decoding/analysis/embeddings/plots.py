"""Plots of the embedding analyses (matplotlib, the `plot` extra): the PCA of the output embeddings, R² vs
number of dimensions, pruning curves and steering curves."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from .encoding import ProbabilityEncodingReport
from .fit import _ranks
from .pruning import PruningCurve
from .steering import SteeringCurve

# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, the `plot` extra)
# --------------------------------------------------------------------------------------------------------------------


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is in the test extra
        raise ImportError('Plots need matplotlib: pip install "hf-decoding[plot]"') from err
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_probability_pca(
    report: ProbabilityEncodingReport,
    path: str | os.PathLike[str],
    *,
    max_points: int = 20000,
    seed: int = 0,
    title: str | None = None,
) -> str:
    """Output embeddings on their first two principal components, coloured by the rank percentile of ᾱ_w (the
    paper's Fig. 1). Returns the path written."""
    vocab = report.vocab_size
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(vocab, generator=g)[: min(max_points, vocab)]
    percentile = _ranks(report.log_probability)[keep] / vocab * 100
    xy = report.embedding_projection[keep]
    fig, (ax,) = _figure()
    points = ax.scatter(xy[:, 0], xy[:, 1], c=percentile, s=2, cmap="viridis", rasterized=True)
    fig.colorbar(points, ax=ax, label="rank percentile of mean probability ᾱ")
    ax.set_xlabel(f"PC1 ({float(report.pca_variance[0] / report.pca_variance.sum()):.1%} of variance)")
    ax.set_ylabel(f"PC2 ({float(report.pca_variance[1] / report.pca_variance.sum()):.1%})")
    ax.set_title(title or "Output embeddings, coloured by probability")
    return _save(fig, path)


def plot_dimension_curve(
    report: ProbabilityEncodingReport, path: str | os.PathLike[str], *, title: str | None = None
) -> str:
    """Held-out R² of the MLR vs the number of dimensions kept. Returns the path written."""
    curve = report.dimension_curve
    fig, (ax,) = _figure()
    k = curve.num_dimensions
    ax.plot(k, curve.top_coefficient, marker="o", label="top dims, |standardised coef|")
    ax.plot(k, curve.top_variance, marker="s", label="top dims, E[h²]·Var(E)")
    ax.plot(k, curve.top_components, marker="^", label="top principal components")
    low = [m - s for m, s in zip(curve.random_mean, curve.random_std, strict=True)]
    high = [m + s for m, s in zip(curve.random_mean, curve.random_std, strict=True)]
    ax.plot(k, curve.random_mean, marker="x", color="grey", label="random dims")
    ax.fill_between(k, low, high, color="grey", alpha=0.2)
    ax.axhline(report.baseline.get("r2_affine", float("nan")), color="black", ls=":", label="mean-logit baseline")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of dimensions")
    ax.set_ylabel("held-out R² of −log ᾱ")
    ax.set_ylim(bottom=min(0.0, *[v for v in curve.random_mean if math.isfinite(v)]))
    ax.legend(fontsize=8)
    ax.set_title(title or "Sparsity of the probability encoding")
    return _save(fig, path)


def plot_pruning_curves(
    curves: Mapping[str, PruningCurve],
    path: str | os.PathLike[str],
    *,
    split: str = "held_out",
    title: str | None = None,
) -> str:
    """Mean JS, top-1 agreement and greedy agreement vs the fraction of dimensions removed, one line per curve."""
    fig, axes = _figure(ncols=3, width=4.2)
    for label, curve in curves.items():
        xs = [p.fraction for p in curve.points]
        name = split if split in curve.points[0].metrics else next(iter(curve.points[0].metrics))
        removed = [p for p in curve.points if p.num_removed > 0]  # JS is 0 with nothing removed: off a log axis
        axes[0].plot(
            [p.fraction for p in removed], [max(p.metrics[name]["js"], 1e-12) for p in removed], marker="o", label=label
        )
        axes[1].plot(xs, [p.metrics[name]["top1"] for p in curve.points], marker="o", label=label)
        if curve.points[0].greedy_agreement is not None:
            axes[2].plot(xs, [p.greedy_agreement for p in curve.points], marker="o", label=label)
    axes[0].axhline(0.01, color="black", ls=":")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"mean JS per position ({split}, nats)")
    axes[1].axhline(0.95, color="black", ls=":")
    axes[1].set_ylabel("top-1 agreement")
    axes[2].set_ylabel("greedy continuation agreement")
    for ax in axes:
        ax.set_xlabel("fraction of dimensions removed")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Pruning output-embedding dimensions")
    return _save(fig, path)


def plot_steering_curve(curve: SteeringCurve, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Achieved vs target ratio (geometric mean over tokens, with the min–max band) per method."""
    fig, (ax,) = _figure()
    for method, achieved in curve.achieved.items():
        geo = achieved.log().mean(-1).exp()
        ax.plot(curve.ratios, geo, marker="o", label=method)
        ax.fill_between(curve.ratios, achieved.min(-1).values, achieved.max(-1).values, alpha=0.15)
    ax.plot(curve.ratios, curve.ratios, color="black", ls=":", label="target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target ratio r")
    ax.set_ylabel("achieved ᾱ'/ᾱ")
    ax.legend(fontsize=8)
    ax.set_title(title or "Steering token probability")
    return _save(fig, path)
