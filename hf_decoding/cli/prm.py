"""`hf-decoding prm train`: a learned process reward model from the policy's own samples.

```
hf-decoding prm train --problems 100 --samples-per-problem 4 --heldout-problems 48 --epochs 10 --output-dir prm
```

Problems are the offline arithmetic word problems of `hf_decoding.eval.arithmetic` (one operation, gold answers);
training and held-out problems come from different generator seeds and share no question. The head, its config
and card go to `--output-dir`; the metrics are printed as JSON (and, with `--raw-dir`, written there together with
every labelled sample as soon as each stage finishes; rerun with the same arguments, a run reuses the labels
already there, so a long run can be done in shards).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any

from ._common import add_command, add_command_group, add_common_arguments, from_args

__all__ = ["add_parser", "register", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Adds the `prm` subcommand (action `train`) to `subparsers`."""
    _, actions = add_command_group(
        subparsers,
        "prm",
        help="Learned process reward model: train a step scorer on the policy's own samples.",
        description="Train a value head on a frozen causal LM that scores reasoning steps (a ProcessRewardModel).",
        defaults={"handler": None},
    )
    train = add_command(
        actions,
        "train",
        help="Sample, label (outcome propagated to steps), train the head, evaluate on held-out problems.",
        description="Trains a LearnedPRM head and prints its metrics as JSON.",
        handler=run,
        prm_action="train",
    )
    add_common_arguments(train, model="Offline base/policy model name.")
    train.add_argument("--problems", type=int, default=100, help="Training problems (default: 100).")
    train.add_argument("--samples-per-problem", type=int, default=4, help="Policy samples per problem (4).")
    train.add_argument("--heldout-problems", type=int, default=48, help="Held-out problems (default: 48).")
    train.add_argument("--epochs", type=int, default=10, help="Epochs over the step features (10).")
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--temperature", type=float, default=0.4, help="Sampling temperature of the policy (0.4).")
    train.add_argument("--max-new-tokens", type=int, default=64, help="Tokens per sample (64).")
    train.add_argument("--seed", type=int, default=0, help="Sampling seed, head init, data order (0).")
    train.add_argument("--problem-seed", type=int, default=0, help="Training problems seed; held-out uses +1000.")
    train.add_argument("--output-dir", required=True, help="Where the head, config and card go.")
    train.add_argument("--raw-dir", default=None, help="Also write labelled samples and metrics JSON here.")
    add_common_arguments(train, device="Device, e.g. cpu or cuda (default: cpu).", threads=True)
    train.add_argument("--step-tag", default=None, help="Single-token step tag (default: <file_sep>, SmolLM2's).")
    add_common_arguments(train, no_progress=True)


register = add_parser


def _problems(count: int, seed: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    from ..eval.arithmetic import INSTRUCTION, make_problems

    out: list[tuple[str, str]] = []
    seen = set(exclude)
    for problem in make_problems(count * 3 + 10, seed=seed, steps=1):
        if problem.question not in seen:
            seen.add(problem.question)
            out.append((f"{problem.question} {INSTRUCTION}", problem.answer))
        if len(out) == count:
            break
    return out


def _dump(path: pathlib.Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    """Runs `prm train`; returns the exit code."""
    if getattr(args, "prm_action", None) != "train":
        args.help_parser.print_help(sys.stderr)
        return 2
    import dataclasses
    import platform

    import torch

    from ..rewards.training import LabelledSample, PRMTrainingConfig, label_samples, train_prm
    from ._common import load_model

    options = from_args(args, "samples_per_problem", "max_new_tokens", "temperature", "epochs", "learning_rate", "seed")
    if args.step_tag:
        options["step_tag"] = args.step_tag
    config = PRMTrainingConfig(**options, base_model=args.model, progress_bar=not args.no_progress)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device, local_dirs=False)
    train_problems = _problems(args.problems, args.problem_seed)
    heldout = _problems(args.heldout_problems, args.problem_seed + 1000, {p for p, _ in train_problems})
    raw = pathlib.Path(args.raw_dir) if args.raw_dir else None
    options = config.label_options()
    labelled = {}
    for name, problems, seed in (("train", train_problems, config.seed), ("heldout", heldout, config.seed + 1_000_000)):
        # Shards: labels an earlier run with the same settings wrote to --raw-dir are reused, not resampled.
        key = json.loads(json.dumps({"problems": problems, "seed": seed, **options, "progress": None}))
        path = raw / f"labels_{name}.json" if raw is not None else None
        if path is not None and path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                logger.warning("Reusing the %s labels of %s.", name, path)
                labelled[name] = ([LabelledSample(**s) for s in stored["samples"]], stored["seconds"])
                continue
        samples, seconds = label_samples(model, tokenizer, problems, seed=seed, **options)
        labelled[name] = (samples, seconds)
        if path is not None:
            _dump(path, {"key": key, "seconds": seconds, "samples": [dataclasses.asdict(s) for s in samples]})
    result = train_prm(
        model,
        tokenizer,
        train_problems,
        heldout,
        config,
        output_dir=args.output_dir,
        train_samples=labelled["train"][0],
        heldout_samples=labelled["heldout"][0],
        labelling_seconds=labelled["train"][1] + labelled["heldout"][1],
    )
    metrics = dict(result.metrics)
    metrics["labelling_seconds_train"] = round(labelled["train"][1], 1)
    metrics["labelling_seconds_heldout"] = round(labelled["heldout"][1], 1)
    document = {
        "command": "hf-decoding " + " ".join(sys.argv[1:]) if sys.argv and "prm" in sys.argv else "prm train",
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(next(model.parameters()).device),
        },
        "problems": {"train": len(train_problems), "heldout": len(heldout), "problem_seed": args.problem_seed},
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "output_dir": args.output_dir,
    }
    if raw is not None:
        _dump(raw / "metrics.json", document)
    print(json.dumps(document, indent=2, default=str))
    return 0
