"""`hf-decoding demo`: what the library does, on the offline SmolLM2-135M-Instruct, in a minute or two on a CPU.

1. Five decoding strategies side by side with their distortion (greedy, sampling, top-k, top-p, the
   distortion-aware nucleus).
2. `decoding="autodeco"` with the shipped heads: the temperature and top-p the heads chose for every token.
3. `decoding="particle_filter"` on one arithmetic problem, weighted by the shipped learned PRM: the particles'
   weights, the resampling events and the cost.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_command, add_common_arguments

__all__ = ["DEMO_PROMPTS", "DEMO_STRATEGIES", "autodeco_section", "particle_section", "register", "run"]

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
    parser = add_command(
        subparsers,
        "demo",
        help="Show the library on SmolLM2: five strategies and their distortion, AutoDeco, a PRM-guided particle filter.",
        description=(
            "Loads an offline model (SmolLM2-135M-Instruct by default), batches three chat prompts and decodes them "
            "with greedy, pure sampling, top-k 40, top-p 0.9 and decoding='distortion_aware_nucleus' top-p 0.9, "
            "printing each completion with its total distortion log eps(w) and the speed of each strategy. Then, on "
            "SmolLM2, decoding='autodeco' with the shipped heads (the temperature and top-p chosen per token) and "
            "decoding='particle_filter' on one arithmetic problem weighted by the shipped learned PRM (weights, "
            "resampling events, cost)."
        ),
        handler=run,
    )
    add_common_arguments(parser, model="Offline model name (see `hf-decoding env`).")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="Tokens to generate per prompt (default: 48).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every sampling strategy (default: 0).")
    add_common_arguments(parser, json=True)
    parser.add_argument(
        "--num-particles", type=int, default=4, help="Particles of the particle-filter section (default: 4)."
    )
    parser.add_argument(
        "--skip-methods", action="store_true", help="Only the five strategies (no AutoDeco / particle filter)."
    )
    add_common_arguments(parser, device=True)


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

    methods = not args.skip_methods and args.model in ("smollm2-135m-instruct", "smollm2", "SmolLM2-135M-Instruct")
    autodeco = autodeco_section(model, tokenizer, inputs, args.max_new_tokens, args.seed) if methods else None
    particles = particle_section(model, tokenizer, args.num_particles, args.seed) if methods else None
    if args.json:
        print_json(
            {
                "model": args.model,
                "seed": args.seed,
                "max_new_tokens": args.max_new_tokens,
                "prompts": list(DEMO_PROMPTS),
                "strategies": report,
                "autodeco": autodeco,
                "particle_filter": particles,
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
    if autodeco is not None:
        _print_autodeco(autodeco)
    if particles is not None:
        _print_particles(particles)
    return 0


def autodeco_section(model: Any, tokenizer: Any, inputs: dict[str, Any], max_new_tokens: int, seed: int) -> dict:
    """`decoding="autodeco"` with the shipped SmolLM2 heads on the demo prompts: per-token temperature and top-p."""
    import torch

    from ..autodeco import load_default_autodeco

    wrapper, _ = load_default_autodeco(base_model=model, tokenizer=tokenizer)  # the shipped heads on this base
    started = time.perf_counter()
    with torch.no_grad():
        out = wrapper.generate(
            **inputs, max_new_tokens=max_new_tokens, top_k=0, seed=seed, return_dict_in_generate=True
        )  # decoding="autodeco": the heads' values times the user's (1.0)
    seconds = time.perf_counter() - started
    width = inputs["input_ids"].shape[1]
    rows = []
    for b, prompt in enumerate(DEMO_PROMPTS):
        alive = ~out.autodeco.temperature[b].isnan()
        tokens = out.sequences[b, width:][alive].tolist()
        rows.append(
            {
                "prompt": prompt,
                "tokens": [tokenizer.decode([t]) for t in tokens],
                "temperature": [round(v, 3) for v in out.autodeco.temperature[b][alive].tolist()],
                "top_p": [round(v, 3) for v in out.autodeco.top_p[b][alive].tolist()],
                "total_distortion": float(out.distortion.total[b]),
            }
        )
    return {"heads": "hf_decoding/_data/autodeco_smollm2", "seconds": seconds, "rows": rows}


def particle_section(model: Any, tokenizer: Any, num_particles: int, seed: int) -> dict:
    """`decoding="particle_filter"` on one arithmetic problem with the shipped learned PRM (sharing the policy's
    frozen weights): final weights, the steps where the particles were resampled, the cost."""
    import torch

    from ..eval.arithmetic import make_problems, problem_inputs
    from ..rewards.answers import extract_answer
    from ..rewards.defaults import load_default_prm

    problem = make_problems(1, seed=3, steps=1)[0]
    prm = load_default_prm(model, tokenizer)
    inputs = problem_inputs(tokenizer, [problem], device=model.device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            decoding="particle_filter",
            reward_model=prm,
            reward_prompts=[problem.question],
            tokenizer=tokenizer,
            num_particles=num_particles,
            do_sample=True,
            temperature=0.7,
            top_k=0,
            max_new_tokens=64,
            seed=seed,
            return_dict_in_generate=True,
        )
    seconds = time.perf_counter() - started
    trace = out.particles
    width = inputs["input_ids"].shape[1]
    texts = [
        tokenizer.decode(trace.sequences[0, n, width:], skip_special_tokens=True).strip() for n in range(num_particles)
    ]
    identity = torch.arange(num_particles)
    resampled = [t for t in range(trace.ancestors.shape[1]) if not torch.equal(trace.ancestors[0, t].cpu(), identity)]
    return {
        "question": problem.question,
        "gold": problem.answer,
        "num_particles": num_particles,
        "log_weights": [round(v, 3) for v in trace.log_weights[0].tolist()],
        "ess_per_step": [round(v, 2) for v in trace.ess[0].tolist()],
        "resampled_at_steps": resampled,
        "answers": [extract_answer(t) for t in texts],
        "selected": int(trace.selected[0]),
        "completion": texts[int(trace.selected[0])],
        "cost": {
            "forward_passes": out.cost.forward_passes,
            "generated_tokens": out.cost.generated_tokens,
            "reward_calls": out.cost.reward_calls,
            "reward_tokens": out.cost.reward_tokens,
        },
        "seconds": seconds,
    }


def _print_autodeco(section: dict) -> None:
    print(f"== decoding='autodeco' with the shipped heads ({section['seconds']:.1f} s): per token, T and top-p")
    for row in section["rows"][:2]:
        print(f"  prompt: {row['prompt']}   (total distortion {row['total_distortion']:.3f})")
        cells = [
            f"{token!r}:T={t:.2f},p={p:.2f}"
            for token, t, p in zip(row["tokens"], row["temperature"], row["top_p"], strict=True)
        ]
        for start in range(0, min(len(cells), 24), 4):
            print("    " + "  ".join(cells[start : start + 4]))
    print()


def _print_particles(section: dict) -> None:
    print(
        f"== decoding='particle_filter', {section['num_particles']} particles, learned PRM ({section['seconds']:.1f} s)"
    )
    print(f"  question: {section['question']}   gold answer: {section['gold']}")
    print(f"  ESS before each resampling check: {section['ess_per_step']}")
    steps = section["resampled_at_steps"]
    print(f"  resampled after steps: {steps if steps else 'none (ESS stayed above the threshold)'}")
    for n, (weight, answer) in enumerate(zip(section["log_weights"], section["answers"], strict=True)):
        mark = "  <- returned" if n == section["selected"] else ""
        print(f"  particle {n}: log-weight {weight:>8.3f}   answer {answer}{mark}")
    print("  returned: the particle with the highest final PRM score (selection='argmax', the paper's choice)")
    print(f"  returned completion: {' '.join(section['completion'].split())}")
    cost = section["cost"]
    print(
        f"  cost: {cost['forward_passes']} policy forward passes, {cost['generated_tokens']} tokens, "
        f"{cost['reward_calls']} PRM calls over {cost['reward_tokens']} tokens"
    )
