#!/usr/bin/env python
"""Our decoders vs the model's own `generate`, on the same recipe: eager + dynamic cache, eager + static cache, and
static cache + compiled forward (transformers' "static cache and torch.compile" recipe).

Cells (each a side-by-side comparison, run interleaved — A, B, A, B, ... — after one warm-up run of each side,
medians reported):

* `sample`: `decoding="sample"` with `return_dict_in_generate=True` (our loop, distortion accounting included)
  vs `model.generate(...)` (transformers' `_sample`), at B = 1, 8, 32. Same seed; both sides must return the same
  tokens (checked, reported as `same_tokens`).
* `autodeco`: `decoding="autodeco"` on an [`AutoDecoModelForCausalLM`] with random heads vs transformers' `generate`
  on the base and vs our `sample` on the base, at the same B.
* `particle_filter`: `decoding="particle_filter"` with N particles (`tokens_per_step=16`, no delimiter, a constant
  reward callable whose time is excluded: `out.cost.seconds["reward"]` is subtracted) vs
  `generate(num_return_sequences=N)`, at B = 1, N = 8 and 16.

Every run generates exactly `max_new_tokens` tokens per row (`min_new_tokens` = `max_new_tokens`). The compiled
recipe passes `compile_config=any_device_compile_config()` (transformers compiles only on accelerators unless a
compile config opts in); the warm-up of the first compiled cell of each shape includes the compilation, reported
separately as `compile_seconds` (warm-up time minus the median). Results are written to the JSON after every cell
and cells already in the file are skipped, so an interrupted run resumes.

    python benchmarks/bench_fast_path.py --threads 1                        # CPU, SmolLM2-135M-Instruct, float32
    python benchmarks/bench_fast_path.py --device cuda --model llama-1b    # GPU, random Llama-3.2-1B-like, bf16

This is a benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Any

import torch
from bench_sampling import build_inputs, load_model, machine_info

from hf_decoding import AutoDecoModelForCausalLM
from hf_decoding.generation.cache import any_device_compile_config

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
RECIPES = ("eager_dynamic", "eager_static", "compiled_static")


def recipe_kwargs(recipe: str) -> dict[str, Any]:
    if recipe == "eager_dynamic":
        return {}
    if recipe == "eager_static":
        return {"cache_implementation": "static"}
    return {"cache_implementation": "static", "compile_config": any_device_compile_config()}


def generation_kwargs(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    """Pure sampling (`top_k=0`) of exactly `args.new_tokens` tokens per row, on `recipe`."""
    return {
        "do_sample": True,
        "top_k": 0,
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        **recipe_kwargs(recipe),
    }


def constant_reward(prompts: list[str], texts: list[str]) -> list[list[float]]:
    return [[0.0] for _ in texts]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    """Seconds of one call (reward time excluded when the output counts it) and the output."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    cost = getattr(out, "cost", None)
    if cost is not None and cost.seconds:
        seconds -= cost.seconds.get("reward", 0.0)
    return seconds, out


def sequences(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.sequences


def compare(sides: dict[str, Any], device: torch.device, repeats: int, tokens: int) -> dict[str, Any]:
    """Warm-up once per side, then `repeats` interleaved rounds; medians, tokens/s, ratios to the first side."""
    warmup = {name: run_timed(fn, device) for name, fn in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            seconds, outputs[name] = run_timed(fn, device)
            times[name].append(seconds)
    result: dict[str, Any] = {}
    baseline = next(iter(sides))
    for name in sides:
        median = statistics.median(times[name])
        result[name] = {
            "median_seconds": median,
            "seconds": times[name],
            "warmup_seconds": warmup[name][0],
            "tokens_per_second": tokens / median,
        }
        if name != baseline:
            result[name]["ratio_to_" + baseline] = median / statistics.median(times[baseline])
            result[name]["pair_ratio_median"] = statistics.median(
                a / b for a, b in zip(times[name], times[baseline], strict=True)
            )
    return result


def sample_cell(model, wrapper, tokenizer, device, recipe, batch, args) -> dict[str, Any]:
    inputs = build_inputs(tokenizer, model, batch, device, args.prompt_tokens, args.seed)
    common = generation_kwargs(recipe, args)

    def transformers_generate():
        torch.manual_seed(args.seed)
        return model.generate(**inputs, **common)

    def ours():
        torch.manual_seed(args.seed)
        return model.generate(**inputs, decoding="sample", return_dict_in_generate=True, **common)

    def autodeco():
        torch.manual_seed(args.seed)
        return wrapper.generate(**inputs, decoding="autodeco", return_dict_in_generate=True, **common)

    result = compare(
        {"transformers": transformers_generate, "sample": ours, "autodeco": autodeco},
        device,
        args.repeats,
        batch * args.new_tokens,
    )
    result["same_tokens"] = bool(torch.equal(sequences(transformers_generate()), sequences(ours())))
    result["autodeco"]["ratio_to_sample"] = result["autodeco"]["median_seconds"] / result["sample"]["median_seconds"]
    return result


def particle_cell(model, tokenizer, device, recipe, n, args) -> dict[str, Any]:
    inputs = build_inputs(tokenizer, model, 1, device, args.prompt_tokens, args.seed)
    common = generation_kwargs(recipe, args)

    def transformers_generate():
        torch.manual_seed(args.seed)
        return model.generate(**inputs, num_return_sequences=n, **common)

    def ours():
        return model.generate(
            **inputs,
            decoding="particle_filter",
            num_particles=n,
            reward_model=constant_reward,
            tokenizer=tokenizer,
            step_delimiter=None,
            tokens_per_step=16,
            seed=args.seed,
            return_dict_in_generate=True,
            **common,
        )

    return compare(
        {"transformers": transformers_generate, "particle_filter": ours}, device, args.repeats, n * args.new_tokens
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "llama-1b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--particles", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length of the random model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out_path = pathlib.Path(args.out or RESULTS_DIR / f"fast_path_{device.type}_{args.model}.json")
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("machine", machine_info(device))
    results.setdefault("settings", {k: v for k, v in vars(args).items() if k != "out"})
    cells = results.setdefault("cells", {})
    model, tokenizer = load_model(args.model, device, None, args.seed)
    wrapper = AutoDecoModelForCausalLM.from_base(model, seed=args.seed)
    plan = [(r, "sample", b) for r in args.recipes for b in args.batch_sizes]
    plan += [(r, "particle_filter", n) for r in args.recipes for n in args.particles]
    for recipe, kind, size in plan:
        key = f"{recipe}/{kind}/{'B' if kind == 'sample' else 'N'}={size}"
        if key in cells:
            print(f"{key}: done already", file=sys.stderr)
            continue
        started = time.perf_counter()
        if kind == "sample":
            cells[key] = sample_cell(model, wrapper, tokenizer, device, recipe, size, args)
        else:
            cells[key] = particle_cell(model, tokenizer, device, recipe, size, args)
        cells[key]["wall_seconds"] = time.perf_counter() - started
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1))
        summary = {name: round(v["median_seconds"], 3) for name, v in cells[key].items() if isinstance(v, dict)}
        print(f"{key}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
