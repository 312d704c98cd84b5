r"""Comparing decoding strategies at matched mean kept mass (Kempton & Burrell, arXiv 2503.21929, §2b).

Locally normalized truncation reweights every sequence `w` by its distortion `log eps(w) = sum_t -log Z(c_t)`,
where `Z(c_t)` is the probability mass the strategy keeps at step `t` (`sum p^(1/tau)` for temperature). The paper
compares strategies whose *mean* kept mass over a set of contexts is equal (e.g. top-k 50, top-p 0.88 and
temperature 0.95 on Llama-2) and reports how much the distortion varies across samples: only differences
`|log eps(w) - log eps(v)|` between sequences change the sampled distribution.

This module reproduces that protocol on any causal LM through `model.generate`:

1. [`collect_contexts`] draws pure samples from the model and keeps the raw next-token logits of every step;
2. [`kept_mass`] measures `Z` of a strategy on those logits with the package's own processors and the identity
   `d = LSE(l) / tau - LSE(s)` ([`~hf_decoding.processors.distortion_from_scores`]), so `Z = exp(-d)`;
3. [`match_mass`] finds the `k`, `p`, `tau` or `min_p` whose mean kept mass equals a target;
4. [`compare_strategies`] samples under each matched strategy (and under `decoding="distortion_aware_nucleus"`,
   whose kept mass is exactly `p` at every step) and reports the spread of the total distortion that the decoders
   themselves measured (`out.distortion`), the pairwise log distortion ratios, the per-token NLL under the model
   and an estimate of the per-token entropy of the sampling distribution.

```python
>>> from hf_decoding.analysis.distortion import compare_strategies
>>> comparison = compare_strategies(model, tokenizer, ["Tell me a story."], target_mass=[0.65, 0.88])
>>> for row in comparison.table():
...     print(row["strategy"], row["parameter"], row["distortion_std"])
```

All samples have the same length (`min_new_tokens = max_new_tokens`), so a constant per-step distortion gives
identical totals. EOS is therefore never sampled, and the contexts are matched on the EOS-suppressed distribution
that the samplers actually truncate.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import invalid_argument
from ..processors import (
    DistortionAwareNucleusLogitsProcessor,
    PerRowMinPLogitsWarper,
    PerRowTemperatureLogitsWarper,
    PerRowTopKLogitsWarper,
    PerRowTopPLogitsWarper,
    distortion_from_scores,
)

__all__ = [
    "DEFAULT_STRATEGIES",
    "STRATEGIES",
    "DistortionComparison",
    "StrategyResult",
    "collect_contexts",
    "compare_strategies",
    "encode_prompts",
    "generate_kwargs_for",
    "kept_mass",
    "match_mass",
    "plot_histograms",
    "plot_quality_diversity",
]

logger = logging.getLogger(__name__)

#: Strategies understood by [`kept_mass`], [`match_mass`] and [`compare_strategies`].
STRATEGIES: tuple[str, ...] = ("top_k", "top_p", "temperature", "min_p", "distortion_aware_nucleus")

#: Strategies compared by default (the paper's three, plus ours).
DEFAULT_STRATEGIES: tuple[str, ...] = ("top_k", "top_p", "temperature", "distortion_aware_nucleus")

#: Name of the parameter of each strategy, as printed in tables.
PARAMETER_NAMES: dict[str, str] = {
    "top_k": "k",
    "top_p": "p",
    "temperature": "tau",
    "min_p": "min_p",
    "distortion_aware_nucleus": "p",
}

_PERCENTILES = (10, 50, 90)
_PLOT_INSTALL = 'pip install "hf-decoding[plot]"'

Prompt = str | Sequence[int] | torch.Tensor


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise invalid_argument("strategy", strategy, "one of " + ", ".join(repr(s) for s in STRATEGIES))
    return strategy


def _warper(strategy: str, value: float) -> Any:
    """The processor that applies `strategy` with parameter `value` (temperature 1 for the truncations)."""
    if strategy == "top_k":
        if isinstance(value, bool) or float(value) != int(value) or int(value) < 0:
            raise invalid_argument("value", value, "a non-negative integer k for strategy='top_k'")
        return PerRowTopKLogitsWarper(int(value))
    if strategy == "top_p":
        return PerRowTopPLogitsWarper(float(value))
    if strategy == "min_p":
        return PerRowMinPLogitsWarper(float(value))
    if strategy == "temperature":
        return PerRowTemperatureLogitsWarper(float(value))
    return DistortionAwareNucleusLogitsProcessor(float(value))


def kept_mass(logits: torch.Tensor, strategy: str, value: float, *, chunk_size: int = 1024) -> torch.Tensor:
    r"""Per-context kept mass `Z` of a strategy, computed from raw logits.

    `Z = exp(-d)` with `d = LSE(logits) / tau - LSE(scores)` the local-normalization distortion of one step, where
    `scores` is what the package's processor returns:

    - `"top_k"` ([`PerRowTopKLogitsWarper`], ties kept): mass of the `k` most likely tokens;
    - `"top_p"` ([`PerRowTopPLogitsWarper`], transformers' rule, the crossing token kept): in `[p, 1]`;
    - `"min_p"` ([`PerRowMinPLogitsWarper`]): mass of the tokens with `p(v) >= min_p * max p`;
    - `"temperature"` ([`PerRowTemperatureLogitsWarper`]): `sum_v p(v) ** (1 / tau)`;
    - `"distortion_aware_nucleus"` ([`DistortionAwareNucleusLogitsProcessor`]): exactly `p`.

    Args:
        logits (`torch.FloatTensor` of shape `(num_contexts, vocab_size)`): raw next-token logits.
        strategy (`str`): one of [`STRATEGIES`].
        value (`float`): the strategy's parameter (`k`, `p`, `tau` or `min_p`).
        chunk_size (`int`, *optional*, defaults to 1024): rows processed at once (bounds the memory of sorts).

    Returns:
        `torch.FloatTensor` of shape `(num_contexts,)` (float32, on the device of `logits`).
    """
    _check_strategy(strategy)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise invalid_argument("logits", shape, "a tensor of shape (num_contexts, vocab_size)")
    warper = _warper(strategy, value)
    temperature = float(value) if strategy == "temperature" else 1.0
    out = []
    for start in range(0, logits.shape[0], chunk_size):
        chunk = logits[start : start + chunk_size].float()  # (C, V)
        no_ids = torch.empty((chunk.shape[0], 0), dtype=torch.long, device=chunk.device)
        scores = warper(no_ids, chunk)  # (C, V)
        out.append(torch.exp(-distortion_from_scores(chunk, scores, temperature)))  # (C,)
    if not out:
        return torch.zeros(0, device=logits.device)
    return torch.cat(out)


def _mean_mass(logits: torch.Tensor, strategy: str, value: float) -> float:
    return float(kept_mass(logits, strategy, value).double().mean())


def match_mass(
    logits: torch.Tensor, target_mass: float, strategy: str, *, tol: float = 1e-4, max_iter: int = 60
) -> float:
    r"""The parameter of `strategy` whose **mean** kept mass over the contexts equals `target_mass`.

    Bisection on the monotone map parameter -> mean [`kept_mass`]: increasing in `p` (top-p) and `tau`
    (temperature, searched in `(0, 1]`), decreasing in `min_p`. For `"top_k"` the search is over integers and
    returns the `k` whose mean mass is closest to the target. For `"distortion_aware_nucleus"` the kept mass is
    exactly `p`, so the answer is `target_mass` itself. Top-p's mean mass is a step function of `p`; the bisection
    returns a point of the step that brackets the target.

    Args:
        logits (`torch.FloatTensor` of shape `(num_contexts, vocab_size)`): raw next-token logits.
        target_mass (`float`): mean kept mass to reach, in `(0, 1)`.
        strategy (`str`): one of [`STRATEGIES`].
        tol (`float`, *optional*, defaults to `1e-4`): stop when the mean mass is this close to the target.
        max_iter (`int`, *optional*, defaults to 60): bisection steps for the continuous parameters.

    Returns:
        `float`: the parameter (an `int` for `"top_k"`). When the target lies outside the reachable range (e.g.
        below the mean probability of the top token), the closest end of the range is returned with a warning log.
    """
    _check_strategy(strategy)
    if isinstance(target_mass, bool) or not isinstance(target_mass, (int, float)) or not 0 < target_mass < 1:
        raise invalid_argument("target_mass", target_mass, "a number in (0, 1)")
    if strategy == "distortion_aware_nucleus":
        return float(target_mass)

    if strategy == "top_k":
        lo, hi = 1, logits.shape[-1]
        mass_lo = _mean_mass(logits, strategy, lo)
        if mass_lo >= target_mass:
            if mass_lo > target_mass + tol:
                logger.warning("top_k=1 already keeps mean mass %.4f > target %.4f.", mass_lo, target_mass)
            return 1
        mass_hi = 1.0
        # Invariant: mean mass(lo) < target <= mean mass(hi).
        while hi - lo > 1:
            mid = (lo + hi) // 2
            mass_mid = _mean_mass(logits, strategy, mid)
            if mass_mid >= target_mass:
                hi, mass_hi = mid, mass_mid
            else:
                lo, mass_lo = mid, mass_mid
        return lo if abs(mass_lo - target_mass) < abs(mass_hi - target_mass) else hi

    increasing = strategy != "min_p"
    lo, hi = {"top_p": (1e-6, 1.0), "temperature": (1e-2, 1.0), "min_p": (0.0, 1.0)}[strategy]
    mass_at = {lo: _mean_mass(logits, strategy, lo), hi: _mean_mass(logits, strategy, hi)}
    low_end, high_end = (lo, hi) if increasing else (hi, lo)  # parameter giving the smallest / largest mass
    if mass_at[low_end] >= target_mass:
        logger.warning(
            "%s=%g already keeps mean mass %.4f >= target %.4f.", strategy, low_end, mass_at[low_end], target_mass
        )
        return float(low_end)
    if mass_at[high_end] <= target_mass:
        return float(high_end)
    mid = (lo + hi) / 2
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        mass_mid = _mean_mass(logits, strategy, mid)
        if abs(mass_mid - target_mass) <= tol:
            break
        if (mass_mid < target_mass) == increasing:
            lo = mid
        else:
            hi = mid
    return float(mid)


# --------------------------------------------------------------------------------------------------------------------
# Prompts and sampling
# --------------------------------------------------------------------------------------------------------------------


def _as_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(v) for v in ids.reshape(-1).tolist()]
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], (list, tuple)):
        ids = ids[0]
    return [int(v) for v in ids]


def _pad_token_id(model: Any, tokenizer: Any | None) -> int:
    for candidate in (
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _eos_token_ids(model: Any, tokenizer: Any | None) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        return [int(v) for v in eos.reshape(-1).tolist()]
    return [int(v) for v in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def encode_prompts(
    tokenizer: Any | None,
    prompts: Sequence[Prompt],
    *,
    chat: bool | None = None,
    pad_token_id: int = 0,
    device: str | torch.device | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    r"""Tokenizes prompts into a left-padded batch.

    Args:
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed only for string prompts.
        prompts (`list[str | list[int] | torch.LongTensor]`): strings, or token ids used as they are.
        chat (`bool`, *optional*): wrap string prompts as one user turn with the tokenizer's chat template (default:
            when the tokenizer has a chat template).
        pad_token_id (`int`, *optional*, defaults to 0): id put in the left padding.
        device (`str` or `torch.device`, *optional*): where to put the tensors.

    Returns:
        `(input_ids, attention_mask)`, both `torch.LongTensor` of shape `(num_prompts, max_length)`.
    """
    if isinstance(prompts, (str, torch.Tensor)) or not len(prompts):
        raise invalid_argument("prompts", prompts, "a non-empty list of strings or of token-id lists")
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            if tokenizer is None:
                raise invalid_argument(
                    "tokenizer", None, "a tokenizer when prompts are strings", "Pass token-id lists instead."
                )
            use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
            if use_chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
                )
                ids = _as_list(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                ids = _as_list(tokenizer(prompt)["input_ids"])
        else:
            ids = _as_list(prompt)
        if not ids:
            raise invalid_argument("prompts", prompt, "prompts with at least one token")
        encoded.append(ids)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_kwargs_for(strategy: str, value: float) -> dict[str, Any]:
    """`generate` keywords that sample with `strategy` at parameter `value` and nothing else.

    Every other warper is switched off explicitly (`top_k=0`, `top_p=1.0`, `temperature=1.0`, `min_p=None`), since
    transformers otherwise fills in `top_k=50` and the model's generation config may set more.
    """
    _check_strategy(strategy)
    kwargs: dict[str, Any] = {
        "decoding": "sample",
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": None,
    }
    if strategy == "top_k":
        kwargs["top_k"] = int(value)
    elif strategy == "top_p":
        kwargs["top_p"] = float(value)
    elif strategy == "temperature":
        kwargs["temperature"] = float(value)
    elif strategy == "min_p":
        kwargs["min_p"] = float(value)
    else:
        kwargs["decoding"] = "distortion_aware_nucleus"
        kwargs["top_p"] = float(value)
    return kwargs


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def collect_contexts(
    model: Any,
    tokenizer: Any | None,
    prompts: Sequence[Prompt],
    num_contexts: int = 256,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    batch_size: int = 32,
    chat: bool | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Raw next-token logits at contexts visited by pure samples of the model.

    Draws `ceil(num_contexts / max_new_tokens)` samples (prompts taken in turn) with `decoding="sample"`,
    `temperature=1`, no truncation and `min_new_tokens=max_new_tokens`, keeps `out.logits` of every step and returns
    `num_contexts` of them chosen at random (seeded). EOS is suppressed while sampling (as in [`compare_strategies`]),
    but the returned logits are the model's raw ones, EOS included.

    Args:
        model (`PreTrainedModel`): a causal LM; [`hf_decoding.enable`] is applied to it.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for string prompts.
        prompts (`list[str | list[int]]`): see [`encode_prompts`].
        num_contexts (`int`, *optional*, defaults to 256): contexts to return.
        max_new_tokens (`int`, *optional*, defaults to 32): length of each pure sample.
        seed (`int`, *optional*, defaults to 0): seeds the samples and the selection.
        batch_size (`int`, *optional*, defaults to 32): samples generated at once.
        chat (`bool`, *optional*): see [`encode_prompts`].
        progress (`bool`, *optional*, defaults to `False`): show a tqdm bar.

    Returns:
        `torch.FloatTensor` of shape `(num_contexts, vocab_size)` (float32, on CPU).
    """
    from ..registry import enable

    for name, value in (("num_contexts", num_contexts), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_argument(name, value, "a positive integer")
    enable(model)
    input_ids, attention_mask = encode_prompts(
        tokenizer, prompts, chat=chat, pad_token_id=_pad_token_id(model, tokenizer), device=_model_device(model)
    )
    num_rows = math.ceil(num_contexts / max_new_tokens)
    row_prompt = torch.arange(num_rows) % input_ids.shape[0]  # (R,)
    chunks = []
    with _progress(math.ceil(num_rows / batch_size), "contexts", progress) as bar, torch.no_grad():
        for batch, start in enumerate(range(0, num_rows, batch_size)):
            index = row_prompt[start : start + batch_size].to(input_ids.device)
            out = model.generate(
                input_ids=input_ids[index],
                attention_mask=attention_mask[index],
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                return_dict_in_generate=True,
                output_logits=True,
                seed=seed + batch,
                **generate_kwargs_for("temperature", 1.0),
            )
            chunks.append(torch.stack(out.logits, dim=1).reshape(-1, out.logits[0].shape[-1]).float().cpu())  # (b*T, V)
            bar.update(1)
    contexts = torch.cat(chunks)  # (R * T, V)
    order = torch.randperm(contexts.shape[0], generator=torch.Generator().manual_seed(seed))[:num_contexts]
    return contexts[order]


# --------------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------------


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class StrategyResult:
    r"""Samples of one strategy at one target mass, and what was measured on them.

    Args:
        strategy (`str`): one of [`STRATEGIES`].
        target_mass (`float`): the mean kept mass the parameter was matched to.
        parameter (`float`): the matched `k`, `p`, `tau` or `min_p`.
        context_mass (`float`): mean kept mass over the matching contexts at `parameter`.
        generate_kwargs (`dict`): the keywords passed to `generate`.
        sample_mass (`torch.FloatTensor` of shape `(num_samples,)`): mean over steps of the kept mass
            `Z_t = exp(-d_t)` that the decoder measured along each sample.
        total_distortion (`torch.FloatTensor` of shape `(num_samples,)`): `out.distortion.total`, i.e. `log eps(w)`.
        log_ratio (`torch.FloatTensor` of shape `(num_pairs,)`): `|log eps(w) - log eps(v)|` over the pairs of
            samples of the same prompt.
        nll (`torch.FloatTensor` of shape `(num_samples,)`): mean per-token negative log-likelihood under the model.
        entropy (`torch.FloatTensor` of shape `(num_samples,)`): `-(1/n) log q(w)` with `q` the sampling
            distribution, whose mean estimates the per-token entropy of `q`.
        prompt_index (`torch.LongTensor` of shape `(num_samples,)`): prompt of each sample.
        seconds (`float`): wall time of the sampling.
        generated_tokens (`int`): tokens sampled.
    """

    strategy: str
    target_mass: float
    parameter: float
    context_mass: float
    generate_kwargs: dict[str, Any]
    sample_mass: torch.Tensor
    total_distortion: torch.Tensor
    log_ratio: torch.Tensor
    nll: torch.Tensor
    entropy: torch.Tensor
    prompt_index: torch.Tensor
    seconds: float = 0.0
    generated_tokens: int = 0

    @property
    def parameter_name(self) -> str:
        """`"k"`, `"p"`, `"tau"` or `"min_p"`."""
        return PARAMETER_NAMES[self.strategy]

    def log_ratio_percentiles(self, percentiles: Sequence[int] = _PERCENTILES) -> dict[str, float]:
        """Percentiles of [`log_ratio`] as `{"p10": ..., ...}` (NaN without pairs)."""
        if self.log_ratio.numel() == 0:
            return {f"p{q}": math.nan for q in percentiles}
        values = torch.quantile(self.log_ratio.double(), torch.tensor([q / 100 for q in percentiles]).double())
        return {f"p{q}": float(v) for q, v in zip(percentiles, values, strict=True)}

    def row(self) -> dict[str, Any]:
        """One table row (Python scalars)."""
        totals = self.total_distortion.double()
        std = float(totals.std()) if totals.numel() > 1 else math.nan
        percentiles = self.log_ratio_percentiles()
        return {
            "target_mass": self.target_mass,
            "strategy": self.strategy,
            "parameter_name": self.parameter_name,
            "parameter": self.parameter,
            "context_mass": self.context_mass,
            "sample_mass": float(self.sample_mass.double().mean()),
            "distortion_mean": float(totals.mean()),
            "distortion_std": std,
            "log_ratio_p10": percentiles["p10"],
            "log_ratio_p50": percentiles["p50"],
            "log_ratio_p90": percentiles["p90"],
            "nll": float(self.nll.double().mean()),
            "entropy": float(self.entropy.double().mean()),
            "num_samples": int(totals.numel()),
            "num_pairs": int(self.log_ratio.numel()),
            "tokens_per_second": self.generated_tokens / self.seconds if self.seconds > 0 else math.nan,
        }


@dataclass
class DistortionComparison:
    r"""Result of [`compare_strategies`]: one [`StrategyResult`] per (target mass, strategy).

    Args:
        results (`list[StrategyResult]`): in the order (target mass, strategy) they were run.
        num_contexts (`int`): contexts the parameters were matched on.
        num_samples (`int`): samples per strategy.
        max_new_tokens (`int`): length of every sample.
        seed (`int`): the base seed.
        prompts (`list`): the prompts (strings or token-id lists).
    """

    results: list[StrategyResult]
    num_contexts: int
    num_samples: int
    max_new_tokens: int
    seed: int
    prompts: list[Any] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One row per (target mass, strategy): parameter, mean kept mass on contexts and on samples, mean and std
        of the total distortion, 10/50/90th percentiles of the pairwise log distortion ratio, mean per-token NLL and
        entropy estimate, counts and speed."""
        return [result.row() for result in self.results]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable summary: settings, the table (NaN as `None`) and the per-sample totals."""
        return {
            "num_contexts": self.num_contexts,
            "num_samples": self.num_samples,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "prompts": [p if isinstance(p, str) else _as_list(p) for p in self.prompts],
            "table": [{k: _nan_to_none(v) for k, v in row.items()} for row in self.table()],
            "samples": [
                {
                    "target_mass": r.target_mass,
                    "strategy": r.strategy,
                    "generate_kwargs": r.generate_kwargs,
                    "total_distortion": [float(v) for v in r.total_distortion.tolist()],
                    "nll": [float(v) for v in r.nll.tolist()],
                    "entropy": [float(v) for v in r.entropy.tolist()],
                    "prompt_index": [int(v) for v in r.prompt_index.tolist()],
                }
                for r in self.results
            ],
        }

    def to_markdown(self) -> str:
        """The table as GitHub markdown."""
        header = (
            "| target mass | strategy | parameter | kept mass (contexts) | kept mass (samples) | log eps mean | "
            "log eps std | log ratio p10 | p50 | p90 | NLL/token | entropy/token |"
        )
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for row in self.table():
            lines.append(
                f"| {row['target_mass']:.2f} | {row['strategy']} | {row['parameter_name']}={_fmt_param(row)} | "
                f"{row['context_mass']:.3f} | {row['sample_mass']:.3f} | {row['distortion_mean']:.3f} | "
                f"{row['distortion_std']:.3f} | {row['log_ratio_p10']:.3f} | {row['log_ratio_p50']:.3f} | "
                f"{row['log_ratio_p90']:.3f} | {row['nll']:.3f} | {row['entropy']:.3f} |"
            )
        return "\n".join(lines)


def _fmt_param(row: dict[str, Any]) -> str:
    return str(int(row["parameter"])) if row["strategy"] == "top_k" else f"{row['parameter']:.4g}"


def _pairwise_log_ratio(totals: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """`|total_i - total_j|` for every pair `i < j` of samples of the same prompt; shape `(num_pairs,)`."""
    ratios = []
    for prompt in prompt_index.unique():
        group = totals[prompt_index == prompt].double()  # (G,)
        i, j = torch.triu_indices(group.numel(), group.numel(), offset=1)
        ratios.append((group[i] - group[j]).abs())
    return torch.cat(ratios) if ratios else torch.zeros(0, dtype=torch.float64)


def _token_log_probs(logits: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
    """`log softmax(logits_t)[token_t]` per step; `logits` is a tuple of `(B, V)`, `tokens` `(B, T)`. Returns `(B, T)`."""
    stacked = torch.stack(logits, dim=1).float()  # (B, T, V)
    return torch.log_softmax(stacked, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def compare_strategies(
    model: Any,
    tokenizer: Any | None,
    prompts: Sequence[Prompt],
    *,
    target_mass: float | Sequence[float] = 0.88,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    num_samples: int = 32,
    max_new_tokens: int = 32,
    num_contexts: int = 256,
    contexts: torch.Tensor | None = None,
    batch_size: int = 32,
    seed: int = 0,
    chat: bool | None = None,
    progress: bool = True,
) -> DistortionComparison:
    r"""Samples under strategies matched to the same mean kept mass and measures their distortion.

    For each target mass, the `k` (top-k), `p` (top-p), `tau` (temperature) and `min_p` whose mean [`kept_mass`]
    over the contexts equals the target are found with [`match_mass`]; the distortion-aware nucleus uses
    `p = target_mass`. Then `num_samples` samples of exactly `max_new_tokens` tokens (prompts taken in turn) are
    drawn with each strategy and nothing else (see [`generate_kwargs_for`]). Per-sample numbers come from the
    decoders' own accounting (`out.distortion`), the raw logits (`out.logits`, for the NLL) and the final scores
    (`out.scores`, for `log q`).

    Args:
        model (`PreTrainedModel`): a causal LM; [`hf_decoding.enable`] is applied to it.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for string prompts.
        prompts (`list[str | list[int]]`): see [`encode_prompts`].
        target_mass (`float` or `list[float]`, *optional*, defaults to 0.88): mean kept mass(es) to match.
        strategies (`list[str]`, *optional*, defaults to [`DEFAULT_STRATEGIES`]): strategies to compare.
        num_samples (`int`, *optional*, defaults to 32): samples per strategy and target.
        max_new_tokens (`int`, *optional*, defaults to 32): tokens per sample (EOS suppressed).
        num_contexts (`int`, *optional*, defaults to 256): contexts for the matching (see [`collect_contexts`]).
        contexts (`torch.FloatTensor` of shape `(N, V)`, *optional*): precomputed raw logits to match on.
        batch_size (`int`, *optional*, defaults to 32): samples generated at once.
        seed (`int`, *optional*, defaults to 0): seeds contexts and samples (every strategy uses the same seeds).
        chat (`bool`, *optional*): see [`encode_prompts`].
        progress (`bool`, *optional*, defaults to `True`): show tqdm bars.

    Returns:
        [`DistortionComparison`].
    """
    from ..registry import enable

    targets = [target_mass] if isinstance(target_mass, (int, float)) else list(target_mass)
    if not targets:
        raise invalid_argument("target_mass", target_mass, "a number or a non-empty list of numbers in (0, 1)")
    for target in targets:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
            raise invalid_argument("target_mass", target, "in (0, 1)")
    strategies = [_check_strategy(s) for s in strategies]
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_argument(name, value, "a positive integer")

    enable(model)
    eos = _eos_token_ids(model, tokenizer)
    if contexts is None:
        contexts = collect_contexts(
            model,
            tokenizer,
            prompts,
            num_contexts,
            max_new_tokens,
            seed,
            batch_size=batch_size,
            chat=chat,
            progress=progress,
        )
    contexts = contexts.float().clone()
    # The samplers run with min_new_tokens = max_new_tokens: EOS is removed before the warpers see the scores.
    vocab = contexts.shape[-1]
    eos_in_vocab = [e for e in eos if 0 <= e < vocab]
    if eos_in_vocab:
        contexts[:, eos_in_vocab] = -float("inf")

    input_ids, attention_mask = encode_prompts(
        tokenizer, prompts, chat=chat, pad_token_id=_pad_token_id(model, tokenizer), device=_model_device(model)
    )
    prompt_width = input_ids.shape[1]
    row_prompt = torch.arange(num_samples) % input_ids.shape[0]  # (S,)
    num_batches = math.ceil(num_samples / batch_size)

    plan = []
    for target in targets:
        for strategy in strategies:
            parameter = match_mass(contexts, float(target), strategy)
            context_mass = _mean_mass(contexts, strategy, parameter)
            logger.info(
                "target %.3f: %s %s=%s keeps mean mass %.4f on %d contexts",
                target,
                strategy,
                PARAMETER_NAMES[strategy],
                parameter,
                context_mass,
                contexts.shape[0],
            )
            plan.append((float(target), strategy, parameter, context_mass))

    results = []
    with _progress(len(plan) * num_batches, "strategies", progress) as bar, torch.no_grad():
        for target, strategy, parameter, context_mass in plan:
            kwargs = generate_kwargs_for(strategy, parameter)
            bar.set_description(f"{strategy} @ {target:.2f}")
            totals, masses, nlls, entropies = [], [], [], []
            seconds, generated = 0.0, 0
            for batch, start in enumerate(range(0, num_samples, batch_size)):
                index = row_prompt[start : start + batch_size].to(input_ids.device)
                started = time.perf_counter()
                out = model.generate(
                    input_ids=input_ids[index],
                    attention_mask=attention_mask[index],
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=max_new_tokens,
                    return_dict_in_generate=True,
                    output_logits=True,
                    output_scores=True,
                    seed=seed + batch,
                    **kwargs,
                )
                seconds += time.perf_counter() - started
                generated += out.cost.generated_tokens if out.cost is not None else index.numel() * max_new_tokens
                tokens = out.sequences[:, prompt_width:]  # (b, T)
                totals.append(out.distortion.total.double().cpu())
                masses.append(torch.exp(-out.distortion.per_step.double()).mean(-1).cpu())
                nlls.append(-_token_log_probs(out.logits, tokens).double().mean(-1).cpu())
                entropies.append(-_token_log_probs(out.scores, tokens).double().mean(-1).cpu())
                del out
                bar.update(1)
            total = torch.cat(totals)
            results.append(
                StrategyResult(
                    strategy=strategy,
                    target_mass=target,
                    parameter=parameter,
                    context_mass=context_mass,
                    generate_kwargs=kwargs,
                    sample_mass=torch.cat(masses),
                    total_distortion=total,
                    log_ratio=_pairwise_log_ratio(total, row_prompt),
                    nll=torch.cat(nlls),
                    entropy=torch.cat(entropies),
                    prompt_index=row_prompt.clone(),
                    seconds=seconds,
                    generated_tokens=generated,
                )
            )
    return DistortionComparison(
        results=results,
        num_contexts=int(contexts.shape[0]),
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        prompts=list(prompts),
    )


# --------------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------------


def _agg_figure(path: pathlib.Path, figsize: tuple[float, float]) -> Any:
    """A matplotlib `Figure` on the Agg canvas (no global backend change, no display); creates `path`'s folder."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"Plotting needs matplotlib. Install it with: {_PLOT_INSTALL}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_histograms(comparison: DistortionComparison, path: str | pathlib.Path) -> pathlib.Path:
    r"""Saves one PNG: per target mass, a histogram of the total distortion `log eps(w)` of each strategy (left)
    and the empirical CDF of the pairwise log distortion ratio (right).

    Uses matplotlib's object API on the Agg canvas (no global backend change, no display needed).

    Args:
        comparison ([`DistortionComparison`]): what [`compare_strategies`] returned.
        path (`str` or `pathlib.Path`): the PNG file to write (parent directories are created).

    Returns:
        `pathlib.Path`: the written file.

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """
    path = pathlib.Path(path)
    targets = sorted({r.target_mass for r in comparison.results})
    figure = _agg_figure(path, (11, 3.4 * len(targets)))
    axes = figure.subplots(len(targets), 2, squeeze=False)
    for row, target in enumerate(targets):
        results = [r for r in comparison.results if r.target_mass == target]
        values = torch.cat([r.total_distortion.double() for r in results])
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        bins = torch.linspace(low, high, 31).tolist()
        hist_ax, cdf_ax = axes[row]
        for result in results:
            label = f"{result.strategy} ({result.parameter_name}={_fmt_param(result.row())})"
            totals = result.total_distortion.double()
            if totals.numel() > 1 and float(totals.max() - totals.min()) < 1e-6:
                # A constant total (the distortion-aware nucleus) is a single spike: draw it as a line.
                hist_ax.axvline(float(totals.mean()), color="black", linestyle="--", label=f"{label}, constant")
            else:
                hist_ax.hist(totals.numpy(), bins=bins, alpha=0.55, label=label)
            ratios = torch.sort(result.log_ratio.double()).values
            if ratios.numel():
                cdf = torch.arange(1, ratios.numel() + 1, dtype=torch.float64) / ratios.numel()
                cdf_ax.step(ratios.numpy(), cdf.numpy(), where="post", label=label)
        hist_ax.set_title(f"total distortion log eps(w), mean kept mass {target:.2f}")
        hist_ax.set_xlabel(f"log eps(w) over {comparison.max_new_tokens} tokens")
        hist_ax.set_ylabel("samples")
        hist_ax.legend(fontsize="small")
        cdf_ax.set_title(f"pairwise |log eps(w) - log eps(v)|, mean kept mass {target:.2f}")
        cdf_ax.set_xlabel("log distortion ratio")
        cdf_ax.set_ylabel("ECDF")
        cdf_ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_quality_diversity(comparison: DistortionComparison, path: str | pathlib.Path) -> pathlib.Path:
    r"""Saves one PNG: the quality-diversity trade-off of each strategy across the target masses.

    x = entropy per token of the sampling distribution (diversity, `StrategyResult.entropy`), y = negative
    log-likelihood per token under the unmodified model (lower = closer to what the model finds likely,
    `StrategyResult.nll`); one line per strategy through its target masses (each point labelled with its mass),
    error bars = one standard error over samples.

    Args:
        comparison ([`DistortionComparison`]): what [`compare_strategies`] returned.
        path (`str` or `pathlib.Path`): the PNG file to write (parent directories are created).

    Returns:
        `pathlib.Path`: the written file.

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """

    def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
        values = values.double()
        error = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else 0.0
        return float(values.mean()), error

    path = pathlib.Path(path)
    figure = _agg_figure(path, (6.4, 4.6))
    ax = figure.subplots()
    strategies = list(dict.fromkeys(r.strategy for r in comparison.results))
    for strategy in strategies:
        results = sorted((r for r in comparison.results if r.strategy == strategy), key=lambda r: r.target_mass)
        x = [mean_and_error(r.entropy) for r in results]
        y = [mean_and_error(r.nll) for r in results]
        ax.errorbar(
            [v for v, _ in x],
            [v for v, _ in y],
            xerr=[e for _, e in x],
            yerr=[e for _, e in y],
            marker="o",
            markersize=4,
            capsize=2,
            label=strategy,
        )
        for result, (xv, _), (yv, _) in zip(results, x, y, strict=True):
            ax.annotate(f"{result.target_mass:g}", (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("entropy per token of the sampler (diversity)")
    ax.set_ylabel("NLL per token under the model (lower = more likely)")
    ax.set_title(
        f"quality vs diversity at matched kept mass ({comparison.num_samples} samples x "
        f"{comparison.max_new_tokens} tokens per point)",
        fontsize=9,
    )
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path
