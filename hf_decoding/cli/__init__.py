"""The `hf-decoding` command (also `python -m hf_decoding`).

One module per subcommand; each exposes `register(subparsers)` (argument definitions, light imports only) and
`run(args) -> int` (heavy imports inside). Results go to stdout, diagnostics to stderr through `logging`; errors
raised by `hf_decoding` ([`HfDecodingError`]) are printed as one line on stderr and give exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import HfDecodingError
from . import analyze, autodeco, demo, detect, diffusion, env, generate, prm

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

_SUBCOMMANDS = (demo, generate, autodeco, prm, analyze, diffusion, detect, env)


def build_parser() -> argparse.ArgumentParser:
    """The `hf-decoding` argument parser, with one subparser per subcommand.

    Returns:
        `argparse.ArgumentParser`.
    """
    parser = argparse.ArgumentParser(
        prog="hf-decoding",
        description="Recent decoding methods for any Hugging Face causal LM, through model.generate(decoding=...).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="More diagnostics on stderr (-v: info, -vv: debug)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _SUBCOMMANDS:
        module.register(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (it may be swapped after the handler is created)."""

    @property
    def stream(self) -> object:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    package_logger = logging.getLogger("hf_decoding")
    package_logger.setLevel(level)
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)


def error_line(error: BaseException) -> str:
    """The message of `error` on a single line (multi-line messages are joined with spaces)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs `hf-decoding` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv (`list[str]`, *optional*): the arguments, without the program name.

    Returns:
        `int`: the exit code: 0 on success, 2 on a usage error or an `HfDecodingError`. `--help` and argparse's own
        usage errors raise `SystemExit` (codes 0 and 2) as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `hf-decoding` or `hf-decoding analyze` without a subcommand.
        (getattr(args, "help_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except HfDecodingError as err:
        print(f"hf-decoding: error: {error_line(err)}", file=sys.stderr)
        return 2
