#!/usr/bin/env python
"""Our HF decoders vs the vLLM path, side by side in one process: `sample`, the distortion-aware nucleus and the
particle filter (N = 8), at B = 1 and 32 — tokens/s, and the particle filter's prefix-cache hit rate on vLLM.

Both sides run SmolLM2-135M-Instruct in float32 on the CPU from the same weights: the HF model from
`hf_decoding.load_default_model()` (`model.generate(decoding=...)` after `hf_decoding.enable`), the vLLM engine
in-process on `hf_decoding.models.model_cache_dir()` (`enforce_eager=True`, prefix caching on, 32-token KV blocks:
vLLM's CPU default of 128 never hits on prefixes this short).

Cells (one warm-up run of each side, then `--repeats` timed runs, medians):

* `sample`: `decoding="sample"` vs `SamplingParams(temperature=1)`;
* `nucleus`: `decoding="distortion_aware_nucleus", top_p=0.9` vs the vLLM logits processor
  (`extra_args={"decoding": "distortion_aware_nucleus", "top_p": 0.9}`);
* `particle_filter`: `decoding="particle_filter"` vs `hf_decoding.vllm.generate(decoding="particle_filter")`, N = 8,
  fixed steps of `--tokens-per-step` tokens, a cheap text reward (its time is not subtracted; it is microseconds).

Every row generates exactly `--new-tokens` tokens (EOS suppressed: `suppress_tokens=[eos]` on HF, `ignore_eos=True`
on vLLM), so tokens/s = B·(N)·new_tokens / seconds; for the particle filter the count is `cost.generated_tokens`.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/bench_vllm.py --quick

Writes `benchmarks/results/vllm_cpu.json` and prints a table. This is a benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: no `__main__` guard needed

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "vllm_cpu.json"
TOPICS = [
    "the sea",
    "a mountain",
    "winter",
    "a city at night",
    "a cat",
    "the moon",
    "rain",
    "a library",
    "coffee",
    "a train",
    "autumn leaves",
    "a lighthouse",
    "the desert",
    "a garden",
    "a river",
    "snow",
    "a violin",
    "stars",
    "a bakery",
    "the wind",
    "an old house",
    "a market",
    "the forest",
    "a bridge",
    "summer",
    "a clock",
    "the ocean",
    "a candle",
    "a storm",
    "a bicycle",
    "a festival",
    "the sunrise",
]


def reward(prompts: list[str], texts: list[str]) -> list[list[float]]:
    """Cheap text reward in [0, 1]: more distinct words scores higher."""
    return [[min(0.95, 0.05 + len(set(t.split())) / 40)] for t in texts]


def prompts_for(batch: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}.\n\n" for i in range(batch)]


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_batch(batch: int, model: Any, tok: Any, llm: Any, args: argparse.Namespace, new_tokens: int, repeats: int):
    """The three cells at one batch size: rows of `{method, batch, hf_*, vllm_*, speedup}`."""
    import vllm

    from hf_decoding.vllm import generate as vllm_generate

    n = args.num_particles
    eos = tok.eos_token_id
    rows: list[dict[str, Any]] = []
    prompts = prompts_for(batch)
    inputs = tok(prompts, return_tensors="pt", padding=True)
    hf_common = {
        "do_sample": True,
        "top_k": 0,
        "max_new_tokens": new_tokens,
        "suppress_tokens": [eos],
        "seed": 0,
        "return_dict_in_generate": True,
    }

    def hf_sample():
        return model.generate(**inputs, decoding="sample", **hf_common)

    def hf_nucleus():
        return model.generate(**inputs, decoding="distortion_aware_nucleus", top_p=args.top_p, **hf_common)

    def hf_pf():
        return model.generate(
            **inputs,
            decoding="particle_filter",
            num_particles=n,
            reward_model=reward,
            tokenizer=tok,
            step_delimiter="",
            tokens_per_step=args.tokens_per_step,
            **hf_common,
        )

    def vllm_params(**extra):
        return vllm.SamplingParams(temperature=1.0, max_tokens=new_tokens, ignore_eos=True, seed=0, **extra)

    def vllm_sample():
        return llm.generate(prompts, vllm_params(), use_tqdm=False)

    def vllm_nucleus():
        extra = {"decoding": "distortion_aware_nucleus", "top_p": args.top_p}
        return llm.generate(prompts, vllm_params(extra_args=extra), use_tqdm=False)

    def vllm_pf():
        return vllm_generate(
            llm,
            prompts,
            decoding="particle_filter",
            num_particles=n,
            reward_model=reward,
            step_delimiter="",
            tokens_per_step=args.tokens_per_step,
            max_new_tokens=new_tokens,
            seed=0,
            sampling_params={"ignore_eos": True},
        )

    cells = [
        ("sample", hf_sample, vllm_sample, batch * new_tokens),
        ("nucleus", hf_nucleus, vllm_nucleus, batch * new_tokens),
        ("particle_filter", hf_pf, vllm_pf, None),
    ]
    for method, hf_fn, vllm_fn, tokens in cells:
        row: dict[str, Any] = {"method": method, "batch": batch}
        for side, fn in (("hf", hf_fn), ("vllm", vllm_fn)):
            seconds, out = timed(fn, repeats)
            count = tokens
            if method == "particle_filter":
                count = int(out.cost.generated_tokens)
                if side == "vllm":
                    row["vllm_prefix_cache_hit_rate"] = out.prefix_cache.hit_rate
                    row["vllm_prefix_cache"] = {
                        "prompt_tokens": out.prefix_cache.prompt_tokens,
                        "cached_tokens": out.prefix_cache.cached_tokens,
                        "requests": out.prefix_cache.requests,
                    }
            row[f"{side}_seconds"] = seconds
            row[f"{side}_tokens"] = count
            row[f"{side}_tok_s"] = count / seconds
        row["speedup"] = row["vllm_tok_s"] / row["hf_tok_s"]
        rows.append(row)
        print(
            f"  {method:16s} B={batch:<3d} hf {row['hf_tok_s']:8.1f} tok/s   vllm {row['vllm_tok_s']:8.1f} tok/s",
            flush=True,
        )

    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 5 minutes on 2 CPU cores)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per row (default 64; --quick 32)")
    parser.add_argument("--tokens-per-step", type=int, default=8)
    parser.add_argument("--num-particles", type=int, default=8)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    new_tokens = args.new_tokens or (32 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)

    import vllm

    import hf_decoding as hfd
    from hf_decoding.models import model_cache_dir

    started = time.perf_counter()
    model, tok = hfd.load_default_model(dtype=torch.float32)
    hfd.enable(model)
    tok.padding_side = "left"
    t0 = time.perf_counter()
    llm = vllm.LLM(
        model=str(model_cache_dir()),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        seed=0,
        kv_cache_memory_bytes=2 << 30,
        enable_prefix_caching=True,
        block_size=32,
        # vLLM 0.32 on CPU: a seeded request whose prefill is chunked across engine steps crashes the runner
        # ("CPU Generator does not use offset"); 256 particles continuing their prefixes hit it.
        enable_chunked_prefill=False,
    )
    engine_start = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []

    for batch in args.batches:
        rows.extend(bench_batch(batch, model, tok, llm, args, new_tokens, repeats))

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "vllm": vllm.__version__,
            "python": sys.version.split()[0],
        },
        "model": "SmolLM2-135M-Instruct (float32, CPU)",
        "settings": {
            "new_tokens": new_tokens,
            "num_particles": args.num_particles,
            "tokens_per_step": args.tokens_per_step,
            "top_p": args.top_p,
            "repeats": repeats,
            "quick": args.quick,
            "vllm_engine": {
                "enforce_eager": True,
                "enable_prefix_caching": True,
                "block_size": 32,
                "enable_chunked_prefill": False,
            },
        },
        "engine_start_seconds": engine_start,
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| method | B | HF tok/s | vLLM tok/s | vLLM / HF | vLLM prefix-cache hit rate |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        hit = row.get("vllm_prefix_cache_hit_rate")
        hit_text = f"{hit:.1%}" if hit is not None else "–"
        print(
            f"| {row['method']} | {row['batch']} | {row['hf_tok_s']:.1f} | {row['vllm_tok_s']:.1f} | "
            f"{row['speedup']:.2f}× | {hit_text} |"
        )
    print(f"\nengine start {engine_start:.1f} s, total {result['wall_seconds']:.0f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
