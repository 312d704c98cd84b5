r"""The AutoDeco evaluation protocol of `docs/results/autodeco.md` (`hf-decoding autodeco eval`).

On held-out problems of an offline task, compare:

- **greedy** (transformers' own greedy decoding of the base);
- **default** sampling, `T = 1`, `p = 1` (the paper's "default sampling");
- the **vendor**'s recommended setting (SmolLM2-135M-Instruct ships no sampling values in its
  `generation_config.json`; its model card samples with `T = 0.2`, `p = 0.9`);
- **MeanShift**: the static mean of AutoDeco's own applied `T` and `p` over all its generated tokens (the
  SimpleDeco critique's baseline);
- **oracle static**: the best `(T, p)` of a grid, chosen *on the test problems* (temperature first with `p = 1`,
  then `p` at the best temperature, as the paper's expert-guided search) — an optimistic upper bound;
- **AutoDeco** (`T = T̂`, `p = P̂`, multipliers 1).

Each sampling method draws `num_samples` completions per problem for every seed; pass@1 is the mean success
rate, pass@k the unbiased estimator `1 - C(n-c, k) / C(n, k)`; both are reported as mean ± std over seeds. All
sampling uses `top_k=0` and shares one prompt KV cache per batch ([`PromptPrefix`]). The held-out NLL is the
per-token negative log-likelihood of the reference answers (`"<answer><eos>"`) under each method's tempered
distribution (temperature only: a hard top-p gives `+inf` to any excluded token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import Problem, PromptPrefix, encode_example, generate_samples

__all__ = ["EvalReport", "MethodResult", "heldout_nll", "pass_at_k", "report_markdown", "run_evaluation"]

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples with `c` correct (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class MethodResult:
    """One method's scores.

    Args:
        name (`str`): method name.
        setting (`dict`): its decoding setting (`temperature`, `top_p`, ...).
        pass1 (`list[float]`): pass@1 per seed.
        passk (`list[float]`): pass@k per seed.
        mean_new_tokens (`float`): mean completion length in tokens.
        seconds (`float`): generation wall time.
        applied (`dict`, *optional*): for AutoDeco, mean applied temperature and top-p.
    """

    name: str
    setting: dict[str, Any]
    pass1: list[float]
    passk: list[float]
    mean_new_tokens: float = 0.0
    seconds: float = 0.0
    applied: dict[str, float] = field(default_factory=dict)

    @property
    def pass1_mean_std(self) -> tuple[float, float]:
        return _mean_std(self.pass1)

    @property
    def passk_mean_std(self) -> tuple[float, float]:
        return _mean_std(self.passk)


@dataclass
class EvalReport:
    """Everything [`run_evaluation`] measured (JSON-serialisable with `to_dict`)."""

    methods: list[MethodResult]
    grid: list[dict[str, Any]]
    nll: dict[str, float]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for method, entry in zip(self.methods, out["methods"], strict=True):
            entry["pass1_mean"], entry["pass1_std"] = method.pass1_mean_std
            entry["passk_mean"], entry["passk_std"] = method.passk_mean_std
        return out


def _score(problems: Sequence[Problem], completions: Sequence[Sequence[str]]) -> list[list[bool]]:
    return [[problem.score(text) for text in samples] for problem, samples in zip(problems, completions, strict=True)]


def _run(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    prefixes: list[PromptPrefix],
    *,
    name: str,
    setting: dict[str, Any],
    seeds: Sequence[int],
    num_samples: int,
    k: int,
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
) -> tuple[MethodResult, list[list[dict[str, Any]]]]:
    started = time.perf_counter()
    prompts = [p.messages for p in problems]
    pass1, passk, lengths, traces_all = [], [], [], []
    greedy = setting.get("decoding") == "greedy"
    for seed in seeds[:1] if greedy else seeds:
        if greedy:
            kwargs: dict[str, Any] = {"decoding": None, "do_sample": False}
            n = 1
        elif setting.get("decoding") == "autodeco":
            kwargs = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": seed}
            n = num_samples
        else:
            kwargs = {
                "decoding": "sample",
                "do_sample": True,
                "temperature": setting["temperature"],
                "top_p": setting["top_p"],
                "top_k": 0,
                "seed": seed,
            }
            n = num_samples
        completions, traces = generate_samples(
            model,
            tokenizer,
            prompts,
            num_samples=n,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            prefixes=prefixes,
            return_traces=True,
            progress=progress,
            **kwargs,
        )
        scores = _score(problems, completions)
        pass1.append(statistics.fmean(sum(s) / len(s) for s in scores))
        passk.append(statistics.fmean(pass_at_k(len(s), sum(s), min(k, len(s))) for s in scores))
        lengths.extend(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for c in completions for t in c)
        traces_all.extend(traces)
    if greedy:  # deterministic: the same result for every seed
        pass1, passk = pass1 * len(seeds), passk * len(seeds)
    result = MethodResult(
        name=name,
        setting=setting,
        pass1=pass1,
        passk=passk,
        mean_new_tokens=statistics.fmean(lengths) if lengths else 0.0,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "%s %s: pass@1 %.3f ± %.3f, pass@%d %.3f ± %.3f (%.0f s)",
        name,
        setting,
        *result.pass1_mean_std,
        k,
        *result.passk_mean_std,
        result.seconds,
    )
    return result, traces_all


def _mean_applied(traces: list[list[dict[str, Any]]]) -> dict[str, float]:
    temperatures = [t for sample in traces for trace in sample for t in trace.get("temperature", [])]
    top_ps = [p for sample in traces for trace in sample for p in trace.get("top_p", [])]
    if not temperatures:
        return {}
    return {
        "temperature": statistics.fmean(temperatures),
        "top_p": statistics.fmean(top_ps),
        "temperature_std": statistics.pstdev(temperatures),
        "top_p_std": statistics.pstdev(top_ps),
        "tokens": len(temperatures),
    }


@torch.no_grad()
def heldout_nll(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    temperatures: dict[str, float | str],
    batch_size: int = 32,
) -> dict[str, float]:
    """Per-token NLL of the reference answers (`"<answer><eos>"`, teacher forced) under temperature scaling.

    Args:
        model ([`AutoDecoModelForCausalLM`]): the model.
        temperatures (`dict[str, float | str]`): method name -> static temperature, or `"autodeco"` for the
            predicted per-token `T̂`.
    """
    from .modeling import base_hidden_states, logits_from_hidden

    base = model.llm
    device = next(base.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    totals = dict.fromkeys(temperatures, 0.0)
    count = 0
    for start in range(0, len(problems), batch_size):
        encoded = [encode_example(tokenizer, p.messages, p.answer) for p in problems[start : start + batch_size]]
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
        hidden = base_hidden_states(base, ids.to(device), mask.to(device))[:, :-1]
        targets = labels[:, 1:].to(device)
        selected = targets != -100
        h, y = hidden[selected], targets[selected]  # (N, H), (N,)
        logits = logits_from_hidden(base, h).float()  # (N, V)
        predicted = model.heads(h, logits).temperature.float()
        for name, temperature in temperatures.items():
            t = predicted if temperature == "autodeco" else torch.full_like(predicted, float(temperature))
            scaled = logits / t.unsqueeze(-1)
            nll = torch.logsumexp(scaled, -1) - scaled.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            totals[name] += float(nll.sum())
        count += int(y.numel())
    return {name: total / max(count, 1) for name, total in totals.items()}


def run_evaluation(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    num_samples: int = 4,
    k: int = 4,
    max_new_tokens: int = 16,
    batch_size: int = 48,
    vendor: tuple[float, float] = (0.2, 0.9),
    grid_temperatures: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 1.0),
    grid_top_ps: Sequence[float] = (0.5, 0.7, 0.9),
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> EvalReport:
    r"""Runs the protocol of the module docstring with an [`AutoDecoModelForCausalLM`].

    Args:
        model ([`AutoDecoModelForCausalLM`]): trained heads on the base.
        tokenizer: the base's tokenizer (left padding).
        problems (`Sequence[Problem]`): held-out problems.
        seeds (`Sequence[int]`): sampling seeds (>= 3 for a std).
        num_samples (`int`), k (`int`): samples per problem and seed, and the `k` of pass@k (`k <= num_samples`).
        vendor (`tuple[float, float]`): the vendor's recommended `(T, p)`.
        grid_temperatures (`Sequence[float]`), grid_top_ps (`Sequence[float]`): the oracle grid (searched with the
            first seed only; the winner is then run with every seed).
        checkpoint (`str` or `os.PathLike`, *optional*): a JSON file where every finished run is stored as soon as
            it ends. A later call with the same file, problems, heads and settings reuses those runs, so a long
            evaluation can be split over several processes (each resumes where the previous one stopped).

    Returns:
        [`EvalReport`].
    """
    started = time.perf_counter()
    prefixes: list[PromptPrefix] = []
    common = {
        "seeds": list(seeds),
        "num_samples": num_samples,
        "k": k,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "progress": progress,
    }
    store = _RunStore(checkpoint, _fingerprint(model, problems, common))

    def run(name: str, setting: dict[str, Any], **over: Any) -> MethodResult:
        options = {**common, **over}
        key = json.dumps([name, setting, options["seeds"]], sort_keys=True)
        cached = store.get(key)
        if cached is not None:
            logger.info("%s %s: reused from %s", name, setting, checkpoint)
            return cached
        result, traces = _run(model, tokenizer, problems, prefixes, name=name, setting=setting, **options)
        if setting.get("decoding") == "autodeco":
            result.applied = _mean_applied(traces)
        store.put(key, result)
        return result

    methods: list[MethodResult] = []
    methods.append(run("greedy", {"decoding": "greedy"}))
    methods.append(run("default (T=1, p=1)", {"temperature": 1.0, "top_p": 1.0}))
    methods.append(run(f"vendor (T={vendor[0]}, p={vendor[1]})", {"temperature": vendor[0], "top_p": vendor[1]}))
    autodeco_result = run("AutoDeco", {"decoding": "autodeco"})
    mean_t = round(autodeco_result.applied.get("temperature", 1.0), 3)
    mean_p = round(min(1.0, autodeco_result.applied.get("top_p", 1.0)), 3)
    methods.append(run(f"MeanShift (T={mean_t}, p={mean_p})", {"temperature": mean_t, "top_p": mean_p}))

    # Oracle: temperature first at p = 1, then p at the best temperature; one seed for the search.
    grid: list[dict[str, Any]] = []
    search = {"seeds": list(seeds)[:1]}
    best_t, best_score = None, -1.0
    for t in grid_temperatures:
        result = run("grid", {"temperature": t, "top_p": 1.0}, **search)
        grid.append({"temperature": t, "top_p": 1.0, "pass1": result.pass1[0], "passk": result.passk[0]})
        if result.pass1[0] > best_score:
            best_t, best_score = t, result.pass1[0]
    best_p = 1.0
    for p in grid_top_ps:
        result = run("grid", {"temperature": best_t, "top_p": p}, **search)
        grid.append({"temperature": best_t, "top_p": p, "pass1": result.pass1[0], "passk": result.passk[0]})
        if result.pass1[0] > best_score:
            best_p, best_score = p, result.pass1[0]
    methods.append(run(f"oracle static (T={best_t}, p={best_p})", {"temperature": best_t, "top_p": best_p}))
    methods.append(autodeco_result)

    nll = heldout_nll(
        model,
        tokenizer,
        problems,
        {
            "default (T=1)": 1.0,
            f"vendor (T={vendor[0]})": vendor[0],
            f"MeanShift (T={mean_t})": mean_t,
            f"oracle static (T={best_t})": best_t,
            "AutoDeco (T̂ per token)": "autodeco",
        },
    )
    settings = {
        **common,
        "num_problems": len(problems),
        "vendor": list(vendor),
        "grid_temperatures": list(grid_temperatures),
        "grid_top_ps": list(grid_top_ps),
        "seconds": time.perf_counter() - started,
    }
    return EvalReport(methods=methods, grid=grid, nll=nll, settings=settings)


def _fingerprint(model: Any, problems: Sequence[Problem], common: dict[str, Any]) -> str:
    """A digest of everything a stored run depends on: problems, sampling settings and the heads' weights."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[p.messages, p.answer] for p in problems], sort_keys=True).encode())
    digest.update(json.dumps({k: v for k, v in common.items() if k != "progress"}, sort_keys=True).encode())
    for name, tensor in sorted(model.heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class _RunStore:
    """Finished runs in a JSON file, valid for one fingerprint (see `run_evaluation(checkpoint=...)`)."""

    def __init__(self, path: str | os.PathLike | None, fingerprint: str) -> None:
        self.path, self.fingerprint, self.runs = path, fingerprint, {}
        if path is not None and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("fingerprint") == fingerprint:
                self.runs = data.get("runs", {})
            else:
                logger.warning("%s holds runs of another evaluation; they are not reused.", path)

    def get(self, key: str) -> MethodResult | None:
        entry = self.runs.get(key)
        return None if entry is None else MethodResult(**entry)

    def put(self, key: str, result: MethodResult) -> None:
        if self.path is None:
            return
        self.runs[key] = asdict(result)
        temporary = f"{os.fspath(self.path)}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"fingerprint": self.fingerprint, "runs": self.runs}, handle, indent=1)
        os.replace(temporary, self.path)


def report_markdown(report: EvalReport | dict[str, Any]) -> str:
    """The results table (pass@1, pass@k as mean ± std over seeds) and the NLL table, as Markdown."""
    data = report.to_dict() if isinstance(report, EvalReport) else report
    k = data["settings"]["k"]
    lines = [f"| method | pass@1 | pass@{k} | mean new tokens |", "|---|---|---|---|"]
    for m in data["methods"]:
        lines.append(
            f"| {m['name']} | {100 * m['pass1_mean']:.1f} ± {100 * m['pass1_std']:.1f} | "
            f"{100 * m['passk_mean']:.1f} ± {100 * m['passk_std']:.1f} | {m['mean_new_tokens']:.1f} |"
        )
    lines += ["", "| temperature used for the NLL | held-out NLL (nats/token) |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in data["nll"].items()]
    return "\n".join(lines) + "\n"
