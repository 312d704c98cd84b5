"""Plots of a comparison: distortion histograms with pairwise log ratio ECDFs, and quality–diversity curves."""

from __future__ import annotations

import math
import pathlib

import torch

from ...plotting import agg_figure
from .comparison import DistortionComparison, _fmt_param


def plot_histograms(comparison: DistortionComparison, path: str | pathlib.Path) -> pathlib.Path:
    r"""Saves one PNG: per target mass, a histogram of the total distortion `log eps(w)` of each strategy (left)
    and the empirical CDF of the pairwise log distortion ratio (right).

    Uses matplotlib's object API on the Agg canvas (no global backend change, no display needed).

    Args:
        comparison ([`DistortionComparison`]): what [`compare_strategies`] returned.
        path (`str` or `pathlib.Path`): the PNG file to write (parent directories are created).

    Returns:
        `pathlib.Path`: the written file.

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """
    path = pathlib.Path(path)
    targets = sorted({r.target_mass for r in comparison.results})
    figure = agg_figure(path, (11, 3.4 * len(targets)))
    axes = figure.subplots(len(targets), 2, squeeze=False)
    for row, target in enumerate(targets):
        results = [r for r in comparison.results if r.target_mass == target]
        values = torch.cat([r.total_distortion.double() for r in results])
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        bins = torch.linspace(low, high, 31).tolist()
        hist_ax, cdf_ax = axes[row]
        for result in results:
            label = f"{result.strategy} ({result.parameter_name}={_fmt_param(result.row())})"
            totals = result.total_distortion.double()
            if totals.numel() > 1 and float(totals.max() - totals.min()) < 1e-6:
                # A constant total (the distortion-aware nucleus) is a single spike: draw it as a line.
                hist_ax.axvline(float(totals.mean()), color="black", linestyle="--", label=f"{label}, constant")
            else:
                hist_ax.hist(totals.numpy(), bins=bins, alpha=0.55, label=label)
            ratios = torch.sort(result.log_ratio.double()).values
            if ratios.numel():
                cdf = torch.arange(1, ratios.numel() + 1, dtype=torch.float64) / ratios.numel()
                cdf_ax.step(ratios.numpy(), cdf.numpy(), where="post", label=label)
        hist_ax.set_title(f"total distortion log eps(w), mean kept mass {target:.2f}")
        hist_ax.set_xlabel(f"log eps(w) over {comparison.max_new_tokens} tokens")
        hist_ax.set_ylabel("samples")
        hist_ax.legend(fontsize="small")
        cdf_ax.set_title(f"pairwise |log eps(w) - log eps(v)|, mean kept mass {target:.2f}")
        cdf_ax.set_xlabel("log distortion ratio")
        cdf_ax.set_ylabel("ECDF")
        cdf_ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_quality_diversity(comparison: DistortionComparison, path: str | pathlib.Path) -> pathlib.Path:
    r"""Saves one PNG: the quality-diversity trade-off of each strategy across the target masses.

    x = entropy per token of the sampling distribution (diversity, `StrategyResult.entropy`), y = negative
    log-likelihood per token under the unmodified model (lower = closer to what the model finds likely,
    `StrategyResult.nll`); one line per strategy through its target masses (each point labelled with its mass),
    error bars = one standard error over samples.

    Args:
        comparison ([`DistortionComparison`]): what [`compare_strategies`] returned.
        path (`str` or `pathlib.Path`): the PNG file to write (parent directories are created).

    Returns:
        `pathlib.Path`: the written file.

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """

    def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
        values = values.double()
        error = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else 0.0
        return float(values.mean()), error

    path = pathlib.Path(path)
    figure = agg_figure(path, (6.4, 4.6))
    ax = figure.subplots()
    strategies = list(dict.fromkeys(r.strategy for r in comparison.results))
    for strategy in strategies:
        results = sorted((r for r in comparison.results if r.strategy == strategy), key=lambda r: r.target_mass)
        x = [mean_and_error(r.entropy) for r in results]
        y = [mean_and_error(r.nll) for r in results]
        ax.errorbar(
            [v for v, _ in x],
            [v for v, _ in y],
            xerr=[e for _, e in x],
            yerr=[e for _, e in y],
            marker="o",
            markersize=4,
            capsize=2,
            label=strategy,
        )
        for result, (xv, _), (yv, _) in zip(results, x, y, strict=True):
            ax.annotate(f"{result.target_mass:g}", (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("entropy per token of the sampler (diversity)")
    ax.set_ylabel("NLL per token under the model (lower = more likely)")
    ax.set_title(
        f"quality vs diversity at matched kept mass ({comparison.num_samples} samples x "
        f"{comparison.max_new_tokens} tokens per point)",
        fontsize=9,
    )
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path
