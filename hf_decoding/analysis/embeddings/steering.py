"""Steering token probability through the output embeddings: [`steering_vector`], the reversible
[`steer_token_probability`] edit, and [`steering_curve`] ([`SteeringCurve`]), which compares the achieved ratio
with the target and with the exact `TokenProbabilityLogitsProcessor`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...errors import IncompatibleCheckpointError, invalid_argument
from .edit import OutputEmbeddingEdit
from .encoding import ProbabilityEncodingReport, _check_int, _require_report
from .head import Texts, _chunks, _collect_positions, _encode_texts, output_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DIRECTIONS = ("fitted", "mean_hidden", "least_squares")
DEFAULT_RATIOS = (1 / 20, 1 / 10, 1 / 5, 1 / 2, 1.0, 2.0, 5.0, 10.0, 20.0)


# --------------------------------------------------------------------------------------------------------------------
# steer_token_probability
# --------------------------------------------------------------------------------------------------------------------


def _token_ids(token_ids: Any, vocab_size: int) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.reshape(-1).tolist()
    elif isinstance(token_ids, int) and not isinstance(token_ids, bool):
        token_ids = [token_ids]
    try:
        ids = [int(t) for t in token_ids]
    except (TypeError, ValueError):
        raise invalid_argument("token_ids", token_ids, "a token id or a sequence of token ids") from None
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if not ids or bad or len(set(ids)) != len(ids):
        raise invalid_argument(
            "token_ids",
            token_ids,
            f"a non-empty list of distinct token ids in [0, {vocab_size})",
            "Convert tokens with `tokenizer.convert_tokens_to_ids`.",
        )
    return ids


def _ratios(ratio: Any, count: int, name: str = "ratio") -> torch.Tensor:
    if isinstance(ratio, bool):
        raise invalid_argument(name, ratio, "a positive number")
    if isinstance(ratio, (int, float)):
        values = torch.full((count,), float(ratio), dtype=torch.float64)
    else:
        try:
            values = torch.as_tensor(ratio, dtype=torch.float64).reshape(-1).clone()
        except (TypeError, ValueError):
            raise invalid_argument(name, ratio, "a positive number or one per token") from None
        if values.numel() == 1:
            values = values.expand(count).clone()
        if values.numel() != count:
            raise invalid_argument(name, ratio, f"one number or {count} numbers (one per token)")
    if bool((~torch.isfinite(values) | (values <= 0)).any()):
        raise invalid_argument(name, ratio, "strictly positive and finite", "A ratio of 2 doubles the probability.")
    return values


def steering_vector(
    report: ProbabilityEncodingReport | None, direction: str | torch.Tensor = "fitted", *, ridge: float = 1e-3
) -> torch.Tensor:
    r"""The shift `u` of an output-embedding row per unit of log-ratio: the edit is `E_w ← E_w + log(r)·u`.

    - `"fitted"` (the paper): `u = −A/‖A‖²`, so the fitted encoding `A·E_w + B = −log ᾱ_w` drops by exactly
      `log r`. How well that moves the real ᾱ_w depends on how well `A` matches what the model reads.
    - `"mean_hidden"`: `u = h̄/‖h̄‖²`: the *mean* logit `h̄·E_w` rises by exactly `log r`.
    - `"least_squares"`: `u = (E[hhᵀ] + λI)⁻¹ h̄`, minimising `E_t[(h_t·u − 1)²] + λ‖u‖²` (λ = `ridge`·tr/d): the
      logit shift is as close to `log r` as one vector can make it at every position of the report's texts.
    - a tensor `a` of shape `(hidden_size,)`: an encoding direction with the convention of `A`: `u = −a/‖a‖²`.

    Args:
        report ([`ProbabilityEncodingReport`], *optional*): needed for the named directions.
        direction (`str` or `torch.Tensor`, *optional*, defaults to `"fitted"`): see above.
        ridge (`float`, *optional*, defaults to 1e-3): relative ridge of `"least_squares"`.

    Returns:
        `torch.Tensor` of shape `(hidden_size,)`, float64.
    """
    if isinstance(direction, torch.Tensor):
        a = direction.detach().double().cpu().reshape(-1)
        norm2 = float(a @ a)
        if not norm2 > 0 or not math.isfinite(norm2):
            raise invalid_argument("direction", "a zero or non-finite vector", "a non-zero finite vector")
        return -a / norm2
    if direction not in DIRECTIONS:
        raise invalid_argument("direction", direction, f"one of {DIRECTIONS} or a tensor")
    report = _require_report(report, "direction", direction, "pass a direction tensor")
    if direction == "fitted":
        return -report.fit.coefficients / float(report.fit.coefficients @ report.fit.coefficients)
    mean = report.mean_hidden
    if direction == "mean_hidden":
        return mean / float(mean @ mean)
    moment = report.hidden_second_moment
    lam = ridge * float(torch.trace(moment)) / moment.shape[0]
    return torch.linalg.solve(moment + lam * torch.eye(moment.shape[0], dtype=moment.dtype), mean)


@torch.no_grad()
def steer_token_probability(
    model: PreTrainedModel,
    token_ids: int | Sequence[int] | torch.Tensor,
    ratio: float | Sequence[float] | torch.Tensor,
    *,
    report: ProbabilityEncodingReport | None = None,
    direction: str | torch.Tensor = "fitted",
) -> OutputEmbeddingEdit:
    r"""Edits the output embeddings of `token_ids` so that their probability scales by `ratio`, reversibly.

    Each row moves along the steering direction (see [`steering_vector`]): `E_w ← E_w + log(r_w)·u`. At a position
    with last hidden state `h`, the token's logit moves by `log(r_w)·(h·u)`: the *unnormalised* probability is
    multiplied by `r_w^{h·u}`, which is `r_w` exactly only where `h·u = 1`. The edit is therefore
    context-dependent, and after renormalisation the probability ratio is `r/(1 + (r − 1)p(w))` even where
    `h·u = 1`; a soft-capped model shrinks it further. `TokenProbabilityLogitsProcessor` is the exact, context-free
    counterpart. Other rows, the bias and the input embeddings do not change (tied embeddings are untied first).

    Args:
        model ([`PreTrainedModel`]): the causal LM to edit.
        token_ids (`int` or sequence of `int`): distinct tokens to steer.
        ratio (`float` or sequence of `float`): target probability ratio(s) `r > 0`, one for all or one per token.
        report ([`ProbabilityEncodingReport`], *optional*): provides the fitted direction.
        direction (`str` or `torch.Tensor`, *optional*, defaults to `"fitted"`): `"fitted"` (the paper),
            `"mean_hidden"`, `"least_squares"`, or an encoding direction tensor.

    Returns:
        [`OutputEmbeddingEdit`]: restore it (or use `with`) to undo the edit exactly.

    Raises:
        [`InvalidDecodingArgument`]: `ratio ≤ 0`, bad token ids, no `report` for a named direction.
    """
    head = output_head(model)
    ids = _token_ids(token_ids, head.vocab_size)
    log_ratio = _ratios(ratio, len(ids)).log()  # (K,)
    u = steering_vector(report, direction)
    if u.numel() != head.hidden_size:
        raise IncompatibleCheckpointError(
            f"The steering direction has {u.numel()} entries, the output embeddings {head.hidden_size}."
        )
    weight = head.weight.detach()
    new = weight.clone()
    rows = torch.tensor(ids, device=weight.device)
    shift = (log_ratio.unsqueeze(-1) * u.unsqueeze(0)).to(device=weight.device)  # (K, d)
    new[rows] = (weight[rows].double() + shift).to(weight.dtype)
    details = {
        "token_ids": ids,
        "ratio": log_ratio.exp(),
        "direction": direction if isinstance(direction, str) else "custom",
        "vector": u,
    }
    return OutputEmbeddingEdit(model, new, kind="steer", details=details)


# --------------------------------------------------------------------------------------------------------------------
# steering_curve
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SteeringCurve:
    """Achieved vs target probability ratio, per steering method.

    Args:
        ratios (`list[float]`): target ratios `r`.
        token_ids (`list[int]`): the steered tokens (each is steered on its own).
        achieved (`dict[str, torch.Tensor]`): per method, a `(len(ratios), len(token_ids))` tensor of
            `ᾱ'_w / ᾱ_w`, the ratio of the token's probability averaged over every position of the texts. Methods:
            `"embedding:<direction>"` (the output-embedding edit) and `"processor:probability"` /
            `"processor:logit"` ([`TokenProbabilityLogitsProcessor`] in either mode).
        shift_std (`dict[str, torch.Tensor]`): per method, the standard deviation over positions of the token's
            logit shift divided by `|log r|` (0 for a context-free shift; `nan` at `r = 1`).
        base_probability (`torch.Tensor` of shape `(len(token_ids),)`): ᾱ_w before steering.
        num_positions (`int`).
    """

    ratios: list[float]
    token_ids: list[int]
    achieved: dict[str, torch.Tensor]
    shift_std: dict[str, torch.Tensor]
    base_probability: torch.Tensor
    num_positions: int

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per method: the geometric mean (over tokens) of the achieved ratio at each target, the mean
        `|log(achieved/target)|` over every ratio and token, and the share of (ratio, token) pairs within 10% of
        the target."""
        target = torch.tensor(self.ratios, dtype=torch.float64).log().unsqueeze(-1)  # (R, 1)
        out = {}
        for method, achieved in self.achieved.items():
            error = achieved.log() - target  # (R, K)
            out[method] = {
                "geometric_mean_achieved": achieved.log().mean(-1).exp().tolist(),
                "mean_abs_log_error": float(error.abs().mean()),
                "within_10_percent": float((error.abs() <= math.log(1.1)).double().mean()),
                "mean_relative_shift_std": float(torch.nan_to_num(self.shift_std[method], nan=0.0).mean()),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": list(self.ratios),
            "token_ids": list(self.token_ids),
            "num_positions": self.num_positions,
            "base_probability": self.base_probability.tolist(),
            "summary": self.summary(),
        }


def _default_tokens(report: ProbabilityEncodingReport, num_tokens: int) -> list[int]:
    """Held-out tokens (not used to fit the direction) at evenly spaced quantiles of ᾱ."""
    test = report.fit.test_index
    ranked = test[torch.argsort(report.log_probability[test])]
    picks = ((torch.arange(num_tokens, dtype=torch.float64) + 0.5) / num_tokens * ranked.numel()).long()
    return ranked[picks].tolist()


@torch.no_grad()
def steering_curve(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Texts,
    *,
    report: ProbabilityEncodingReport | None = None,
    token_ids: Sequence[int] | None = None,
    num_tokens: int = 8,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    directions: Sequence[str | torch.Tensor] = ("fitted",),
    batch_size: int = 8,
    max_length: int = 128,
    chunk_size: int = 256,
    progress: bool = True,
) -> SteeringCurve:
    r"""Achieved vs target probability ratio of the embedding edit and of the exact logits processor.

    Each token `w` is steered on its own to every ratio `r`, and its average probability over every position of
    `texts` is compared with the unsteered one: `achieved = ᾱ'_w / ᾱ_w`. Since an edit of row `w` only moves
    logit `w`, the new probability at a position is `σ(z'_w − log Σ_{v≠w} e^{z_v})`: one pass of the unedited
    model gives `z_w` and the log-normaliser of the other tokens, then the installed edit's row `w` (or the
    processor, applied to the two logits `[z_w, log Σ_{v≠w} e^{z_v}]`, which is exact for both modes) gives `z'_w`.

    Args:
        model ([`PreTrainedModel`]), tokenizer ([`PreTrainedTokenizerBase`], *optional*).
        texts (`Sequence[str]` or token-id sequences): the positions the ratio is measured on; use texts that were
            not used to fit `report`.
        report ([`ProbabilityEncodingReport`], *optional*): provides the directions and the default tokens.
        token_ids (`Sequence[int]`, *optional*): tokens to steer; by default `num_tokens` (defaults to 8) held-out
            tokens at evenly spaced quantiles of ᾱ.
        ratios (`Sequence[float]`, *optional*, defaults to 1/20 … 20): target ratios, each > 0.
        directions (`Sequence`, *optional*, defaults to `("fitted",)`): steering directions of the embedding edit
            (see [`steering_vector`]).
        batch_size, max_length, chunk_size, progress: as in [`probability_encoding`].

    Returns:
        [`SteeringCurve`].
    """
    from tqdm.auto import tqdm

    from ...processors.token_probability import TokenProbabilityLogitsProcessor

    head = output_head(model)
    if token_ids is None:
        if report is None:
            raise invalid_argument("token_ids", None, "token ids, or a `report` to choose them from")
        token_ids = _default_tokens(report, _check_int(num_tokens, "num_tokens"))
    ids = _token_ids(token_ids, head.vocab_size)
    ratios = list(ratios)
    if not ratios:
        raise invalid_argument("ratios", ratios, "a non-empty sequence of positive numbers")
    ratio_values = _ratios(ratios, len(ratios), "ratios").tolist()
    positions = _collect_positions(
        model,
        _encode_texts(texts, tokenizer, max_length),
        batch_size=batch_size,
        progress=progress,
        desc="hidden (steering)",
    )
    h = positions.hidden  # (N, d)
    rows = torch.tensor(ids, device=h.device)
    z_parts, rest_parts = [], []
    for part in _chunks(positions.num_positions, chunk_size):
        z = head.logits(h[part]).double()  # (c, V)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        z_w = z[:, rows]  # (c, K)
        p_w = (z_w - lse).exp().clamp_max(1 - 1e-15)
        z_parts.append(z_w.cpu())
        rest_parts.append((lse + torch.log1p(-p_w)).cpu())  # log-normaliser of the other tokens
    z_w, rest = torch.cat(z_parts), torch.cat(rest_parts)  # (N, K)
    base = torch.sigmoid(z_w - rest).mean(0)  # (K,) ᾱ_w

    achieved: dict[str, torch.Tensor] = {}
    shift_std: dict[str, torch.Tensor] = {}
    log_r = torch.tensor(ratio_values, dtype=torch.float64).log()
    bias = head.bias[rows].double().cpu() if head.bias is not None else 0.0
    h_cpu = h.double().cpu()
    for direction in directions:
        name = "embedding:" + (direction if isinstance(direction, str) else "custom")
        ach = torch.empty(len(ratio_values), len(ids), dtype=torch.float64)
        spread = torch.empty_like(ach)
        for i, r in enumerate(tqdm(ratio_values, desc=name, disable=not progress)):
            with steer_token_probability(model, ids, r, report=report, direction=direction) as edit:
                raw = h_cpu @ edit.weight[rows].detach().double().cpu().T + bias  # (N, K)
            z_new = head.cap(raw)
            ach[i] = torch.sigmoid(z_new - rest).mean(0) / base
            spread[i] = (z_new - z_w).std(0, unbiased=False) / abs(float(log_r[i])) if r != 1 else float("nan")
        achieved[name], shift_std[name] = ach, spread
    for mode in ("probability", "logit"):
        name = f"processor:{mode}"
        ach = torch.empty(len(ratio_values), len(ids), dtype=torch.float64)
        for i, r in enumerate(ratio_values):
            processor = TokenProbabilityLogitsProcessor([0], r, mode=mode)
            for j in range(len(ids)):
                two = torch.stack([z_w[:, j], rest[:, j]], dim=-1)  # (N, 2): the token vs all the others
                new = torch.softmax(processor(None, two), dim=-1)[:, 0]
                ach[i, j] = new.mean() / base[j]
        achieved[name] = ach
        shift_std[name] = torch.zeros_like(ach) if mode == "logit" else torch.full_like(ach, float("nan"))
    return SteeringCurve(ratio_values, ids, achieved, shift_std, base, positions.num_positions)
