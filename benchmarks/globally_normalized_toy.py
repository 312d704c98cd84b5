"""Convergence of decoding="globally_normalized" to the exact global measure on an enumerable toy LM.

A random 2-layer Llama with 6 tokens and no EOS; all 216 continuations of 3 tokens are enumerated, giving the exact
global measure q^G of the sampler and its normalizer. For each particle count, 4000 rows of the same prompt are
decoded and the total variation between their empirical distribution and q^G is printed (local decoding for
comparison), with the relative error of the mean of exp(log_normalizer). Writes JSON and, with matplotlib, a PNG.

    python benchmarks/globally_normalized_toy.py --out docs/results/globally_normalized_toy.json \
        --plot docs/results/figures/globally_normalized_toy.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

VOCAB, STEPS = 6, 3
PROMPT = torch.tensor([[1, 4, 5]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from conftest import build_tiny_llama

    import hf_decoding

    model = build_tiny_llama(seed=0, vocab_size=VOCAB, eos_token_id=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    hf_decoding.enable(model)
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=STEPS)))
    full = torch.cat([PROMPT.expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logits = model(full).logits[:, PROMPT.shape[1] - 1 : -1]  # (S, T, V)
    results = []
    for temperature, top_k in ((1.0, 2), (0.5, 2), (1.0, 3)):
        scores = logits.reshape(-1, VOCAB)
        if temperature != 1.0:
            scores = TemperatureLogitsWarper(temperature)(None, scores)
        scores = TopKLogitsWarper(top_k)(None, scores).reshape(logits.shape)
        chosen = seqs[..., None]
        log_gamma = scores.double().gather(-1, chosen).squeeze(-1) - torch.logsumexp(logits.double(), -1) / temperature
        log_gamma = log_gamma.sum(-1)
        q_global = torch.softmax(log_gamma, 0)
        q_local = torch.log_softmax(scores.double(), -1).gather(-1, chosen).squeeze(-1).sum(-1).exp()
        normalizer = float(log_gamma.exp().sum())

        def tv(samples: torch.Tensor, q_global: torch.Tensor = q_global) -> float:
            index = (samples * torch.tensor([VOCAB * VOCAB, VOCAB, 1])).sum(-1)
            empirical = torch.bincount(index, minlength=VOCAB**STEPS).double() / len(index)
            return 0.5 * float((empirical - q_global).abs().sum())

        # Sampling-noise floor: the same number of exact draws from q^G.
        floor = []
        for s in range(args.seeds):
            draws = torch.multinomial(q_global, args.rows, replacement=True, generator=torch.Generator().manual_seed(s))
            floor.append(tv(seqs[draws]))
        inputs = PROMPT.expand(args.rows, -1)
        common = dict(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=True,
            max_new_tokens=STEPS,
            temperature=temperature,
            top_k=top_k,
            return_dict_in_generate=True,
        )
        row = {
            "temperature": temperature,
            "top_k": top_k,
            "support": int((q_global > 0).sum()),
            "tv_exact_local": 0.5 * float((q_local - q_global).abs().sum()),
            "normalizer": normalizer,
            "tv_exact_draws": floor,
        }
        row["tv_local"] = [
            tv(model.generate(decoding="sample", seed=s, **common).sequences[:, 3:]) for s in range(args.seeds)
        ]
        row["tv_smc"], row["z_rel_error"], row["tv_imh"] = {}, {}, {}
        for n in args.particles:
            tvs, errors = [], []
            for s in range(args.seeds):
                out = model.generate(decoding="globally_normalized", num_particles=n, seed=s, **common)
                tvs.append(tv(out.sequences[:, 3:]))
                errors.append(float(out.particles.log_normalizer.double().exp().mean()) / normalizer - 1)
            row["tv_smc"][n], row["z_rel_error"][n] = tvs, errors
            row["tv_imh"][n] = [
                tv(
                    model.generate(
                        decoding="globally_normalized", global_sampler="imh", num_particles=n, seed=s, **common
                    ).sequences[:, 3:]
                )
                for s in range(args.seeds)
            ]
        results.append(row)
        print(
            f"tau={temperature} top_k={top_k}: support {row['support']}, exact TV(q^L, q^G) "
            f"{row['tv_exact_local']:.4f}, local {sum(row['tv_local']) / args.seeds:.4f}"
        )
        print(f"  exact draws from q^G (noise floor): TV {sum(floor) / args.seeds:.4f}")
        for n in args.particles:
            print(
                f"  N={n:3d}  TV {sum(row['tv_smc'][n]) / args.seeds:.4f}  "
                f"IMH TV {sum(row['tv_imh'][n]) / args.seeds:.4f}  "
                f"Z rel. error {sum(row['z_rel_error'][n]) / args.seeds:+.4f}"
            )
    if args.out:
        pathlib.Path(args.out).write_text(
            json.dumps({"rows": args.rows, "seeds": args.seeds, "results": results}, indent=1)
        )
    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(5.5, 3.6), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        for row in results:
            label = f"tau={row['temperature']}, top_k={row['top_k']}"
            means = [sum(row["tv_smc"][n]) / args.seeds for n in args.particles]
            line = ax.plot(args.particles, means, marker="o", label=f"SMC, {label}")[0]
            ax.axhline(row["tv_exact_local"], color=line.get_color(), linestyle=":", linewidth=1)
            ax.axhline(sum(row["tv_exact_draws"]) / args.seeds, color=line.get_color(), linestyle="--", linewidth=0.7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("num_particles")
        ax.set_ylabel("total variation to exact q^G")
        ax.set_title(f"{args.rows} draws per point (dotted: local decoding, exact; dashed: exact draws)", fontsize=9)
        ax.legend(fontsize=7)
        figure.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
