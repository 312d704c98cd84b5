"""Helpers shared by the subcommands: model loading, prompt batching, output formatting."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "add_command",
    "add_command_group",
    "add_common_arguments",
    "add_device_argument",
    "add_optional_flag",
    "batch_prompts",
    "completion_lengths",
    "decode_completions",
    "format_table",
    "from_args",
    "load_model",
    "parse_set",
    "print_json",
]

logger = logging.getLogger(__name__)


#: The model the subcommands load when `--model` is not given.
DEFAULT_MODEL = "smollm2-135m-instruct"

#: `name: (add_argument keywords, default help)` of the arguments `add_common_arguments` knows.
_COMMON_ARGUMENTS: dict[str, tuple[dict[str, Any], str]] = {
    "model": ({"default": DEFAULT_MODEL}, "Local model directory or offline model name (default: SmolLM2)."),
    "device": ({"default": None}, "Device for the model, e.g. 'cpu' or 'cuda' (default: cpu)."),
    "threads": ({"type": int, "default": None}, "torch.set_num_threads (CPU)."),
    "json": ({"action": "store_true"}, "Print a JSON document instead of text."),
    "no_progress": ({"action": "store_true"}, "Hide progress bars."),
}


def add_common_arguments(parser: argparse.ArgumentParser, **arguments: str | bool) -> None:
    """Adds the arguments many subcommands share, in the order of the keywords (it is the order of `--help`).

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
        **arguments (`str` or `True`): for each of `model` (`--model`, default `DEFAULT_MODEL`), `device`
            (`--device`, default `None`), `threads` (`--threads`, an `int`, default `None`), `json` and `no_progress`
            (`--json`, `--no-progress`: flags), its help text, or `True` for the default help.

    Raises:
        `TypeError`: for a keyword that is not one of these.
    """
    for name, help_text in arguments.items():
        if name not in _COMMON_ARGUMENTS:
            raise TypeError(f"add_common_arguments() got an unexpected keyword argument {name!r}")
        options, default_help = _COMMON_ARGUMENTS[name]
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, **options, help=default_help if help_text is True else help_text)


def add_optional_flag(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """Adds `flag` and its `--no-` form; left out, it parses as `None` (the model's or tokenizer's own choice)."""
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--device` (where to put the model; CPU by default)."""
    add_common_arguments(parser, device=True)


def add_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str | None = None,
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
    help_parser: bool = False,
    **defaults: Any,
) -> argparse.ArgumentParser:
    """Adds the subcommand (or action) `name` to `subparsers` and sets its parsed `defaults` (`handler=run`, ...).

    Args:
        subparsers: the `add_subparsers()` object of the parent parser.
        name (`str`): the subcommand.
        help (`str`): its line in the parent's `--help`.
        description (`str`, *optional*): the text at the top of its own `--help`.
        formatter_class (`type`, *optional*, defaults to `argparse.HelpFormatter`): the class that formats its
            `--help`.
        help_parser (`bool`, *optional*, defaults to `False`): whether to set `help_parser` to the new parser too
            (the parser whose help is printed when no handler runs).
        **defaults: the other values set on the parsed arguments.

    Returns:
        `argparse.ArgumentParser`: the new parser.
    """
    parser = subparsers.add_parser(name, help=help, description=description, formatter_class=formatter_class)
    parser.set_defaults(**defaults, **({"help_parser": parser} if help_parser else {}))
    return parser


def add_command_group(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str | None = None,
    dest: str | None = None,
    metavar: str = "ACTION",
    title: str | None = "actions",
    defaults: dict[str, Any] | None = None,
) -> tuple[argparse.ArgumentParser, Any]:
    """Adds the subcommand `name` whose actions are subcommands of their own (`hf-decoding autodeco train`).

    Args:
        subparsers: the `add_subparsers()` object of the parent parser.
        name (`str`): the subcommand.
        help (`str`): its line in the parent's `--help`.
        description (`str`, *optional*): the text at the top of its own `--help`.
        dest (`str`, *optional*, defaults to `"<name>_command"`): where the chosen action's name is stored.
        metavar (`str`, *optional*, defaults to `"ACTION"`): the actions' placeholder in the usage line.
        title (`str`, *optional*, defaults to `"actions"`): the heading of the actions in `--help` (`None`: they
            are listed with the positional arguments).
        defaults (`dict`, *optional*): values set on the parsed arguments besides `help_parser` (the new parser,
            whose help is printed when no action is given).

    Returns:
        `(parser, actions)`: the new parser and its `add_subparsers()` object.
    """
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(**(defaults or {}), help_parser=parser)
    group = {"title": title} if title is not None else {}
    return parser, parser.add_subparsers(dest=dest or f"{name}_command", metavar=metavar, **group)


def from_args(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Parsed arguments passed on as the keywords of the same names: `{name: args.<name>}` for each of `names`."""
    return {name: getattr(args, name) for name in names}


def load_model(name_or_path: str, *, device: str | None = None, local_dirs: bool = True) -> tuple[Any, Any]:
    """Loads `(model, tokenizer)`: a local directory with `from_pretrained` (safetensors only), else an offline model.

    Args:
        name_or_path (`str`): a directory holding a saved model and tokenizer, or a name accepted by
            `hf_decoding.load_default_model`.
        device (`str`, *optional*): device to move the model to.
        local_dirs (`bool`, *optional*, defaults to `True`): whether directories are accepted.

    Returns:
        `(model, tokenizer)`: the model in eval mode; the tokenizer pads on the left and has a pad token.
    """
    if local_dirs and os.path.isdir(name_or_path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("Loading %s with from_pretrained (safetensors only).", name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if device is not None:
            model.to(device)
        model.eval()
    else:
        from ..models import load_default_model

        model, tokenizer = load_default_model(name_or_path, device=device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def batch_prompts(tokenizer: Any, prompts: Sequence[str], *, chat: bool, device: Any = None) -> dict[str, torch.Tensor]:
    """Tokenizes `prompts` into one left-padded batch, each wrapped as a user turn of the chat template if `chat`.

    Returns:
        `dict` with `input_ids` and `attention_mask`, both of shape `(len(prompts), max_length)`.
    """
    if chat:
        from ..errors import invalid_argument

        if not getattr(tokenizer, "chat_template", None):
            raise invalid_argument(
                "--chat", True, "used with a tokenizer that has a chat template", "Drop --chat for this model."
            )
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    else:
        encoded = tokenizer(list(prompts), return_tensors="pt", padding=True)
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if device is not None:
        batch = {key: value.to(device) for key, value in batch.items()}
    return batch


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def completion_lengths(model: Any, tokenizer: Any, new_tokens: torch.Tensor) -> list[int]:
    """Generated tokens of each row of `new_tokens` (shape `(B, T)`), up to and including the first EOS."""
    eos = _eos_ids(model, tokenizer)
    lengths = []
    for row in new_tokens.tolist():
        length = len(row)
        for position, token in enumerate(row):
            if token in eos:
                length = position + 1
                break
        lengths.append(length)
    return lengths


def decode_completions(tokenizer: Any, new_tokens: torch.Tensor, lengths: Sequence[int]) -> list[str]:
    """Decodes each row's first `lengths[b]` tokens, special tokens skipped, whitespace trimmed."""
    return [
        tokenizer.decode(row[:length], skip_special_tokens=True).strip()
        for row, length in zip(new_tokens.tolist(), lengths, strict=True)
    ]


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` -> `(key, value)`, the value parsed as JSON when possible (`top_k=0`, `stop_strings=["\\n"]`)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a generate argument, got {item!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def print_json(document: Any) -> None:
    """Prints `document` as indented JSON on stdout."""
    print(json.dumps(document, indent=2, ensure_ascii=False))


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with columns padded to their widest cell (numbers right-aligned)."""
    cells = [[str(h) for h in header]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(row) for row in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)
