"""Particle-filter benchmarks: (a) overhead vs plain sampling, (b) vs re-prefilling every step, (c) peak memory
vs N, (d) reward calls and tokens vs best-of-N. Prints tables and writes JSON; never asserts on time.

    python benchmarks/bench_particles.py --out benchmarks/results/particles_cpu.json          # CPU, scaled down
    python benchmarks/bench_particles.py --device cuda --full --out particles_h100.json        # the issue's sizes

On CPU (a shared 2-core machine) everything runs with one intra-op thread (two threads competing with other jobs
were ~10x slower), and (b) uses a small random Llama, since re-prefilling 16 x 1.5k-token prefixes 40 times with a
135M model would take hours there. `--full` runs (b) with SmolLM2-135M-Instruct at the issue's sizes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_decoding as hfd
from hf_decoding.decoders.best_of_n import best_of_n
from hf_decoding.decoders.particle_filter import particle_filter
from hf_decoding.generation.cache import get_cache
from hf_decoding.rewards import ArithmeticStepVerifier

PROMPT = (
    "Tom has 3 boxes with 12 apples each. He gives 7 apples to his sister and buys 15 more. How many apples does "
    "he have now? Reason step by step and put the final answer in \\boxed{}."
)


def constant_reward(prompts: list[str], texts: list[str]) -> list[list[float]]:
    """A free reward (0.5 everywhere): isolates the particle machinery's own cost."""
    return [[0.5] for _ in texts]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def random_llama(device: str, hidden: int = 128, layers: int = 2, vocab: int = 4096) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval().to(device)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def chat_inputs(tokenizer: Any, device: str) -> dict[str, torch.Tensor]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    return {k: v.to(device) for k, v in tokenizer([text], return_tensors="pt").items()}


# ---------------------------------------------------------------------------------------------------- (a) overhead
def bench_overhead(model: Any, tokenizer: Any, device: str, n: int, tokens: int, step: int, repeats: int) -> dict:
    inputs = chat_inputs(tokenizer, device)
    common = dict(do_sample=True, temperature=0.8, top_k=0, max_new_tokens=tokens, min_new_tokens=tokens)

    def plain():
        model.generate(**inputs, num_return_sequences=n, **common)

    pf_generation: list[float] = []

    def pf(delimiter: str | None):
        def run():
            out = model.generate(
                **inputs,
                custom_generate=functools.partial(particle_filter, tokenizer=tokenizer),
                num_particles=n,
                reward_model=constant_reward,
                tokens_per_step=step,
                step_delimiter=delimiter or "",
                ess_threshold=1.0,
                seed=0,
                return_dict_in_generate=True,
                **common,
            )
            s = out.cost.seconds
            pf_generation.append(s["total"] - s["reward"])
            assert out.cost.generated_tokens == n * tokens, out.cost.generated_tokens

        return run

    plain()  # warm-up
    base = timed(plain, device, repeats)
    pf_generation.clear()
    timed(pf(None), device, repeats)
    fixed = list(pf_generation)
    return {
        "n": n,
        "tokens": tokens,
        "tokens_per_step": step,
        "generate_s": statistics.median(base),
        "particle_filter_s": statistics.median(fixed),
        "ratio": statistics.median(fixed) / statistics.median(base),
        "resampled_every_step": True,
    }


# ---------------------------------------------------------------------------------------------------- (b) re-prefill
def bench_reprefill(model: Any, device: str, n: int, prompt_len: int, step_tokens: int, steps: int, vocab: int) -> dict:
    """Our one-cache particle filter vs the reference approach (every step: re-prefill each particle's full prefix
    with `generate`, then sample the step), both resampling at every step with a constant reward."""
    torch.manual_seed(0)
    prompt = torch.randint(3, vocab, (1, prompt_len), device=device)
    total = steps * step_tokens
    common = dict(do_sample=True, top_k=0, pad_token_id=0)

    def ours():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            custom_generate=particle_filter,
            num_particles=n,
            reward_model=_IdReward(),
            tokens_per_step=step_tokens,
            ess_threshold=1.0,
            seed=0,
            max_new_tokens=total,
            min_new_tokens=total,
            return_dict_in_generate=True,
            **common,
        )
        return out.cost.seconds["total"] - out.cost.seconds["reward"]

    def reprefill():
        gen = torch.Generator(device="cpu").manual_seed(0)
        prefixes = prompt.repeat(n, 1)
        for _ in range(steps):
            # No cache reuse across steps: the whole prefix is prefilled again (what a server without prefix
            # caching does when every step is re-sent as text).
            prefixes = model.generate(
                input_ids=prefixes,
                attention_mask=torch.ones_like(prefixes),
                max_new_tokens=step_tokens,
                min_new_tokens=step_tokens,
                **common,
            )
            ancestors = torch.multinomial(torch.ones(n), n, replacement=True, generator=gen).to(device)
            prefixes = prefixes.index_select(0, ancestors)

    def continuous():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            num_return_sequences=n,
            max_new_tokens=total,
            min_new_tokens=total,
            **common,
        )

    ours()  # warm-up
    sync(device)
    ours_s = statistics.median([ours() for _ in range(2)])
    re_s = statistics.median(timed(reprefill, device, 1))
    cont_s = statistics.median(timed(continuous, device, 1))
    return {
        "n": n,
        "prompt": prompt_len,
        "tokens_per_step": step_tokens,
        "steps": steps,
        "particle_filter_s": ours_s,
        "reprefill_s": re_s,
        "continuous_generate_s": cont_s,
        "speedup_vs_reprefill": re_s / ours_s,
        "reprefill_vs_continuous": re_s / cont_s,
    }


class _IdReward:
    """A constant reward that reads no text (the random Llama has no tokenizer)."""

    requires_text = False

    def score(self, prompts, texts):
        return [[0.5] for _ in texts]


# ---------------------------------------------------------------------------------------------------- (c) memory
def memory_child(n: int, device: str, tokens: int) -> dict:
    model, tokenizer = hfd.load_default_model(device=device if device == "cuda" else None)
    inputs = chat_inputs(tokenizer, device)
    peak_cache = 0
    from hf_decoding.smc import state

    original = state.ParticleBatch.feed

    def feed(self, model):
        nonlocal peak_cache
        cache = get_cache(self.model_kwargs)
        if cache is not None:
            size = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)
            peak_cache = max(peak_cache, size)
        return original(self, model)

    state.ParticleBatch.feed = feed
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.generate(
        **inputs,
        custom_generate=functools.partial(particle_filter, tokenizer=tokenizer),
        num_particles=n,
        reward_model=constant_reward,
        tokens_per_step=16,
        do_sample=True,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        seed=0,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"n": n, "peak_rss_mib": rss, "peak_kv_cache_mib": peak_cache / 2**20}
    if device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_memory(ns: list[int], device: str, tokens: int) -> list[dict]:
    rows = []
    for n in ns:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), "--device", device, "--mem-tokens", str(tokens)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  N={n}: {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- (d) reward cost
def bench_reward_cost(model: Any, tokenizer: Any, device: str, n: int, problems: int, tokens: int) -> dict:
    from hf_decoding.eval.arithmetic import make_problems, problem_inputs

    verifier = ArithmeticStepVerifier()
    rows = {"particle_filter": [], "best_of_n": []}
    for problem in make_problems(problems, seed=0):
        inputs = problem_inputs(tokenizer, [problem], device)
        for name, decoder, extra in (
            ("particle_filter", particle_filter, {"step_delimiter": "\n"}),
            ("best_of_n", best_of_n, {}),
        ):
            out = model.generate(
                **inputs,
                custom_generate=functools.partial(decoder, tokenizer=tokenizer),
                num_particles=n,
                reward_model=verifier,
                do_sample=True,
                temperature=0.8,
                top_k=0,
                max_new_tokens=tokens,
                seed=0,
                return_dict_in_generate=True,
                **extra,
            )
            rows[name].append(
                {
                    "reward_calls": out.cost.reward_calls,
                    "reward_tokens": out.cost.reward_tokens,
                    "generated_tokens": out.cost.generated_tokens,
                }
            )
    summary = {}
    for name, values in rows.items():
        summary[name] = {k: statistics.mean(v[k] for v in values) for k in values[0]}
    return {"n": n, "problems": problems, "max_new_tokens": tokens, "per_problem": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="the issue's sizes (GPU)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", default="abcd")
    parser.add_argument("--memory-child", type=int, default=None)
    parser.add_argument("--mem-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.device, args.mem_tokens)))
        return 0
    results: dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads(), "full": args.full}
    model = tokenizer = None
    if set(args.only) & {"a", "d"}:
        model, tokenizer = hfd.load_default_model(device=args.device if args.device == "cuda" else None)
    if "a" in args.only:
        rows = []
        for n, tokens, step in (
            ((8, 64, 16), (16, 64, 16)) if not args.full else ((8, 256, 32), (16, 256, 32), (64, 256, 32))
        ):
            rows.append(
                bench_overhead(model, tokenizer, args.device, n, tokens, step, repeats=2 if not args.full else 3)
            )
            print("(a)", rows[-1], flush=True)
        results["a_overhead_vs_generate"] = rows
    if "b" in args.only:
        if args.full:
            big, _ = hfd.load_default_model(device=args.device if args.device == "cuda" else None)
            configs = [(big, 16, 256, 32, s, big.config.vocab_size) for s in (10, 40)]
        else:
            small = random_llama(args.device)
            configs = [(small, 16, 256, 32, s, 4096) for s in (10, 40)]
        rows = []
        for m, n, p, k, s, vocab in configs:
            rows.append(bench_reprefill(m, args.device, n, p, k, s, vocab))
            print("(b)", rows[-1], flush=True)
        results["b_vs_reprefill"] = rows
        results["b_model"] = "SmolLM2-135M-Instruct" if args.full else "random Llama (hidden 128, 2 layers, vocab 4096)"
    if "c" in args.only:
        print("(c) peak memory vs N", flush=True)
        results["c_memory"] = bench_memory(
            [1, 4, 16, 32] if not args.full else [1, 4, 16, 64, 128], args.device, args.mem_tokens
        )
    if "d" in args.only:
        results["d_reward_cost"] = bench_reward_cost(model, tokenizer, args.device, n=8, problems=2, tokens=64)
        print("(d)", results["d_reward_cost"], flush=True)
    text = json.dumps(results, indent=2)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
