"""Detection evaluation: human text vs continuations of the same prefixes by an offline model.

Prints the AUROC table (machine = positive), writes the JSON (sizes, timings, AUROCs, raw scores, examples) and a
ROC figure. Human text: Debian fortunes (`--human-source fortunes`, needs `apt-get install fortunes`) or passages
of a Project Gutenberg book (`--human-source gutenberg`, the book in the `eval` extra's reasoning-gym wheel). The
figure needs the `plot` extra.

    python benchmarks/eval_detection.py --num-texts 100 --lengths 32 64 128 \
        --out docs/results/detection_smollm2.json --plot docs/results/figures/detection_roc_smollm2.png
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--human-source", choices=["fortunes", "gutenberg"], default="fortunes")
    parser.add_argument("--num-texts", type=int, default=100)
    parser.add_argument(
        "--aggregate", choices=["max", "marginal"], default="max", help="how the distortion detector combines its grid"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="detection methods to score (default: all)")
    parser.add_argument("--prefix-tokens", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_decoding.detection import METHODS, Detector
    from hf_decoding.detection.evaluation import evaluate_detection, load_fortunes, load_gutenberg_passages, plot_roc
    from hf_decoding.models import load_default_model

    model, tokenizer = load_default_model(args.model)
    if args.human_source == "fortunes":
        texts = load_fortunes()
        human_source = "Debian fortunes (>= 100 words, ascii, whitespace collapsed)"
    else:
        texts = load_gutenberg_passages(words=130)  # 130 words >= 144 tokens for SmolLM2 and Gemma
        human_source = "Project Gutenberg: In the Year 2889 (J. and M. Verne), consecutive 130-word passages"
    # A fixed shuffle so that the selection does not come from one or two fortune files.
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed)).tolist()
    texts = [texts[i] for i in order]
    start = time.perf_counter()
    detector = Detector(model, tokenizer, batch_size=8, aggregate=args.aggregate, progress=True)
    evaluation = evaluate_detection(
        model,
        tokenizer,
        texts,
        detector=detector,
        methods=args.methods or METHODS,
        prefix_tokens=args.prefix_tokens,
        lengths=args.lengths,
        num_texts=args.num_texts,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    total = time.perf_counter() - start
    header = ["tokens", "setting", *evaluation.methods]
    print(" | ".join(header))
    for row in evaluation.table():
        print(" | ".join([str(row["length"]), row["setting"], *(f"{row[m]:.3f}" for m in evaluation.methods)]))
    print(f"human texts: {evaluation.num_texts}, seconds: {evaluation.seconds} (total {total:.0f})")
    if args.out:
        document = {
            "model": args.model,
            "machine": f"{platform.machine()} {platform.processor()}, torch threads {args.threads}, shared CPU",
            "human_source": human_source,
            "seed": args.seed,
            "distortion_aggregate": args.aggregate,
            **evaluation.to_dict(),
        }
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(document, indent=1))
    if args.plot:
        for length in evaluation.lengths:
            path = pathlib.Path(args.plot)
            plot_roc(evaluation, path.with_name(f"{path.stem}_{length}{path.suffix}"), length=length)


if __name__ == "__main__":
    main()
