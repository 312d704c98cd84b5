"""`hf-decoding diffusion {train,eval,generate}`: the small masked-diffusion LM on offline text."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from ._common import add_command, add_command_group, add_common_arguments, from_args

__all__ = ["add_parser", "load_denoiser", "register", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Adds the `diffusion` command group (`train`, `eval`, `generate`) to `subparsers`."""
    from ..diffusion.training import DenoiserTrainingConfig

    _, commands = add_command_group(
        subparsers,
        "diffusion",
        help="train / evaluate / sample a small masked-diffusion LM (character level, offline fortunes)",
        metavar="{train,eval,generate}",
        title=None,
        defaults={"diffusion_command": None},
    )

    train = add_command(
        commands,
        "train",
        help="train the denoiser (accelerate-aware, tqdm progress); saves model + tokenizer",
        description="Trains a BertForMaskedLM (or ModernBertForMaskedLM) with LLaDA's masked-diffusion loss on "
        "Debian fortunes (apt-get install fortunes). Every option is a DenoiserTrainingConfig field.",
        handler=run,
        help_parser=True,
    )
    for name, (default, help_text) in DenoiserTrainingConfig.field_help().items():
        kind = type(default) if default is not None else int
        train.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=default,
            help=f"{help_text} (default: {default})".replace("%", "%%"),
        )  # argparse formats help
    add_common_arguments(train, no_progress="hide the progress bar", json="print the summary as JSON")

    def trained_model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        """An action on a denoiser that `diffusion train` wrote (`--model`)."""
        parser = add_command(commands, name, help=help_text, handler=run, help_parser=True)
        parser.add_argument("--model", required=True, help="directory written by `diffusion train`")
        return parser

    evaluate = trained_model_command(
        "eval", "NFE-vs-quality table (teacher-forced policy NLL) and the mutual-information bound"
    )
    evaluate.add_argument("--prompt-length", type=int, default=32, help="prompt tokens of each held-out window")
    evaluate.add_argument("--windows", type=int, default=64, help="held-out windows scored per policy")
    evaluate.add_argument("--mi-windows", type=int, default=16, help="windows for the mutual-information estimate")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the random positions")
    evaluate.add_argument("--output", default=None, help="also write the result as JSON here")
    add_common_arguments(evaluate, json="print JSON instead of a table")

    generate = trained_model_command("generate", "sample continuations with decoding='masked_diffusion'")
    generate.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    generate.add_argument("--gen-length", type=int, default=64)
    generate.add_argument("--diffusion-steps", type=int, default=None, help="default: gen-length")
    generate.add_argument("--block-length", type=int, default=None)
    generate.add_argument("--unmasking", default="low_confidence")
    generate.add_argument("--unmasking-threshold", type=float, default=0.9)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--seed", type=int, default=0)
    add_common_arguments(generate, json="print JSON")


def load_denoiser(path: str) -> tuple[Any, Any, dict[str, Any]]:
    """`(model, tokenizer, training_summary)` of a directory written by `diffusion train`."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    summary: dict[str, Any] = {}
    summary_path = os.path.join(path, "training_summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
    return model, tokenizer, summary


def run(args: argparse.Namespace) -> int:
    """Dispatches to `train`, `eval` or `generate`; returns the exit code."""
    command = getattr(args, "diffusion_command", None)
    if command is None:
        import sys

        args.help_parser.print_help(sys.stderr)
        return 2
    if command == "train":
        return _train(args)
    if command == "eval":
        return _evaluate(args)
    return _generate(args)


def _train(args: argparse.Namespace) -> int:
    from ..diffusion.training import DenoiserTrainingConfig, train_denoiser

    names = DenoiserTrainingConfig.field_help()
    config = DenoiserTrainingConfig(**{name: getattr(args, name) for name in names})
    summary = train_denoiser(config, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"saved to {config.output_dir}: {summary['parameters'] / 1e6:.2f}M parameters, {summary['steps']} steps "
            f"in {summary['train_seconds']:.0f} s, held-out masked NLL "
            f"{summary['heldout_masked_nll_bits_per_char']:.3f} bits/char"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..diffusion.evaluation import mutual_information_estimate, nfe_quality_table, theorem1_prediction
    from ..diffusion.training import DenoiserTrainingConfig, heldout_windows

    model, tokenizer, summary = load_denoiser(args.model)
    config = DenoiserTrainingConfig(**summary.get("config", {}))
    windows = heldout_windows(tokenizer, config, max(args.windows, args.mi_windows))
    gen_length = windows.shape[1] - args.prompt_length
    table = nfe_quality_table(model, windows[: args.windows], args.prompt_length, seed=args.seed)
    mi = mutual_information_estimate(model, windows[: args.mi_windows], args.prompt_length)
    reference = table[0]["nll_bits_per_token"]
    for row in table:
        steps = row.get("diffusion_steps")
        if row.get("unmasking") == "random" and steps:
            # Theorem 1 with the estimated mutual information, per token, in bits (eps_train unknown, taken as 0)
            row["theorem1_bound_bits_per_token"] = theorem1_prediction(mi["sum_bits"], gen_length, steps) / gen_length
    result = {
        "model": args.model,
        "prompt_length": args.prompt_length,
        "gen_length": gen_length,
        "windows": args.windows,
        "reference_nll_bits_per_token": reference,
        "table": table,
        "mutual_information": mi,
        "training": {k: v for k, v in summary.items() if k != "config"},
    }
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=1)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'policy':<26} {'NLL bits/tok':>12} {'Δ vs T=G':>9} {'NFE':>7} {'speed-up':>8} {'Thm1 bound':>10}")
    for row in table:
        bound = row.get("theorem1_bound_bits_per_token")
        print(
            f"{row['policy']:<26} {row['nll_bits_per_token']:>12.4f} {row['delta_nll_bits_per_token']:>9.4f} "
            f"{row['forward_passes_per_sequence']:>7.2f} {row['speedup_vs_one_per_step']:>7.2f}x "
            f"{'' if bound is None else f'{bound:.4f}':>10}"
        )
    print(f"sum_i I(X_i; X_-i | prompt) ~ {mi['sum_bits']:.2f} bits over {gen_length} positions")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from ..decoders.masked_diffusion import attach_masked_diffusion_generate

    model, tokenizer, _ = load_denoiser(args.model)
    attach_masked_diffusion_generate(model)
    prompts = args.prompt or ["The best way to "]
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_k": 0} if args.temperature > 0 else {}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            **from_args(args, "gen_length", "diffusion_steps", "block_length", "unmasking", "unmasking_threshold"),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=args.seed,
            return_dict_in_generate=True,
            **sampling,
        )
    texts = tokenizer.batch_decode(out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    record = {
        "prompts": prompts,
        "completions": texts,
        "forward_passes": out.cost.forward_passes,
        "generated_tokens": out.cost.generated_tokens,
        "seconds": out.cost.seconds["total"],
    }
    if args.json:
        print(json.dumps(record))
        return 0
    for prompt, text in zip(prompts, texts, strict=True):
        print(f"{prompt}|{text}")
    print(
        f"forward passes: {record['forward_passes']}, tokens: {record['generated_tokens']}, {record['seconds']:.2f} s"
    )
    return 0


#: The name the other `hf_decoding.cli` modules use for `add_parser`.
register = add_parser
