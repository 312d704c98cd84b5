"""`hf-decoding autodeco {build-data,train,eval,export-custom-generate,export-vllm}`: the AutoDeco workflow from the shell.

```
hf-decoding autodeco build-data --task arithmetic --num-problems 300 --samples-per-problem 8 --output data.jsonl
hf-decoding autodeco train --data data.jsonl --output-dir heads --max-steps 300 --learning-rate 1e-3
hf-decoding autodeco eval --heads heads --num-problems 48 --seeds 0 1 2 --output-json results.json
hf-decoding autodeco export-custom-generate --heads heads --output hub-folder --repo-id me/autodeco-smollm2
hf-decoding autodeco export-vllm heads merged-for-vllm
```

Multi-GPU training: `accelerate launch -m hf_decoding autodeco train ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from ._common import add_command, add_command_group, add_common_arguments, from_args

__all__ = ["add_parser", "main", "register", "run"]

logger = logging.getLogger(__name__)

#: The `train` arguments passed to `AutoDecoLossConfig` under their own names.
_LOSS_ARGUMENTS = ("cumsum", "steepness", "top_k_candidates", "dft_weight", "easy_token_mask_prob", "chunk_size")


def add_parser(subparsers: Any) -> None:
    """Adds the `autodeco` subcommand and its four actions to `subparsers`."""
    _, actions = add_command_group(
        subparsers,
        "autodeco",
        help="AutoDeco heads: build data, train, evaluate, export a custom_generate folder.",
        description="Train and evaluate AutoDeco temperature/top-p heads on any causal LM (arXiv 2510.26697).",
        defaults={"handler": None},
    )

    def action(name: str, help_text: str, description: str, *, common: bool = True) -> argparse.ArgumentParser:
        parser = add_command(actions, name, help=help_text, description=description, handler=run, autodeco_action=name)
        if common:
            add_common_arguments(
                parser,
                model="Base model: a local directory or an offline model name (default: SmolLM2-135M-Instruct).",
                device="Device, e.g. cpu or cuda (default: cpu).",
                threads=True,
                json=True,
                no_progress=True,
            )
        return parser

    def task_args(p: argparse.ArgumentParser, problems: int, seed: int) -> None:
        p.add_argument(
            "--task",
            default="arithmetic",
            help="'arithmetic', 'word_problems' or 'reasoning_gym:<dataset>' (default: arithmetic).",
        )
        p.add_argument("--num-problems", type=int, default=problems, help=f"Problems (default: {problems}).")
        p.add_argument("--problem-seed", type=int, default=seed, help=f"Seed of the problem generator ({seed}).")

    build = action(
        "build-data",
        "Rejection-sampled training data from the model itself.",
        "Samples completions of generated problems and keeps the correct ones.",
    )
    task_args(build, 300, 1)
    build.add_argument("--samples-per-problem", type=int, default=8)
    build.add_argument("--max-kept-per-problem", type=int, default=None)
    build.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of the data (1.0).")
    build.add_argument("--top-p", type=float, default=1.0, help="Sampling top-p of the data (1.0).")
    build.add_argument("--max-new-tokens", type=int, default=16)
    build.add_argument("--batch-size", type=int, default=32, help="Prompts per batch.")
    build.add_argument("--seed", type=int, default=0, help="Sampler seed.")
    build.add_argument("--output", required=True, help="Output JSONL path.")

    train = action(
        "train",
        "Train the heads (accelerate-aware; optional joint LoRA).",
        "Trains AutoDeco heads on prompt/completion JSONL.",
    )
    train.add_argument("--data", required=True, help="Prompt/completion JSONL.")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--base-id", default=None, help="Hub id of the base to record (default: the loaded path).")
    train.add_argument("--base-revision", default=None)
    train.add_argument("--heads", default=None, help="Start from these trained heads instead of fresh ones.")
    train.add_argument("--init-temperature", type=float, default=None, help="Step-0 temperature of fresh heads.")
    train.add_argument("--init-top-p", type=float, default=None, help="Step-0 top-p of fresh heads.")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--warmup-steps", type=int, default=20)
    train.add_argument("--max-length", type=int, default=2048)
    train.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--save-steps", type=int, default=None)
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="Resume from the latest checkpoint in --output-dir, or from the given one.",
    )
    train.add_argument("--lora-r", type=int, default=0, help="Rank of a jointly trained LoRA of the base (0: none).")
    train.add_argument("--lora-alpha", type=int, default=16)
    train.add_argument("--cumsum", choices=["exclusive", "inclusive"], default="exclusive")
    train.add_argument("--steepness", type=float, default=30.0)
    train.add_argument("--top-k-candidates", type=int, default=256)
    train.add_argument("--dft-weight", choices=["base", "scaled", "none"], default="base")
    train.add_argument("--easy-token-mask-prob", type=float, default=0.6)
    train.add_argument("--chunk-size", type=int, default=1024)
    train.add_argument("--no-temperature-head", action="store_true")
    train.add_argument("--no-top-p-head", action="store_true")
    train.add_argument("--control", action="store_true", help="Add the natural-language control ranking loss.")
    train.add_argument("--control-margin", type=float, default=0.1)
    train.add_argument("--control-weight", type=float, default=1.0)

    evaluate = action(
        "eval",
        "Compare AutoDeco with greedy, static and oracle settings.",
        "Runs the protocol of docs/results/autodeco.md.",
    )
    task_args(evaluate, 48, 12345)
    evaluate.add_argument("--heads", required=True, help="Trained heads (directory or Hub id).")
    evaluate.add_argument("--exclude-data", default=None, help="JSONL whose prompts are removed from the test set.")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    evaluate.add_argument("--num-samples", type=int, default=4)
    evaluate.add_argument("--k", type=int, default=4)
    evaluate.add_argument("--max-new-tokens", type=int, default=16)
    evaluate.add_argument("--batch-size", type=int, default=48)
    evaluate.add_argument("--vendor-temperature", type=float, default=0.2)
    evaluate.add_argument("--vendor-top-p", type=float, default=0.9)
    evaluate.add_argument("--grid-temperatures", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 1.0])
    evaluate.add_argument("--grid-top-ps", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    evaluate.add_argument(
        "--control-heads", default=None, help="Also measure natural-language control consistency of these heads."
    )
    evaluate.add_argument("--control-prompts", type=int, default=50)
    evaluate.add_argument("--output-json", default=None)
    evaluate.add_argument(
        "--checkpoint",
        default=None,
        help="JSON file of finished runs; rerunning with it resumes an interrupted evaluation.",
    )
    evaluate.add_argument("--output-md", default=None)

    export = action(
        "export-custom-generate",
        "Write a Hub folder with custom_generate/.",
        "Heads + custom_generate/generate.py so base.generate(custom_generate="
        "<repo>, trust_remote_code=True) runs AutoDeco without hf-decoding.",
        common=False,
    )
    export.add_argument("--heads", required=True, help="Directory written by save_pretrained.")
    export.add_argument("--output", required=True)
    export.add_argument("--repo-id", default=None, help="Target Hub repo (where generate.py reads the heads).")
    export.add_argument("--json", action="store_true")

    export_vllm = action(
        "export-vllm",
        "Write a merged checkpoint that stock vLLM serves with the heads applied.",
        "Base weights under llm., the heads and a config.json with model_type autodeco (the official merged "
        "layout), so vllm.LLM(model=OUT_DIR) runs AutoDeco through the hf_decoding vLLM plugin.",
        common=False,
    )
    export_vllm.add_argument("heads_dir", metavar="HEADS_DIR", help="AutoDeco heads: a directory or a Hub id.")
    export_vllm.add_argument("out_dir", metavar="OUT_DIR", help="Where the merged checkpoint goes.")
    export_vllm.add_argument(
        "--base-model", default=None, help="The base model's directory or id (default: the one the heads name)."
    )
    export_vllm.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="Cast the base weights (the heads stay float32).",
    )
    export_vllm.add_argument("--json", action="store_true")


register = add_parser


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from ._common import load_model

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return load_model(args.model, device=args.device)


def run(args: argparse.Namespace) -> int:
    """Runs the chosen `autodeco` action; returns the exit code."""
    action = getattr(args, "autodeco_action", None)
    handlers = {
        "build-data": _build_data,
        "train": _train,
        "eval": _eval,
        "export-custom-generate": _export,
        "export-vllm": _export_vllm,
    }
    if action not in handlers:
        args.help_parser.print_help(sys.stderr)
        return 2
    return handlers[action](args)


def _build_data(args: argparse.Namespace) -> int:
    from ..autodeco.data import build_rejection_sampled_data, get_task, write_jsonl

    task = get_task(args.task)
    model, tokenizer = _load(args)
    problems = task.generate(args.num_problems, seed=args.problem_seed)
    started = time.perf_counter()
    options = from_args(args, "samples_per_problem", "max_kept_per_problem", "temperature", "top_p", "max_new_tokens")
    options.update(from_args(args, "batch_size", "seed"), progress=not args.no_progress)
    rows, stats = build_rejection_sampled_data(model, tokenizer, problems, **options)
    write_jsonl(args.output, rows)
    stats.update(
        task=args.task,
        problem_seed=args.problem_seed,
        output=args.output,
        seconds=round(time.perf_counter() - started, 1),
    )
    _emit(
        args,
        stats,
        f"kept {stats['rows']} rows ({stats['correct_samples']}/{stats['samples']} samples correct "
        f"on {stats['problems']} problems) -> {args.output} in {stats['seconds']} s",
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..autodeco import AutoDecoLossConfig, AutoDecoModelForCausalLM, AutoDecoTrainingConfig, train_heads
    from ..autodeco.control import ControlConfig

    base, tokenizer = _load(args)
    if args.heads:
        model = AutoDecoModelForCausalLM.from_pretrained(args.heads, base_model=base)
    else:
        model = AutoDecoModelForCausalLM.from_base(
            base,
            base_model_name_or_path=args.base_id,
            base_model_revision=args.base_revision,
            init_temperature=args.init_temperature,
            init_top_p=args.init_top_p,
            seed=args.seed,
        )
    config = AutoDecoTrainingConfig(
        **from_args(args, "output_dir", "learning_rate", "max_steps", "gradient_accumulation_steps", "warmup_steps"),
        **from_args(args, "max_length", "mixed_precision", "seed", "save_steps", "lora_r", "lora_alpha"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        resume_from_checkpoint=args.resume,
        train_temperature_head=not args.no_temperature_head,
        train_top_p_head=not args.no_top_p_head,
        loss=AutoDecoLossConfig(**from_args(args, *_LOSS_ARGUMENTS)),
        control=ControlConfig(margin=args.control_margin, weight=args.control_weight) if args.control else None,
        progress_bar=not args.no_progress,
    )
    result = train_heads(model, args.data, tokenizer, config)
    document = result.to_dict()
    last = result.history[-1] if result.history else {}
    _emit(
        args,
        document,
        f"trained {result.global_step} steps on {result.num_examples} examples "
        f"({result.num_positions} positions) in {result.seconds:.0f} s; last losses "
        f"{ {k: round(v, 4) for k, v in last.items()} }; heads saved to {result.output_dir}",
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..autodeco import AutoDecoModelForCausalLM
    from ..autodeco.data import get_task, read_jsonl
    from ..autodeco.eval import report_markdown, run_evaluation

    base, tokenizer = _load(args)
    model = AutoDecoModelForCausalLM.from_pretrained(args.heads, base_model=base)
    task = get_task(args.task)
    problems = task.generate(args.num_problems * 3, seed=args.problem_seed)
    excluded: set[str] = set()
    if args.exclude_data:
        excluded = {json.dumps(row["prompt"], sort_keys=True) for row in read_jsonl(args.exclude_data)}
    seen: set[str] = set()
    kept = []
    for problem in problems:
        key = json.dumps(problem.messages, sort_keys=True)
        if key in excluded or key in seen:
            continue
        seen.add(key)
        kept.append(problem)
    problems = kept[: args.num_problems]
    options = from_args(args, "seeds", "num_samples", "k", "max_new_tokens", "batch_size", "checkpoint")
    options.update(
        from_args(args, "grid_temperatures", "grid_top_ps"), vendor=(args.vendor_temperature, args.vendor_top_p)
    )
    report = run_evaluation(model, tokenizer, problems, **options, progress=not args.no_progress)
    document = report.to_dict()
    document["settings"].update(
        task=args.task,
        problem_seed=args.problem_seed,
        heads=args.heads,
        excluded_training_prompts=bool(args.exclude_data),
    )
    if args.control_heads:
        document["control"] = _control_report(args, base, tokenizer, task)
    markdown = report_markdown(document)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, default=str)
    if args.output_md:
        with open(args.output_md, "w", encoding="utf-8") as handle:
            handle.write(markdown)
    _emit(args, document, markdown)
    return 0


def _control_report(args: argparse.Namespace, base: Any, tokenizer: Any, task: Any) -> dict[str, Any]:
    """Control consistency of the plain heads and of the control-trained heads, on held-out prompts, scored on
    the greedy answer to the prompt without command."""
    from ..autodeco import AutoDecoModelForCausalLM
    from ..autodeco.control import measure_control_consistency
    from ..autodeco.data import generate_samples

    problems = task.generate(args.control_prompts, seed=args.problem_seed + 1)
    prompts = [p.messages for p in problems]
    completions = [
        c[0].strip()
        for c in generate_samples(
            base,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            do_sample=False,
        )
    ]
    out = {}
    for name, heads in (("heads", args.heads), ("control_heads", args.control_heads)):
        model = AutoDecoModelForCausalLM.from_pretrained(heads, base_model=base)
        out[name] = measure_control_consistency(model, tokenizer, prompts, completions).to_dict()
    return out


def _export(args: argparse.Namespace) -> int:
    from ..autodeco.hub import export_custom_generate

    path = export_custom_generate(args.heads, args.output, repo_id=args.repo_id)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    _emit(args, {"output": str(path), "files": files}, f"wrote {path}: {', '.join(files)}")
    return 0


def _export_vllm(args: argparse.Namespace) -> int:
    import torch

    from ..vllm.export import export_for_vllm

    dtype = getattr(torch, args.dtype) if args.dtype else None
    path = export_for_vllm(args.heads_dir, args.out_dir, base_model=args.base_model, dtype=dtype)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    _emit(args, {"output": str(path), "files": files}, f"wrote {path}: {', '.join(files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs `autodeco` directly (`python -m hf_decoding.cli.autodeco ...`, e.g. under `accelerate launch`)."""
    parser = argparse.ArgumentParser(prog="hf-decoding")
    subparsers = parser.add_subparsers(dest="command")
    add_parser(subparsers)
    args = parser.parse_args(["autodeco", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.handler is None:
        args.help_parser.print_help(sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
