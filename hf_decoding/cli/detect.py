"""`hf-decoding detect`: zero-shot machine-text scores (TempTest, distortion, Fast-DetectGPT, log-likelihood, log-rank)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from ._common import add_command, add_common_arguments, from_args

__all__ = ["read_texts", "register", "run"]


def register(subparsers: Any) -> None:
    """Adds the `detect` subcommand."""
    from ..detection.detector import METHODS

    parser = add_command(
        subparsers,
        "detect",
        help="Score texts as machine- or human-written (higher = more likely machine).",
        description=(
            "Scores each text with zero-shot detectors computed from one forward pass of a causal LM: temptest "
            "(the temperature score), distortion (kept-set membership plus the local normalizer Z_t, the unknown "
            "temperature/top-k/top-p/min-p maximised or marginalised over a grid), fast_detectgpt (analytic "
            "sampling discrepancy), loglik and logrank. Higher scores mean more likely machine-generated."
        ),
        handler=run,
        help_parser=True,
    )
    parser.add_argument("--text", action="append", default=None, help="A text to score (repeatable).")
    parser.add_argument(
        "--file",
        default=None,
        help="A file of texts: JSON lines with a 'text' field (and optionally 'prefix'), or one text per line; '-' "
        "reads stdin.",
    )
    add_common_arguments(parser, model=True)
    parser.add_argument(
        "--method", nargs="+", choices=METHODS, default=list(METHODS), help="Methods to compute (default: all)."
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="Scoring temperature of temptest (default 0.8).")
    parser.add_argument(
        "--aggregate", choices=("max", "marginal"), default="max", help="Grid aggregation of distortion (default max)."
    )
    parser.add_argument(
        "--epsilon", type=float, default=1e-3, help="Weight of the plain model in the distortion score (default 1e-3)."
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="Score only the first N tokens of each text.")
    parser.add_argument("--min-tokens", type=int, default=4, help="Reject texts with fewer tokens (default 4).")
    parser.add_argument("--batch-size", type=int, default=8, help="Texts per forward pass (default 8).")
    add_common_arguments(
        parser, no_progress="Hide the progress bar.", json="Print a JSON document instead of a table.", device=True
    )


def read_texts(path: str) -> tuple[list[str], list[str] | None]:
    """Texts (and prefixes, if every JSON line has one) from a file; see `--file`."""
    from ..errors import invalid_argument

    raw = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    texts, prefixes = [], []
    for number, line in enumerate(lines, 1):
        record = None
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
        if isinstance(record, dict):
            if not isinstance(record.get("text"), str):
                raise invalid_argument("--file", f"{path}:{number}", "JSON lines with a string field 'text'")
            texts.append(record["text"])
            prefixes.append(record.get("prefix"))
        else:
            texts.append(line)
            prefixes.append(None)
    if all(isinstance(p, str) for p in prefixes) and prefixes:
        return texts, prefixes
    return texts, None


def run(args: argparse.Namespace) -> int:
    """Runs `detect`; returns the exit code."""
    from ..detection import Detector
    from ..errors import invalid_argument
    from ._common import format_table, load_model, print_json

    texts = list(args.text or [])
    prefixes = None
    if args.file is not None:
        file_texts, prefixes = read_texts(args.file)
        if texts and prefixes is not None:
            prefixes = [""] * len(texts) + prefixes
        texts += file_texts
    if not texts:
        raise invalid_argument("--text/--file", None, "at least one text", "Pass --text TEXT or --file PATH.")
    model, tokenizer = load_model(args.model, device=args.device)
    options = from_args(args, "temperature", "aggregate", "epsilon", "min_tokens", "max_tokens", "batch_size")
    detector = Detector(model, tokenizer, **options, progress=not args.no_progress)
    scores = detector.score_methods(texts, args.method, prefixes=prefixes)
    settings = detector.last_settings if "distortion" in args.method else None
    if args.json:
        rows = []
        for i, text in enumerate(texts):
            row: dict[str, Any] = {"text": text, "scores": {m: float(scores[m][i]) for m in args.method}}
            if settings is not None:
                row["distortion_setting"] = settings[i].label
            rows.append(row)
        print_json({"model": args.model, "higher_means": "machine", "texts": rows})
        return 0
    header = ["#", *args.method, *(["best setting"] if settings is not None else []), "text"]
    table = []
    for i, text in enumerate(texts):
        preview = " ".join(text.split())
        preview = preview if len(preview) <= 48 else preview[:45] + "..."
        extra = [settings[i].label] if settings is not None else []
        table.append([i, *(float(scores[m][i]) for m in args.method), *extra, preview])
    print(f"model: {args.model}   higher score = more likely machine-generated\n")
    print(format_table(table, header))
    return 0
