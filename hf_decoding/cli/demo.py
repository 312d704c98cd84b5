"""`hf-decoding demo`: five decoding strategies side by side on SmolLM2-135M-Instruct, with their distortion."""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["DEMO_PROMPTS", "DEMO_STRATEGIES", "register", "run"]

DEMO_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me one tip for learning to cook.",
)

#: `(name, generate keywords)`: every other warper is switched off explicitly (transformers' default is top_k=50).
DEMO_STRATEGIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("greedy", {"decoding": "sample", "do_sample": False}),
    ("sample", {"decoding": "sample", "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    ("top-k 40", {"decoding": "sample", "do_sample": True, "temperature": 1.0, "top_k": 40, "top_p": 1.0}),
    ("top-p 0.9", {"decoding": "sample", "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.9}),
    (
        "distortion-aware nucleus 0.9",
        {"decoding": "distortion_aware_nucleus", "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.9},
    ),
)


def register(subparsers: Any) -> None:
    """Adds the `demo` subcommand."""
    from ._common import add_device_argument

    parser = subparsers.add_parser(
        "demo",
        help="Compare greedy, sampling, top-k, top-p and the distortion-aware nucleus on SmolLM2.",
        description=(
            "Loads an offline model (SmolLM2-135M-Instruct by default), batches three chat prompts and decodes them "
            "with greedy, pure sampling, top-k 40, top-p 0.9 and decoding='distortion_aware_nucleus' top-p 0.9. "
            "Prints each completion with its total distortion log eps(w) and the speed of each strategy."
        ),
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Offline model name (see `hf-decoding env`).")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="Tokens to generate per prompt (default: 48).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every sampling strategy (default: 0).")
    parser.add_argument("--json", action="store_true", help="Print a JSON document instead of text.")
    add_device_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns the exit code."""
    import torch

    from ..registry import enable
    from ._common import batch_prompts, completion_lengths, decode_completions, load_model, print_json

    model, tokenizer = load_model(args.model, device=args.device, local_dirs=False)
    enable(model)
    inputs = batch_prompts(tokenizer, DEMO_PROMPTS, chat=True, device=model.device)
    prompt_width = inputs["input_ids"].shape[1]
    report = []
    for name, strategy_kwargs in DEMO_STRATEGIES:
        kwargs = {
            **strategy_kwargs,
            "max_new_tokens": args.max_new_tokens,
            "return_dict_in_generate": True,
            "seed": args.seed,
        }
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - started
        new_tokens = out.sequences[:, prompt_width:]
        lengths = completion_lengths(model, tokenizer, new_tokens)
        texts = decode_completions(tokenizer, new_tokens, lengths)
        totals = out.distortion.total.tolist() if out.distortion is not None else [None] * len(texts)
        generated = out.cost.generated_tokens if out.cost is not None else sum(lengths)
        report.append(
            {
                "name": name,
                "generate_kwargs": kwargs,
                "seconds": seconds,
                "generated_tokens": generated,
                "tokens_per_second": generated / seconds if seconds > 0 else None,
                "completions": [
                    {"prompt": prompt, "text": text, "num_new_tokens": length, "total_distortion": total}
                    for prompt, text, length, total in zip(DEMO_PROMPTS, texts, lengths, totals, strict=True)
                ],
            }
        )

    if args.json:
        print_json(
            {
                "model": args.model,
                "seed": args.seed,
                "max_new_tokens": args.max_new_tokens,
                "prompts": list(DEMO_PROMPTS),
                "strategies": report,
            }
        )
        return 0
    print(f"model: {args.model}   max_new_tokens: {args.max_new_tokens}   seed: {args.seed}")
    print("total distortion = log eps(w) = sum_t -log Z_t (0 for greedy and pure sampling)\n")
    for entry in report:
        speed = entry["tokens_per_second"]
        print(f"== {entry['name']}  ({entry['generated_tokens']} tokens, {speed:.1f} tokens/s)")
        for index, completion in enumerate(entry["completions"]):
            total = completion["total_distortion"]
            total_text = "n/a" if total is None else f"{total:.3f}"
            text = " ".join(completion["text"].split())
            print(f"  [{index}] distortion {total_text:>7}  {text}")
        print()
    return 0
