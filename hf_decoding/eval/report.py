"""Merges the landed evidence shards into rows (accuracy with a bootstrap interval, compute, a paired interval vs
best-of-N at the same N and at equal compute), a summary JSON, a markdown table and plots with interval bands.

Pool rows (best-of-N, weighted best-of-N, self-consistency, pass@k at N = 1..pool size) use every problem of the
pool; a step-method row uses the problems that both it and the pool have, and is compared on exactly those.
Compute per problem is generated tokens + reward calls: for a pool rule at N, N × the problem's mean tokens per
sample + N reward calls (none for self-consistency and pass@k); for a step method, its `out.cost`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .bootstrap import bootstrap_mean, format_percent, paired_bootstrap
from .pool import pool_accuracy
from .sampling import plot_sampling, sampling_markdown, sampling_rows
from .search import parse_method
from .shards import load_units

__all__ = ["SAMPLING_BASELINES", "markdown_table", "plot_rows", "pool_rows", "step_rows", "write_report"]

#: The rows every sampling setting (AutoDeco's comparison) is paired against.
SAMPLING_BASELINES = ("greedy", "default", "vendor", "pool", "meanshift")

POOL_VARIANTS = (
    ("best_of_n", "verifier"),
    ("best_of_n", "prm"),
    ("weighted_best_of_n", "verifier"),
    ("weighted_best_of_n", "prm"),
    ("self_consistency", None),
    ("pass_at_k", None),
)
# the selection rules over the pool (drawn as lines with bands; step methods are points)
POOL_RULES = tuple(dict.fromkeys(rule for rule, _ in POOL_VARIANTS))


def _row(method: str, reward: str | None, n: int, ids: list[str], acc: np.ndarray, compute: np.ndarray,
         resamples: int) -> dict[str, Any]:  # fmt: skip
    interval = bootstrap_mean(acc, resamples=resamples)
    return {
        "method": method,
        "reward": reward,
        "n": n,
        "problems": len(ids),
        "accuracy": interval.to_dict(),
        "compute_per_problem": float(compute.mean()),
        "_ids": ids,
        "_acc": acc,
        "_compute": compute,
    }


def pool_rows(records: Sequence[dict[str, Any]], draws: int = 64, resamples: int = 10_000) -> list[dict[str, Any]]:
    """One row per (rule, reward, N) over the pool `records` (see [`hf_decoding.eval.pool.pool_accuracy`])."""
    if not records:
        return []
    size = min(len(r["samples"]) for r in records)
    ids = [r["id"] for r in records]
    mean_tokens = np.array([np.mean([s["tokens"] for s in r["samples"]]) for r in records])
    rows = []
    for rule, reward in POOL_VARIANTS:
        if reward is not None and reward not in records[0]["samples"][0]:
            continue
        for n in range(1, size + 1):
            acc = np.array([pool_accuracy(r, rule, n, reward, draws=draws) for r in records])
            calls = 0 if reward is None else n
            rows.append(_row(rule, reward, n, ids, acc, mean_tokens * n + calls, resamples))
    return rows


def step_rows(units: dict[str, dict[str, Any]], resamples: int = 10_000) -> list[dict[str, Any]]:
    """One row per step-method unit (`method:reward:N`) with its per-problem correctness and compute."""
    rows = []
    for unit, entry in sorted(units.items()):
        if unit == "pool" or unit.startswith("sampling:"):
            continue
        method, reward, n = parse_method(unit)
        records = sorted(entry["records"].values(), key=lambda r: r["id"])
        ids = [r["id"] for r in records]
        acc = np.array([float(r["correct"]) for r in records])
        compute = np.array([float(r["compute"]) for r in records])
        row = _row(method, reward, n, ids, acc, compute, resamples)
        row["seconds_per_problem"] = float(np.mean([r["seconds"] for r in records]))
        rows.append(row)
    return rows


def _paired(row: dict[str, Any], base: dict[str, Any], resamples: int) -> dict[str, Any] | None:
    """Paired interval of `row - base` on the problems both have."""
    index = {pid: i for i, pid in enumerate(base["_ids"])}
    common = [(i, index[pid]) for i, pid in enumerate(row["_ids"]) if pid in index]
    if not common:
        return None
    a = row["_acc"][[i for i, _ in common]]
    b = base["_acc"][[j for _, j in common]]
    return {"vs": f"{base['method']}:{base['reward']}:{base['n']}", **paired_bootstrap(a, b, resamples).to_dict()}


def _closest_compute(
    table: dict[tuple[str | None, int], dict[str, Any]], reward: str, row: dict[str, Any]
) -> dict[str, Any] | None:
    """The row of `table` (keyed by `(reward, N)`) with this `reward` whose mean compute is nearest `row`'s."""
    same = [r for (w, _), r in table.items() if w == reward]
    return min(same, key=lambda r: abs(r["compute_per_problem"] - row["compute_per_problem"]), default=None)


def _compare(rows: list[dict[str, Any]], resamples: int) -> None:
    """Adds paired intervals to the rows, on the problems both sides have:

    - `vs_best_of_n`: best-of-N with the same reward and N (self-consistency: against the verifier's);
    - for step methods, `vs_best_of_n_equal_compute` (the best-of-N N' whose mean compute is closest),
      `vs_weighted_best_of_n` (same reward and N) and, for the other step methods (particle Gibbs, beam search,
      DVTS), `vs_particle_filter` (same reward and N) and `vs_particle_filter_equal_compute` (the particle filter
      run whose mean compute is closest: particle Gibbs at N costs about `num_iterations` filters at N);
    - for the particle filter, `vs_best_of_n_4n` and `vs_weighted_best_of_n_4n`: the baselines at four times its N
      (where the pool has them), the particle-filtering paper's "4x budget efficiency" read as a paired test.
    """

    def by(method: str) -> dict[tuple[str | None, int], dict[str, Any]]:
        return {(r["reward"], r["n"]): r for r in rows if r["method"] == method}

    bon, wbon, pf = by("best_of_n"), by("weighted_best_of_n"), by("particle_filter")
    for row in rows:
        if row["method"] in ("best_of_n", "pass_at_k"):  # pass@k is an oracle upper bound, not a method
            continue
        reward = row["reward"] or "verifier"
        base = bon.get((reward, row["n"]))
        if base is not None:
            row["vs_best_of_n"] = _paired(row, base, resamples)
        if row["method"] in ("self_consistency", "weighted_best_of_n"):
            continue
        nearest = _closest_compute(bon, reward, row)
        if nearest is not None:
            row["vs_best_of_n_equal_compute"] = _paired(row, nearest, resamples)
        if (reward, row["n"]) in wbon:
            row["vs_weighted_best_of_n"] = _paired(row, wbon[(reward, row["n"])], resamples)
        if row["method"] != "particle_filter":
            if (reward, row["n"]) in pf:
                row["vs_particle_filter"] = _paired(row, pf[(reward, row["n"])], resamples)
            nearest = _closest_compute(pf, reward, row)
            if nearest is not None:
                row["vs_particle_filter_equal_compute"] = _paired(row, nearest, resamples)
        else:
            for name, table in (("vs_best_of_n_4n", bon), ("vs_weighted_best_of_n_4n", wbon)):
                if (reward, 4 * row["n"]) in table:
                    row[name] = _paired(row, table[(reward, 4 * row["n"])], resamples)


def markdown_table(rows: Sequence[dict[str, Any]], pool_ns: Sequence[int] = (1, 4, 8, 16)) -> str:
    """Accuracy (%) with its 95 % interval, compute, and the paired differences (percentage points)."""
    lines = [
        "| method | reward | N | problems | accuracy % [95 % CI] | compute / problem | Δ vs best-of-N same N (pp) "
        "| Δ vs best-of-N equal compute (pp) | Δ vs weighted best-of-N same N (pp) | Δ vs particle filter same N (pp) "
        "| Δ vs particle filter equal compute (pp) |",
        "|---|---|---:|---:|---|---:|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] in POOL_RULES and r["n"] not in pool_ns:
            continue
        eq_text, pf_eq_text = (
            f"{format_percent(eq, True)} (vs N={eq['vs'].rsplit(':', 1)[1]})" if eq else "–"
            for eq in (r.get("vs_best_of_n_equal_compute"), r.get("vs_particle_filter_equal_compute"))
        )
        lines.append(
            f"| {r['method']} | {r['reward'] or '–'} | {r['n']} | {r['problems']} | "
            f"{format_percent(r['accuracy'])} | "
            f"{r['compute_per_problem']:.0f} | {format_percent(r.get('vs_best_of_n'), True)} | {eq_text} | "
            f"{format_percent(r.get('vs_weighted_best_of_n'), True)} | {format_percent(r.get('vs_particle_filter'), True)} | {pf_eq_text} |"
        )
    return "\n".join(lines) + "\n"


def plot_rows(rows: Sequence[dict[str, Any]], path: str | pathlib.Path, reward: str) -> None:
    """Accuracy vs N and vs compute for one reward: pool rules as lines with 95 % bands, step methods as points
    with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    mine = [r for r in rows if r["reward"] in (reward, None)]
    steps_seen = 0
    for method in dict.fromkeys(r["method"] for r in mine):
        items = sorted((r for r in mine if r["method"] == method), key=lambda r: r["n"])
        pool_rule = method in POOL_RULES
        # step methods share their N: a small multiplicative offset per method keeps their error bars apart
        shift = 1.0 if pool_rule else 1.04 ** (steps_seen - 1)
        steps_seen += not pool_rule
        est = np.array([r["accuracy"]["estimate"] for r in items])
        low = np.array([r["accuracy"]["low"] for r in items])
        high = np.array([r["accuracy"]["high"] for r in items])
        xs = ([r["n"] * shift for r in items], [r["compute_per_problem"] for r in items])
        for ax, x in zip(axes, xs, strict=True):
            if pool_rule:
                (line,) = ax.plot(x, est, label=method)
                ax.fill_between(x, low, high, alpha=0.15, color=line.get_color())
            else:
                ax.errorbar(x, est, yerr=[est - low, high - est], marker="o", capsize=3, label=method)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("N (samples / particles / beams)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("compute per problem (generated tokens + reward calls)")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    problems = max((r["problems"] for r in mine), default=0)
    fig.suptitle(f"SmolLM2-135M-Instruct, reward = {reward}, up to {problems} test problems, 95 % bootstrap intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: str | pathlib.Path, summary_path: str | pathlib.Path, resamples: int = 10_000,
                 draws: int = 64) -> dict[str, Any]:  # fmt: skip
    """Summary JSON at `summary_path`, `summary.md` and `evidence_<reward>.png` beside it, from every landed shard;
    with sampling units also `autodeco.md` and `autodeco.png` (see [`hf_decoding.eval.sampling`])."""
    units = load_units(out_dir)
    rows: list[dict[str, Any]] = []
    if "pool" in units:
        pool = sorted(units["pool"]["records"].values(), key=lambda r: r["id"])
        rows += pool_rows(pool, draws=draws, resamples=resamples)
    rows += step_rows(units, resamples=resamples)
    _compare(rows, resamples)
    sampling = []
    if any(u.startswith("sampling:") for u in units):
        sampling = sampling_rows(units, resamples=resamples, baselines=SAMPLING_BASELINES)
    summary_path = pathlib.Path(summary_path)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "units": {
            u: {"ranges": e["ranges"], "problems": len(e["records"]), "config": e["config"]} for u, e in units.items()
        },
        "resamples": resamples,
        "draws": draws,
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "sampling_rows": sampling,
    }
    summary_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (summary_path.parent / "summary.md").write_text(markdown_table(rows), encoding="utf-8")
    if rows:
        for reward in ("verifier", "prm"):
            if any(r["reward"] == reward for r in rows):
                plot_rows(rows, summary_path.parent / f"evidence_{reward}.png", reward)
    print(markdown_table(rows))
    if sampling:
        table = sampling_markdown(sampling, SAMPLING_BASELINES)
        (summary_path.parent / "autodeco.md").write_text(table, encoding="utf-8")
        plot_sampling(sampling, summary_path.parent / "autodeco.png")
        print(table)
    return document
