"""`hf-decoding analyze distortion`: strategies compared at matched mean kept mass (Kempton & Burrell §2b)."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from typing import Any

from ._common import add_command, add_command_group, add_common_arguments, add_optional_flag, from_args

__all__ = ["DEFAULT_PROMPTS", "register", "run_distortion"]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Tell me a short story about a lighthouse keeper.",
    "Describe your favourite season and why.",
    "Explain how a bicycle works.",
    "Write a letter to a friend about a trip.",
)


def _plot_file(model: str, kind: str = "distortion") -> str:
    """`<kind>_<model>.png`, the model name (or directory name) reduced to safe characters."""
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in pathlib.Path(model).name.lower()).strip("-.")
    return f"{kind}_{slug or 'model'}.png"


def register(subparsers: Any) -> None:
    """Adds the `analyze` subcommand and its `distortion` analysis."""
    from ..analysis.distortion import DEFAULT_STRATEGIES, STRATEGIES

    _, analyses = add_command_group(
        subparsers,
        "analyze",
        help="Analyses of decoding strategies (distortion, convergence).",
        description="Analyses of decoding strategies. Run `hf-decoding analyze distortion --help`.",
        dest="analysis",
        metavar="ANALYSIS",
        title="analyses",
    )
    parser = add_command(
        analyses,
        "distortion",
        help="Compare top-k, top-p, temperature and the distortion-aware nucleus at matched kept mass.",
        description=(
            "Finds the k, p and temperature whose mean kept mass over contexts from pure samples of the model equals "
            "each target, samples equal-length completions under each (and under decoding='distortion_aware_nucleus' "
            "at p = target), and reports the mean kept mass, mean and std of the total distortion log eps(w), "
            "percentiles of the pairwise log distortion ratio |log eps(w) - log eps(v)| (pairs of the same prompt), "
            "the per-token NLL under the model and a per-token entropy estimate."
        ),
        handler=run_distortion,
        help_parser=True,
    )
    add_common_arguments(parser, model=True)
    parser.add_argument("--prompt", action="append", default=None, help="A prompt (repeatable; default: 4 built-in).")
    parser.add_argument(
        "--target-mass", type=float, nargs="+", default=[0.88], help="Mean kept mass(es) to match (default: 0.88)."
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(DEFAULT_STRATEGIES),
        help=f"Strategies to compare (default: {' '.join(DEFAULT_STRATEGIES)}).",
    )
    parser.add_argument("--num-samples", type=int, default=32, help="Samples per strategy and target (default: 32).")
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="Tokens per sample, EOS suppressed (default: 32)."
    )
    parser.add_argument("--num-contexts", type=int, default=256, help="Contexts for the mass matching (default: 256).")
    parser.add_argument("--batch-size", type=int, default=32, help="Samples generated at once (default: 32).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of contexts and samples (default: 0).")
    add_optional_flag(parser, "--chat", "Wrap prompts in the chat template (default: when the tokenizer has one).")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        default=None,
        help="Save the histograms as DIR/distortion_<model>.png and the quality-diversity curves as "
        "DIR/quality_diversity_<model>.png.",
    )
    add_common_arguments(
        parser, no_progress="Hide the progress bars.", json="Print a JSON document instead of a table.", device=True
    )
    from . import analyze_convergence

    analyze_convergence.register(analyses)
    from . import analyze_embeddings

    analyze_embeddings.add_parser(analyses)


def run_distortion(args: argparse.Namespace) -> int:
    """Runs `analyze distortion`; returns the exit code."""
    from ..analysis.distortion import compare_strategies, plot_histograms, plot_quality_diversity
    from ._common import format_table, load_model, print_json

    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        print(
            'hf-decoding: error: --plot needs matplotlib. Install it with: pip install "hf-decoding[plot]"',
            file=sys.stderr,
        )
        return 2
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    model, tokenizer = load_model(args.model, device=args.device)
    options = from_args(
        args, "target_mass", "strategies", "num_samples", "max_new_tokens", "num_contexts", "batch_size"
    )
    options.update(from_args(args, "seed", "chat"), progress=not args.no_progress)
    comparison = compare_strategies(model, tokenizer, prompts, **options)
    plot_path = quality_path = None
    if args.plot is not None:
        plot_path = plot_histograms(comparison, pathlib.Path(args.plot) / _plot_file(args.model))
        quality_path = plot_quality_diversity(
            comparison, pathlib.Path(args.plot) / _plot_file(args.model, "quality_diversity")
        )

    if args.json:
        document = {"model": args.model, **comparison.to_dict()}
        document["plot"] = str(plot_path) if plot_path is not None else None
        document["quality_diversity_plot"] = str(quality_path) if quality_path is not None else None
        print_json(document)
        return 0
    print(
        f"model: {args.model}   contexts: {comparison.num_contexts}   samples/strategy: {comparison.num_samples}   "
        f"tokens/sample: {comparison.max_new_tokens}   seed: {comparison.seed}"
    )
    print("log eps = total distortion; ratio = |log eps(w) - log eps(v)| over pairs of the same prompt\n")
    header = (
        "target",
        "strategy",
        "param",
        "mass(ctx)",
        "mass(smp)",
        "log eps",
        "std",
        "ratio p10",
        "p50",
        "p90",
        "NLL/tok",
        "H/tok",
        "tok/s",
    )
    rows = []
    for row in comparison.table():
        parameter = int(row["parameter"]) if row["strategy"] == "top_k" else round(row["parameter"], 4)
        rows.append(
            (
                row["target_mass"],
                row["strategy"],
                f"{row['parameter_name']}={parameter}",
                row["context_mass"],
                row["sample_mass"],
                row["distortion_mean"],
                row["distortion_std"],
                row["log_ratio_p10"],
                row["log_ratio_p50"],
                row["log_ratio_p90"],
                row["nll"],
                row["entropy"],
                row["tokens_per_second"],
            )
        )
    print(format_table(rows, header))
    if plot_path is not None:
        print(f"\nhistograms: {plot_path}\nquality-diversity: {quality_path}")
    return 0
