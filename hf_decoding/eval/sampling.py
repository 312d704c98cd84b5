"""AutoDeco against static sampling settings on the evidence problems: per problem, `k` samples (one for greedy) of
each setting, scored by the exact answer check, and paired intervals of pass@1 and pass@k between settings.

A *sampling unit* is `"sampling:<setting>"` with a setting of [`SAMPLING_SETTINGS`]:

- `greedy`: `do_sample=False`, one completion (its pass@k is its pass@1);
- `default`: T = 1, p = 1 (the comparison point of the AutoDeco paper);
- `vendor`: T = 0.2, p = 0.9 (SmolLM2-135M-Instruct's model card; its `generation_config.json` sets none);
- `autodeco`: the shipped AutoDeco heads choose T and p per token (`temperature=1, top_p=1` leave them alone);
- `meanshift`: the static T and p equal to the means AutoDeco applied over every token of its own `autodeco` shards
  (so it runs after them, over the same problem range).

Per problem, pass@1 is the fraction of its `k` samples that are correct (the unbiased estimate) and pass@k whether
any is. Every sampling setting uses `top_k = 0`. The N = 16 pool at the calibrated static temperature gives one more
row at no cost (the first `k` samples of each problem's pool).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..rewards.answers import extract_answer
from .bootstrap import bootstrap_mean, format_percent, paired_bootstrap
from .pool import problem_seed, user_prompt
from .problems import EvalProblem
from .search import problem_batches

__all__ = [
    "ROW_ORDER",
    "SAMPLING_SETTINGS",
    "meanshift_setting",
    "run_sampling",
    "sampling_markdown",
    "sampling_rows",
]

SAMPLING_SETTINGS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False},
    "default": {"do_sample": True, "temperature": 1.0, "top_p": 1.0},
    "vendor": {"do_sample": True, "temperature": 0.2, "top_p": 0.9},
    "autodeco": {"do_sample": True, "temperature": 1.0, "top_p": 1.0},
    "meanshift": {"do_sample": True},  # temperature / top_p from the autodeco shards
}


def parse_sampling_unit(unit: str) -> str:
    """`"sampling:vendor"` -> `"vendor"`, validated against [`SAMPLING_SETTINGS`]."""
    prefix, _, name = unit.partition(":")
    if prefix != "sampling" or name not in SAMPLING_SETTINGS:
        raise ValueError(f"sampling unit must be 'sampling:<setting>' with a setting in {list(SAMPLING_SETTINGS)}, "
                         f"got {unit!r}")  # fmt: skip
    return name


def meanshift_setting(autodeco_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The static setting at the token-weighted mean T and p AutoDeco applied in `autodeco_records` (3 decimals)."""
    tokens = sum(r["applied"]["tokens"] for r in autodeco_records)
    if not tokens:
        raise ValueError("the autodeco records hold no applied tokens; run the 'sampling:autodeco' unit first")
    mean = {
        key: sum(r["applied"][key] * r["applied"]["tokens"] for r in autodeco_records) / tokens
        for key in ("temperature", "top_p")
    }
    return {"do_sample": True, "temperature": round(mean["temperature"], 3), "top_p": round(mean["top_p"], 3)}


def run_sampling(
    model: Any,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    setting: dict[str, Any],
    name: str,
    samples: int = 4,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_problems: int = 8,
    progress: Callable[[Any], Any] = lambda it: it,
) -> list[dict[str, Any]]:
    """One record per problem: `{"id", "samples": [{"text", "answer", "correct", "tokens"}], "seconds"}`, plus
    `"applied"` (mean T and p over the generated tokens, and their count) when `model` is an AutoDeco model.

    `model` (an [`~hf_decoding.AutoDecoModelForCausalLM`]) generates with `setting` (see [`SAMPLING_SETTINGS`]): its
    heads choose T and p for `name="autodeco"`, and `decoding="sample"` (or greedy) bypasses them otherwise.
    `batch_problems` problems share one `generate` call, seeded from their ids and `name`.
    """
    from ..autodeco.data import generate_samples

    n = samples if setting.get("do_sample", False) else 1
    kwargs: dict[str, Any] = {"do_sample": bool(setting.get("do_sample", False))}
    if kwargs["do_sample"]:
        kwargs.update(temperature=float(setting["temperature"]), top_p=float(setting["top_p"]), top_k=0)
    if name != "autodeco":
        kwargs["decoding"] = "sample" if kwargs["do_sample"] else None
    records = []
    for batch in progress(problem_batches(problems, batch_problems)):
        started = time.perf_counter()
        call = dict(kwargs)
        if call["do_sample"]:
            call["seed"] = problem_seed(seed, "+".join(p.id for p in batch) + f"/sampling:{name}")
        texts, traces = generate_samples(
            model, tokenizer, [[{"role": "user", "content": user_prompt(p)}] for p in batch],
            num_samples=n, batch_size=len(batch), max_new_tokens=max_new_tokens, return_traces=True, **call,
        )  # fmt: skip
        seconds = (time.perf_counter() - started) / len(batch)
        for problem, outs, trace in zip(batch, texts, traces, strict=True):
            drawn = []
            for text in outs:
                answer = extract_answer(text)
                drawn.append({"text": text, "answer": answer, "correct": answer == problem.answer,
                              "tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])})  # fmt: skip
            record: dict[str, Any] = {"id": problem.id, "samples": drawn, "seconds": round(seconds, 3)}
            temperatures = [t for sample in trace for t in sample.get("temperature", [])]
            if temperatures:
                top_ps = [p for sample in trace for p in sample.get("top_p", [])]
                record["applied"] = {
                    "temperature": statistics.fmean(temperatures),
                    "top_p": statistics.fmean(top_ps),
                    "temperature_std": statistics.pstdev(temperatures),
                    "top_p_std": statistics.pstdev(top_ps),
                    "tokens": len(temperatures),
                }
            records.append(record)
    return records


def _scores(records: Sequence[dict[str, Any]], k: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    """`{id: (pass@1, pass@k, mean tokens)}` over the first `k` samples of each record."""
    out = {}
    for r in records:
        drawn = r["samples"][:k]
        flags = [bool(s["correct"]) for s in drawn]
        out[r["id"]] = (sum(flags) / len(flags), float(any(flags)), statistics.fmean(s["tokens"] for s in drawn))
    return out


#: Row order of the tables: the static settings from cold to hot, then MeanShift and AutoDeco.
ROW_ORDER = ("greedy", "default", "vendor", "pool", "meanshift", "autodeco")


def sampling_rows(
    units: dict[str, dict[str, Any]], k: int = 4, resamples: int = 10_000, baselines: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """One row per sampling unit, plus `"pool"` (the static setting at the pool's temperature, its first `k` samples
    per problem): pass@1 and pass@k with 95 % bootstrap intervals, and paired intervals against each of `baselines`
    (row names) on the problems both have."""
    scored: dict[str, dict[str, tuple[float, float, float]]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for unit, entry in units.items():
        if unit == "pool":
            name = "pool"
            settings[name] = {"do_sample": True, "temperature": entry["config"]["temperature"], "top_p": 1.0}
        elif unit.startswith("sampling:"):
            name = parse_sampling_unit(unit)
            settings[name] = entry["config"].get("setting", {})
        else:
            continue
        scored[name] = _scores(list(entry["records"].values()), k)
    rows = []
    for name in sorted(scored, key=lambda n: ROW_ORDER.index(n)):
        per_problem = scored[name]
        ids = sorted(per_problem)
        row: dict[str, Any] = {"setting": name, "params": settings[name], "problems": len(ids), "k": k}
        for index, metric in ((0, "pass1"), (1, f"pass{k}")):
            row[metric] = bootstrap_mean([per_problem[i][index] for i in ids], resamples=resamples).to_dict()
        row["mean_new_tokens"] = statistics.fmean(per_problem[i][2] for i in ids)
        for base in baselines:
            if base == name or base not in scored:
                continue
            common = [i for i in ids if i in scored[base]]
            if not common:
                continue
            row.setdefault("vs", {})[base] = {
                metric: paired_bootstrap(
                    [per_problem[i][index] for i in common], [scored[base][i][index] for i in common], resamples
                ).to_dict()
                for index, metric in ((0, "pass1"), (1, f"pass{k}"))
            }
        rows.append(row)
    return rows


def _label(row: dict[str, Any]) -> str:
    params = row["params"]
    if not params.get("do_sample", False):
        return f"{row['setting']} (do_sample=False)"
    if row["setting"] == "autodeco":
        return "autodeco (T, p per token from the heads)"
    prefix = "pool: static" if row["setting"] == "pool" else row["setting"]
    return f"{prefix} (T={params.get('temperature', 1.0):g}, p={params.get('top_p', 1.0):g})"


def sampling_markdown(rows: Sequence[dict[str, Any]], baselines: Sequence[str] = ()) -> str:
    """Two tables: pass@1 / pass@k per setting with intervals; then the paired differences (pp) of each setting
    against the baselines that come before it in [`ROW_ORDER`] (each pair once)."""
    if not rows:
        return ""
    k = rows[0]["k"]
    lines = [
        f"| setting | problems | pass@1 % [95 % CI] | pass@{k} % [95 % CI] | new tokens / sample |",
        "|---|---:|---|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {_label(r)} | {r['problems']} | {format_percent(r['pass1'])} | {format_percent(r[f'pass{k}'])} | "
                     f"{r['mean_new_tokens']:.1f} |")  # fmt: skip
    lines += ["", f"| setting | vs | Δ pass@1 (pp) [95 % CI] | Δ pass@{k} (pp) [95 % CI] |", "|---|---|---|---|"]
    for r in rows:
        for base in baselines:
            vs = r.get("vs", {}).get(base)
            # each pair once: a setting against the baselines listed before it
            if vs and ROW_ORDER.index(base) < ROW_ORDER.index(r["setting"]):
                lines.append(
                    f"| {r['setting']} | {base} | {format_percent(vs['pass1'], True)} | {format_percent(vs[f'pass{k}'], True)} |"
                )
    return "\n".join(lines) + "\n"


def plot_sampling(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """pass@1 and pass@k per setting as bars with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = rows[0]["k"]
    names = [_label(r) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows)), 4.2))
    for offset, metric in ((-0.2, "pass1"), (0.2, f"pass{k}")):
        est = np.array([r[metric]["estimate"] for r in rows])
        err = [est - np.array([r[metric]["low"] for r in rows]), np.array([r[metric]["high"] for r in rows]) - est]
        ax.bar(x + offset, est, width=0.4, yerr=err, capsize=3, label=metric.replace("pass", "pass@"))
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(f"AutoDeco vs static settings, {max(r['problems'] for r in rows)} test problems, 95 % bootstrap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
