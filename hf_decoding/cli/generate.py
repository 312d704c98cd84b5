"""`hf-decoding generate`: one `model.generate(decoding=...)` call from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ._common import add_command, add_common_arguments, add_optional_flag

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Adds the `generate` subcommand."""
    from ._common import parse_set

    parser = add_command(
        subparsers,
        "generate",
        help="Generate completions with any registered decoding method.",
        description=(
            "Loads a model (a local directory saved with save_pretrained, safetensors only, or an offline model "
            "name), enables decoding=, and generates a completion for each --prompt. Prints the completions and "
            "their total distortion; --json also gives the per-step distortion and the cost."
        ),
        handler=run,
    )
    add_common_arguments(parser, model=True)
    parser.add_argument("--prompt", action="append", required=True, help="A prompt; repeat for a batch.")
    parser.add_argument(
        "--decoding", default="sample", help="Decoding method (see `hf-decoding env`); default: sample."
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Tokens to generate (default: 64).")
    add_optional_flag(parser, "--do-sample", "Sample instead of greedy (default: the model's generation config).")
    parser.add_argument("--temperature", type=float, default=None, help="Sampling temperature.")
    parser.add_argument("--top-k", type=int, default=None, help="Top-k (0 disables; transformers' default is 50).")
    parser.add_argument("--top-p", type=float, default=None, help="Top-p / nucleus mass.")
    parser.add_argument("--min-p", type=float, default=None, help="Min-p.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the decoder's private generator.")
    parser.add_argument("--chat", action="store_true", help="Wrap each prompt as a user turn of the chat template.")
    parser.add_argument(
        "--set",
        dest="extra",
        metavar="KEY=VALUE",
        action="append",
        type=parse_set,
        default=[],
        help="Any other generate argument (repeatable); VALUE is parsed as JSON when possible, e.g. --set num_particles=4.",
    )
    add_common_arguments(parser, json=True, device=True)


def generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords passed to `model.generate` (besides the inputs), from the parsed arguments."""
    kwargs: dict[str, Any] = {"decoding": args.decoding, "max_new_tokens": args.max_new_tokens}
    for name in ("do_sample", "temperature", "top_k", "top_p", "min_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    kwargs.update(dict(args.extra))
    kwargs["return_dict_in_generate"] = True
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Runs `generate`; returns the exit code."""
    import torch

    from ..registry import enable, get_decoder
    from ._common import batch_prompts, completion_lengths, decode_completions, load_model, print_json

    get_decoder(args.decoding)  # fail before loading the model
    kwargs = generate_kwargs(args)
    model, tokenizer = load_model(args.model, device=args.device)
    enable(model)
    inputs = batch_prompts(tokenizer, args.prompt, chat=args.chat, device=model.device)
    prompt_width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    new_tokens = sequences[:, prompt_width:]
    lengths = completion_lengths(model, tokenizer, new_tokens)
    texts = decode_completions(tokenizer, new_tokens, lengths)
    distortion = getattr(out, "distortion", None)
    per_prompt = max(1, len(texts) // len(args.prompt))
    rows = []
    for index, (text, length) in enumerate(zip(texts, lengths, strict=True)):
        prompt_index = min(index // per_prompt, len(args.prompt) - 1)
        row: dict[str, Any] = {
            "index": index,
            "prompt_index": prompt_index,
            "prompt": args.prompt[prompt_index],
            "text": text,
            "num_new_tokens": length,
            "distortion": None,
        }
        if distortion is not None:
            row["distortion"] = {
                "per_step": [float(v) for v in distortion.per_step[index, :length].tolist()],
                "total": float(distortion.total[index]),
            }
        rows.append(row)
    cost = getattr(out, "cost", None)
    cost_dict = dataclasses.asdict(cost) if cost is not None else None

    if args.json:
        print_json(
            {
                "model": args.model,
                "decoding": args.decoding,
                "generate_kwargs": kwargs,
                "sequences": rows,
                "cost": cost_dict,
            }
        )
        return 0
    for row in rows:
        total = "n/a" if row["distortion"] is None else f"{row['distortion']['total']:.4f}"
        print(f"[{row['index']}] prompt: {row['prompt']}")
        print(row["text"])
        print(f"-- {row['num_new_tokens']} new tokens, total distortion log eps(w) = {total}\n")
    if cost_dict is not None:
        seconds = cost_dict["seconds"].get("total")
        timing = f", {seconds:.2f} s" if seconds is not None else ""
        print(f"cost: {cost_dict['forward_passes']} forward passes, {cost_dict['generated_tokens']} tokens{timing}")
    return 0
