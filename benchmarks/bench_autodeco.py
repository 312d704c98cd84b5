"""AutoDeco overhead: generation latency with the heads vs plain sampling of the same base, at fixed length.

Compares, for each batch size, with `min_new_tokens = max_new_tokens` (every row generates exactly N tokens):

- `transformers`: the built-in sampling loop (`do_sample=True, temperature=0.8, top_p=0.9, top_k=0`);
- `sample`: `decoding="sample"`, our reference loop with the same static warpers (what AutoDeco runs on);
- `autodeco`: the AutoDeco wrapper's default decoding (heads on the last hidden state, per-row T and p).

Methods are interleaved within each repeat and the median is reported; the overhead is
`median(autodeco) / median(sample) - 1` (and against transformers' loop). Prints a table and writes JSON.

CPU (the offline SmolLM2-135M-Instruct):
    python benchmarks/bench_autodeco.py --threads 1 --out autodeco_cpu.json
GPU (~1.2B-parameter Llama with random weights, bf16):
    python benchmarks/bench_autodeco.py --model random-1b --device cuda --dtype bfloat16 --new-tokens 256 \
        --out autodeco_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch


def _random_1b(dtype: torch.dtype, device: str) -> tuple[Any, None]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(  # Llama-3.2-1B shapes
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model, None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Offline model name or 'random-1b'.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hf_decoding.autodeco import AutoDecoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    if args.model == "random-1b":
        base, _ = _random_1b(dtype, args.device)
    else:
        from hf_decoding.models import load_default_model

        base, _ = load_default_model(args.model, dtype=dtype, device=args.device)
    model = AutoDecoModelForCausalLM.from_base(base, seed=0)
    head_mb = model.heads.size_bytes() / 2**20
    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    static = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0}
    fixed = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    methods = {
        "transformers": lambda inputs: base.generate(**inputs, **static, **fixed),
        "sample": lambda inputs: model.generate(**inputs, decoding="sample", **static, **fixed),
        "autodeco": lambda inputs: model.generate(**inputs, **fixed),
    }
    rows = []
    for batch in args.batch_sizes:
        ids = torch.randint(3, vocab, (batch, args.prompt_tokens), generator=generator).to(args.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times: dict[str, list[float]] = {name: [] for name in methods}
        with torch.no_grad():
            for run in methods.values():  # warm-up
                run(inputs)
            for _ in range(args.repeats):
                for name, run in methods.items():
                    _sync(args.device)
                    start = time.perf_counter()
                    out = run(inputs)
                    _sync(args.device)
                    times[name].append(time.perf_counter() - start)
                    assert out.shape[1] == args.prompt_tokens + args.new_tokens
        median = {name: statistics.median(values) for name, values in times.items()}
        rows.append(
            {
                "batch_size": batch,
                "seconds": median,
                "all_seconds": times,
                "overhead_vs_sample": median["autodeco"] / median["sample"] - 1,
                "overhead_vs_transformers": median["autodeco"] / median["transformers"] - 1,
                "ms_per_token_autodeco": 1000 * median["autodeco"] / args.new_tokens,
            }
        )
    result = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "head_megabytes": head_mb,
        "head_parameters": sum(p.numel() for p in model.heads.parameters()),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(
        f"{args.model} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads), "
        f"{args.new_tokens} new tokens, heads {head_mb:.2f} MB"
    )
    print(
        f"{'B':>4} {'transformers s':>15} {'sample s':>10} {'autodeco s':>11} {'vs sample':>10} {'vs transformers':>16}"
    )
    for row in rows:
        s = row["seconds"]
        print(
            f"{row['batch_size']:>4} {s['transformers']:>15.3f} {s['sample']:>10.3f} {s['autodeco']:>11.3f} "
            f"{100 * row['overhead_vs_sample']:>9.1f}% {100 * row['overhead_vs_transformers']:>15.1f}%"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
