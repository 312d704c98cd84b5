"""Masked-diffusion benchmark: forward passes and wall time of threshold decoding vs one token per step.

Part 1 — toy joints with their exact denoiser: the exact KL and expected forward passes of each rule (dynamic
programming, `hf_decoding.analysis.convergence`), the wall time of the decoder drawing samples, and the random-order
step count that reaches the same KL ("equal quality").

Part 2 — the trained character-level denoiser (`hf-decoding diffusion train`): `model.generate` on held-out
prompts, batch 1, greedy; forward passes (exact, from `out.cost`), wall time, agreement with the one-token-per-step
output, word validity, and the teacher-forced NLL of the same policy (its exact likelihood on held-out text).

    python benchmarks/bench_diffusion.py --model /tmp/hfd/denoiser-fortunes \
        --output docs/results/figures/diffusion_benchmark.json

Prints tables and writes JSON; no assertions on time.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time

import torch
from transformers import GenerationConfig

from hf_decoding.analysis.convergence import (
    hidden_markov_joint,
    kl_divergence,
    markov_chain_joint,
    sampler_distribution,
)
from hf_decoding.decoders.masked_diffusion import attach_masked_diffusion_generate, masked_diffusion
from hf_decoding.diffusion import JointTableDenoiser, unmasking_schedule

logger = logging.getLogger("bench_diffusion")


def _toy_joints():
    return [
        markov_chain_joint(10, 3, 0.7),
        hidden_markov_joint(10, 3, hidden_states=3, dependence=0.95, noise=0.05),
        hidden_markov_joint(12, 2, hidden_states=2, dependence=0.98, noise=0.05),
    ]


def _time_decoder(model, length: int, samples: int, **options) -> tuple[float, float, int]:
    config = GenerationConfig(do_sample=True, top_k=0, return_dict_in_generate=True)
    started = time.perf_counter()
    out = masked_diffusion(
        model,
        torch.zeros(samples, 0, dtype=torch.long),
        generation_config=config,
        gen_length=length,
        seed=0,
        unmasking_confidence="max_prob",
        **options,
    )
    return time.perf_counter() - started, float(out.steps.float().mean()), out.cost.forward_passes


def toy_benchmark(samples: int = 400) -> list[dict]:
    rows = []
    for joint in _toy_joints():
        length = joint.length
        model = JointTableDenoiser(joint)
        random_kl = {}
        for steps in range(1, length + 1):
            law = sampler_distribution(joint, unmasking_schedule(length, steps), "random")
            random_kl[steps] = kl_divergence(joint.probs, law.probs)
        configs = [("random", {"diffusion_steps": length}, None)]
        configs += [("threshold", {"unmasking_threshold": tau}, tau) for tau in (0.99, 0.95, 0.9, 0.8)]
        configs += [("entropy_bound", {"unmasking_entropy_bound": gamma}, gamma) for gamma in (0.1, 0.3, 1.0)]
        for rule, options, value in configs:
            law = sampler_distribution(
                joint,
                None if rule != "random" else [1] * length,
                rule,
                threshold=value or 0.9,
                entropy_bound=value or 0.1,
                confidence="max_prob",
            )
            kl = kl_divergence(joint.probs, law.probs)
            seconds, mean_steps, calls = _time_decoder(model, length, samples, unmasking=rule, **options)
            matching = min((t for t, v in random_kl.items() if v <= kl + 1e-12), default=length)
            rows.append(
                {
                    "joint": joint.name,
                    "length": length,
                    "vocab_size": joint.vocab_size,
                    "rule": rule,
                    "parameter": value,
                    "kl_nats": kl,
                    "expected_forward_passes": law.expected_steps,
                    "speedup_vs_one_per_step": length / law.expected_steps,
                    "random_steps_at_equal_kl": matching,
                    "speedup_vs_random_at_equal_kl": matching / law.expected_steps,
                    "decoder_seconds": seconds,
                    "decoder_mean_steps": mean_steps,
                    "decoder_batch_calls": calls,
                    "samples": samples,
                }
            )
            logger.info("%s %s %s KL=%.4f NFE=%.2f", joint.name, rule, value, kl, law.expected_steps)
    return rows


def denoiser_benchmark(path: str, prompts: int = 16, prompt_length: int = 32, gen_length: int = 64) -> dict:
    from hf_decoding.cli.diffusion import load_denoiser
    from hf_decoding.diffusion.evaluation import corpus_vocabulary, policy_nll, word_validity
    from hf_decoding.diffusion.text import load_fortunes, split_records
    from hf_decoding.diffusion.training import DenoiserTrainingConfig, heldout_windows

    model, tokenizer, summary = load_denoiser(path)
    attach_masked_diffusion_generate(model)
    config = DenoiserTrainingConfig(**summary.get("config", {}))
    windows = heldout_windows(tokenizer, config, 64)[:, : prompt_length + gen_length]
    train_records, _ = split_records(load_fortunes(config.corpus_dir), config.holdout_fraction, config.seed)
    vocabulary = corpus_vocabulary(train_records)
    configs = [
        ("one per step (low_confidence, T=G)", {"unmasking": "low_confidence", "diffusion_steps": gen_length}),
        ("low_confidence T=G/4", {"unmasking": "low_confidence", "diffusion_steps": gen_length // 4}),
        ("random T=G/4", {"unmasking": "random", "diffusion_steps": gen_length // 4}),
        ("threshold tau=0.9", {"unmasking": "threshold", "unmasking_threshold": 0.9}),
        ("threshold tau=0.7", {"unmasking": "threshold", "unmasking_threshold": 0.7}),
        ("threshold tau=0.5", {"unmasking": "threshold", "unmasking_threshold": 0.5}),
        ("entropy_bound gamma=1.0", {"unmasking": "entropy_bound", "unmasking_entropy_bound": 1.0}),
    ]
    results, reference = [], None
    for label, options in configs:
        outputs, calls, seconds = [], 0, 0.0
        for window in windows[:prompts]:
            started = time.perf_counter()
            out = model.generate(
                input_ids=window[None, :prompt_length],
                gen_length=gen_length,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                stop_at_eos=False,
                return_dict_in_generate=True,
                **options,
            )
            seconds += time.perf_counter() - started
            calls += out.cost.forward_passes
            outputs.append(out.sequences[0, prompt_length:])
        generated = torch.stack(outputs)  # (prompts, G)
        if reference is None:
            reference = generated
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        nll = policy_nll(model, windows[:prompts], prompt_length, **options)
        results.append(
            {
                "config": label,
                **options,
                "forward_passes_per_sequence": calls / prompts,
                "seconds_per_sequence": seconds / prompts,
                "agreement_with_one_per_step": float((generated == reference).float().mean()),
                "word_validity": word_validity(texts, vocabulary),
                "policy_nll_bits_per_char": nll["nll_bits_per_token"],
                "policy_forward_passes": nll["forward_passes_per_sequence"],
                "example": texts[0],
            }
        )
        logger.info("%s: %.1f forwards, %.3f s", label, calls / prompts, seconds / prompts)
    base = results[0]
    for row in results:
        row["forward_speedup"] = base["forward_passes_per_sequence"] / row["forward_passes_per_sequence"]
        row["time_speedup"] = base["seconds_per_sequence"] / row["seconds_per_sequence"]
        row["delta_policy_nll_bits_per_char"] = row["policy_nll_bits_per_char"] - base["policy_nll_bits_per_char"]
    return {
        "model": path,
        "prompts": prompts,
        "prompt_length": prompt_length,
        "gen_length": gen_length,
        "decoding": "greedy (do_sample=False), batch 1",
        "rows": results,
        "training": {k: v for k, v in summary.items() if k != "config"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="trained denoiser directory (part 2 is skipped without it)")
    parser.add_argument("--samples", type=int, default=400, help="decoder samples per toy configuration")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts for the denoiser (batch 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
    parser.add_argument("--skip-toy", action="store_true", help="run only part 2 (needs --model)")
    parser.add_argument("--output", default="docs/results/figures/diffusion_benchmark.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    report = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        }
    }
    report["toy"] = [] if args.skip_toy else toy_benchmark(args.samples)
    print(
        f"{'joint':<28} {'rule':<14} {'param':>6} {'KL nats':>9} {'E[NFE]':>7} {'x vs T=L':>8} "
        f"{'T_rand@KL':>9} {'decoder s':>9}"
    )
    for row in report["toy"]:
        print(
            f"{row['joint']:<28} {row['rule']:<14} {row['parameter'] or '':>6} {row['kl_nats']:>9.4f} "
            f"{row['expected_forward_passes']:>7.2f} {row['speedup_vs_one_per_step']:>7.2f}x "
            f"{row['random_steps_at_equal_kl']:>9} {row['decoder_seconds']:>9.3f}"
        )
    if args.model:
        report["denoiser"] = denoiser_benchmark(args.model, prompts=args.prompts)
        print(
            f"\n{'config':<36} {'NFE':>6} {'s/seq':>7} {'x NFE':>6} {'x time':>6} {'agree':>6} {'words':>6} "
            f"{'NLL b/c':>8} {'ΔNLL':>7}"
        )
        for row in report["denoiser"]["rows"]:
            print(
                f"{row['config']:<36} {row['forward_passes_per_sequence']:>6.1f} {row['seconds_per_sequence']:>7.3f} "
                f"{row['forward_speedup']:>5.2f}x {row['time_speedup']:>5.2f}x "
                f"{row['agreement_with_one_per_step']:>6.3f} {row['word_validity']:>6.3f} "
                f"{row['policy_nll_bits_per_char']:>8.4f} {row['delta_policy_nll_bits_per_char']:>7.4f}"
            )
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
