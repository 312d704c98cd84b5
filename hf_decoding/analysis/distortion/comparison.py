"""The matched-mass comparison: [`compare_strategies`] and its result types."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import invalid_argument
from .matching import match_mass
from .sampling import (
    Prompt,
    _as_list,
    _eos_token_ids,
    _generate_rows,
    _model_device,
    _pad_token_id,
    _progress,
    collect_contexts,
    encode_prompts,
    generate_kwargs_for,
)
from .strategies import DEFAULT_STRATEGIES, PARAMETER_NAMES, _check_strategy, _mean_mass

logger = logging.getLogger(__name__)

_PERCENTILES = (10, 50, 90)


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
        settings = ("num_contexts", "num_samples", "max_new_tokens", "seed")
        return {
            **{name: getattr(self, name) for name in settings},
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
    from ...registry import enable

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
                rows = (model, input_ids, attention_mask, index, max_new_tokens, seed + batch)
                out = _generate_rows(*rows, output_scores=True, **kwargs)
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
