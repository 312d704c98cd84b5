"""`hf-decoding analyze convergence`: the exact KL-vs-steps check of masked diffusion on toy joints."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ._common import add_command, add_common_arguments

__all__ = ["add_parser", "format_study", "register", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Adds the `convergence` command to `subparsers` (the `analyze` group's)."""
    parser = add_command(
        subparsers,
        "convergence",
        help="exact KL(p || q_T) of masked-diffusion sampling vs the number of steps T (Li & Cai, Theorem 1)",
        description=(
            "Enumerates a Markov-chain and a hidden-Markov joint over V**L sequences, uses their exact conditionals "
            "as the denoiser (eps_train = 0), and computes KL(p || q_T) for balanced random unmasking at every T, "
            "the theorem's E_M KL and bound, the confidence-based rules (outside the theorem) and a dependence sweep."
        ),
        handler=run,
        help_parser=True,
    )
    parser.add_argument("--length", type=int, default=10, help="sequence length L of the main curves (8-12)")
    parser.add_argument("--vocab-size", type=int, default=3, help="alphabet size V")
    parser.add_argument("--dependence", type=float, default=0.7, help="stickiness a of the chains, in [0, 1)")
    parser.add_argument("--confidence-length", type=int, default=8, help="L for the confidence-rule curves")
    parser.add_argument("--output", default=None, help="write the study as JSON to this path")
    parser.add_argument("--plot", default=None, help="write the figure (PNG) to this path; needs matplotlib")
    add_common_arguments(parser, json="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Runs the study; prints a table (or JSON) and writes the optional JSON file and figure. Returns 0."""
    from ..analysis.convergence import plot_convergence, run_convergence_study

    study = run_convergence_study(
        length=args.length,
        vocab_size=args.vocab_size,
        dependence=args.dependence,
        confidence_length=args.confidence_length,
    )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(study, handle, indent=1)
    if args.plot:
        plot_convergence(study, args.plot)
    if args.json:
        print(json.dumps(study))
        return 0
    print(format_study(study))
    return 0


def format_study(study: dict[str, Any]) -> str:
    """Human-readable tables of a convergence study."""
    lines = []
    for curve in study["curves"]:
        scope = "theorem" if curve["in_theorem"] else "outside theorem"
        lines.append(
            f"{curve['joint']}  L={curve['length']} V={curve['vocab_size']}  rule={curve['rule']} ({scope})  "
            f"sum_i I(X_i;X_-i)={curve['mi_sum']:.4f} nats  slope={_fmt(curve['slope'])}"
        )
        lines.append(f"  {'T':>3} {'KL(p||q_T)':>12} {'E_M KL':>12} {'bound':>12} {'E[NFE]':>8}")
        expected = curve["expected_kl"] or ["-"] * len(curve["steps"])
        for t, kl, e, b, nfe in zip(
            curve["steps"], curve["kl"], expected, curve["bound"], curve["expected_steps"], strict=True
        ):
            lines.append(f"  {t:>3} {_fmt(kl):>12} {_fmt(e):>12} {_fmt(b):>12} {nfe:>8.2f}")
    lines.append("checks: " + ", ".join(f"{k}={_fmt(v)}" for k, v in study["checks"].items()))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "inf/none"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


#: The name the other `hf_decoding.cli` modules use for `add_parser`.
register = add_parser
