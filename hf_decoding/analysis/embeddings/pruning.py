"""Pruning output-embedding dimensions: [`prune_output_dimensions`] (the reversible edit, axis-aligned or in the
PCA basis) and [`pruning_curve`] / [`pruning_curves`], which measure how the output distribution and greedy
continuations move as more dimensions are removed ([`PruningCurve`], [`PruningPoint`])."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...errors import HfDecodingError, IncompatibleCheckpointError, invalid_argument
from .edit import OutputEmbeddingEdit
from .encoding import ProbabilityEncodingReport, _check_int, _require_report
from .fit import _generator
from .head import Texts, _chunks, _collect_positions, _encode_texts, _model_device, output_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

RANKINGS = ("variance", "coefficient", "random")
BASES = ("axis", "pca")
DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------------------------------------------------
# prune_output_dimensions
# --------------------------------------------------------------------------------------------------------------------


def _check_fraction(fraction: Any, name: str = "fraction") -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise invalid_argument(name, fraction, "a number in [0, 1)", "Give the share of dimensions to remove.")
    return float(fraction)


def _check_basis(basis: Any) -> str:
    if basis not in BASES:
        raise invalid_argument("basis", basis, f"one of {BASES}")
    return basis


def _removal_order(
    weight: torch.Tensor,
    ranking: str | torch.Tensor,
    basis: str,
    report: ProbabilityEncodingReport | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Order in which dimensions (or principal components) are removed, least relevant first, and the PCA basis."""
    hidden = weight.shape[1]
    if report is not None and report.hidden_size != hidden:
        raise IncompatibleCheckpointError(
            f"The report was measured on output embeddings of size {report.hidden_size}, the model has {hidden}."
        )
    components = None
    if basis == "pca":
        if report is not None:
            components = report.pca_components
        else:  # principal axes of every row
            w = weight.detach().double().cpu()
            w = w - w.mean(0)
            components = torch.linalg.eigh(w.T @ w).eigenvectors.flip(1)
    if isinstance(ranking, torch.Tensor):
        scores = ranking.detach().double().cpu().reshape(-1)
        if scores.numel() != hidden or bool(torch.isnan(scores).any()):
            raise invalid_argument("ranking", tuple(ranking.shape), f"a tensor of {hidden} relevance scores")
        return torch.argsort(scores, stable=True), components
    if ranking == "random":
        return torch.randperm(hidden, generator=generator), components
    if ranking not in RANKINGS:
        raise invalid_argument("ranking", ranking, f"one of {RANKINGS} or a tensor of per-dimension scores")
    report = _require_report(report, "ranking", ranking, "use ranking='random'")
    return torch.argsort(report.saliency(ranking, basis), stable=True), components


def _directions(order: torch.Tensor, components: torch.Tensor | None, hidden: int) -> torch.Tensor:
    """Unit vectors `(hidden, len(order))` of the removed dimensions/components, in removal order."""
    if components is None:
        return torch.eye(hidden, dtype=torch.float64)[:, order]
    return components[:, order]


@torch.no_grad()
def prune_output_dimensions(
    model: PreTrainedModel,
    fraction: float,
    ranking: str | torch.Tensor = "variance",
    *,
    report: ProbabilityEncodingReport | None = None,
    basis: str = "axis",
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> OutputEmbeddingEdit:
    r"""Deletes (zeroes) the least probability-relevant dimensions of the output embeddings, reversibly.

    With `basis="axis"` the columns `E[:, j]` of the removed dimensions are set to 0 (the paper's deletion). With
    `basis="pca"` the coordinates of the rows along the removed principal axes `U_S` are zeroed:
    `E' = E (I − U_S U_Sᵀ)`. Zeroing instead of mean-ablating makes no difference to the output distribution
    unless the model soft-caps its logits: the two differ by the same vector on every row, which shifts every
    logit of a position equally. Neither the bias nor the input embeddings change (tied embeddings are untied for
    the duration of the edit).

    Args:
        model ([`PreTrainedModel`]): the causal LM to edit.
        fraction (`float`): share of the `hidden_size` dimensions to remove, in [0, 1); `floor(fraction·d)` go.
        ranking (`str` or `torch.Tensor`, *optional*, defaults to `"variance"`): which go first:
            `"variance"` (lowest `E[h_j²]·Var_w(E_wj)`), `"coefficient"` (lowest standardised |MLR coefficient|,
            the paper's choice), `"random"` (seeded), or a tensor of `hidden_size` relevance scores (lowest first,
            in the chosen basis).
        report ([`ProbabilityEncodingReport`], *optional*): needed for `"variance"` and `"coefficient"`; its PCA
            basis is used for `basis="pca"` (else the principal axes of all rows).
        basis (`str`, *optional*, defaults to `"axis"`): `"axis"` or `"pca"`.
        seed (`int`, *optional*, defaults to 0), generator (`torch.Generator`, *optional*): for `"random"`.

    Returns:
        [`OutputEmbeddingEdit`]: call `.restore()` or use it as a context manager; `.details["removed"]` lists the
        removed dimensions (or component indices) and `.details["directions"]` their unit vectors.

    Raises:
        [`InvalidDecodingArgument`]: `fraction` outside [0, 1), an unknown `ranking`/`basis`, no `report` where one
            is needed.
    """
    fraction = _check_fraction(fraction)
    basis = _check_basis(basis)
    head = output_head(model)
    hidden = head.hidden_size
    order, components = _removal_order(head.weight, ranking, basis, report, _generator(seed, generator))
    removed = order[: math.floor(fraction * hidden + 1e-9)]
    directions = _directions(removed, components, hidden)  # (d, k)
    weight = head.weight.detach()
    if basis == "axis":
        new = weight.clone()
        new[:, removed.to(weight.device)] = 0
    else:
        u = directions.to(device=weight.device)
        new = (weight.double() - (weight.double() @ u) @ u.T).to(weight.dtype)
    details = {
        "fraction": fraction,
        "basis": basis,
        "removed": removed,
        "directions": directions,
        "ranking": ranking if isinstance(ranking, str) else "custom",
    }
    return OutputEmbeddingEdit(model, new, kind="prune", details=details)


# --------------------------------------------------------------------------------------------------------------------
# pruning_curve
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PruningPoint:
    """Effect of removing `num_removed` dimensions (`fraction` of them).

    Args:
        fraction (`float`), num_removed (`int`).
        metrics (`dict[str, dict[str, float]]`): per split (`"in_distribution"`, `"held_out"`): `kl` mean
            KL(p‖q) per position (nats), `js` mean Jensen–Shannon divergence (nats, at most ln 2), `js_p95` its 95th
            percentile, `top1` share of positions whose argmax is unchanged, `perplexity` of the texts under the
            pruned model, and `js_average` the JS divergence between the position-averaged distributions ᾱ and ᾱ'
            (a dataset-level measure, much smaller than the per-position one).
        greedy_agreement (`float`, *optional*): share of greedy continuation tokens equal to the unpruned model's,
            position by position; `greedy_identical` the share of identical continuations.
    """

    fraction: float
    num_removed: int
    metrics: dict[str, dict[str, float]]
    greedy_agreement: float | None = None
    greedy_identical: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PruningCurve:
    """[`pruning_curve`]'s result: one [`PruningPoint`] per fraction, ascending.

    Args:
        ranking (`str`), basis (`str`), hidden_size (`int`).
        reference_perplexity (`dict[str, float]`): perplexity of each split under the unpruned model.
        points (`list[PruningPoint]`).
    """

    ranking: str
    basis: str
    hidden_size: int
    reference_perplexity: dict[str, float]
    points: list[PruningPoint]

    def largest_prunable(self, max_js: float = 0.01, min_top1: float = 0.95) -> float:
        """The largest fraction `f` such that every measured fraction up to `f` keeps the mean JS ≤ `max_js` and
        the top-1 agreement ≥ `min_top1` on every split (0.0 when even the smallest fraction fails)."""
        best = 0.0
        for point in self.points:
            ok = all(m["js"] <= max_js and m["top1"] >= min_top1 for m in point.metrics.values())
            if not ok:
                break
            best = point.fraction
        return best

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": self.ranking,
            "basis": self.basis,
            "hidden_size": self.hidden_size,
            "reference_perplexity": dict(self.reference_perplexity),
            "largest_prunable_js_0.01_top1_0.95": self.largest_prunable(),
            "points": [p.to_dict() for p in self.points],
        }


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon divergence (nats) between two probability vectors."""
    m = (p + q) / 2
    xlogy = torch.special.xlogy
    return max(0.0, float(xlogy(m, m).sum() * -1 + 0.5 * (xlogy(p, p).sum() + xlogy(q, q).sum())))


def _pad_left(sequences: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def _greedy(model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, pad: int) -> torch.Tensor:
    ids, mask = _pad_left(prompts, pad, _model_device(model))
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new = out[:, ids.shape[1] :].cpu()
    if new.shape[1] < max_new_tokens:  # every row stopped early
        new = torch.cat([new, torch.full((new.shape[0], max_new_tokens - new.shape[1]), pad)], dim=1)
    return new


def _pad_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> int:
    for source in (tokenizer, getattr(model, "generation_config", None), model.config):
        pad = getattr(source, "pad_token_id", None) if source is not None else None
        if isinstance(pad, int):
            return pad
    eos = getattr(model.config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    return int(eos) if isinstance(eos, int) else 0


def _pruning_specs(rankings: Sequence[str] | Mapping[str, tuple[str | torch.Tensor, str]]) -> dict[str, tuple]:
    """`"variance"`, `"coefficient"`, `"random"`, `"pca"` (variance saliency in the PCA basis) or `"ranking:basis"`;
    or a mapping `name -> (ranking, basis)`."""
    if isinstance(rankings, Mapping):
        specs = {str(k): (v[0], _check_basis(v[1])) for k, v in rankings.items()}
    else:
        if isinstance(rankings, str):
            rankings = [rankings]
        specs = {}
        for name in rankings:
            ranking, _, basis = ("variance:pca" if name == "pca" else name).partition(":")
            if ranking not in RANKINGS:
                raise invalid_argument("rankings", name, f"names among {RANKINGS}, 'pca' or 'ranking:basis'")
            specs[name] = (ranking, _check_basis(basis or "axis"))
    if not specs:
        raise invalid_argument("rankings", rankings, "at least one ranking")
    return specs


@torch.no_grad()
def pruning_curve(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Texts,
    held_out_texts: Texts | None = None,
    *,
    report: ProbabilityEncodingReport | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ranking: str | torch.Tensor = "variance",
    basis: str = "axis",
    **kwargs: Any,
) -> PruningCurve:
    r"""Measures how the output distribution moves as more output-embedding dimensions are removed.

    For each fraction (ascending), the dimensions [`prune_output_dimensions`] would remove are removed, and at every
    position of `texts` (in-distribution) and `held_out_texts`: KL(p‖q) and JS(p, q) between the original `p` and
    pruned `q` next-token distributions, top-1 agreement, and the texts' perplexity under `q`. Greedy continuations
    of `prompts` (by default the first `prompt_length` tokens of `num_prompts` held-out texts) are compared token by
    token with the unpruned model's.

    Pruning only changes the LM head, so the last hidden states are computed once and the pruned logits are
    updated incrementally, `z_f = z_0 − (h U_S)(E U_S)ᵀ` over the removed directions; for every fraction the real
    edit is installed too, to generate and to check these logits against the edited model's head.

    Args:
        model ([`PreTrainedModel`]), tokenizer ([`PreTrainedTokenizerBase`], *optional*).
        texts (`Sequence[str]` or token-id sequences): in-distribution evaluation texts.
        held_out_texts (*optional*): out-of-distribution texts (another corpus).
        report ([`ProbabilityEncodingReport`], *optional*): provides the ranking (needed unless `"random"`).
        fractions (`Sequence[float]`, *optional*, defaults to 0, 0.1, …, 0.9): each in [0, 1).
        ranking (`str` or `torch.Tensor`, *optional*, defaults to `"variance"`), basis (`str`, *optional*, defaults
            to `"axis"`): as in [`prune_output_dimensions`].
        prompts (*optional*): prompts of the greedy continuations; `num_prompts` (defaults to 8) and
            `prompt_length` (defaults to 16) choose default ones; `num_prompts=0` skips generation.
        max_new_tokens (`int`, *optional*, defaults to 16): length of the greedy continuations.
        batch_size (`int`, *optional*, defaults to 8), max_length (`int`, *optional*, defaults to 128),
        chunk_size (`int`, *optional*, defaults to 128): positions per `(chunk, vocab)` block.
        seed (`int`, *optional*, defaults to 0), generator (`torch.Generator`, *optional*): for `"random"`.
        progress (`bool`, *optional*, defaults to `True`): tqdm progress bars.

    Returns:
        [`PruningCurve`].
    """
    curves = pruning_curves(
        model,
        tokenizer,
        texts,
        held_out_texts,
        report=report,
        fractions=fractions,
        rankings={"curve": (ranking, _check_basis(basis))},
        **kwargs,
    )
    return curves["curve"]


@torch.no_grad()
def pruning_curves(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Texts,
    held_out_texts: Texts | None = None,
    *,
    report: ProbabilityEncodingReport | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    rankings: Sequence[str] | Mapping[str, tuple[str | torch.Tensor, str]] = (
        "variance",
        "coefficient",
        "random",
        "pca",
    ),
    prompts: Texts | None = None,
    num_prompts: int = 8,
    prompt_length: int = 16,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
    chunk_size: int = 128,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict[str, PruningCurve]:
    r"""[`pruning_curve`] for several rankings at once, sharing the hidden states, the unpruned distributions and the
    unpruned greedy continuations.

    Args:
        rankings (`Sequence[str]` or `Mapping[str, tuple]`, *optional*): `"variance"`, `"coefficient"`,
            `"random"` (axis-aligned), `"pca"` (variance saliency in the PCA basis), `"<ranking>:<basis>"`, or a
            mapping `name -> (ranking, basis)` (a ranking may be a tensor of scores).
        other arguments: as in [`pruning_curve`].

    Returns:
        `dict[str, PruningCurve]`, keyed like `rankings`.
    """
    from tqdm.auto import tqdm

    fractions = sorted(_check_fraction(f, "fractions") for f in fractions)
    if not fractions:
        raise invalid_argument("fractions", fractions, "a non-empty sequence of numbers in [0, 1)")
    specs = _pruning_specs(rankings)
    for name, value in (
        ("batch_size", batch_size),
        ("max_length", max_length),
        ("chunk_size", chunk_size),
        ("max_new_tokens", max_new_tokens),
        ("prompt_length", prompt_length),
    ):
        _check_int(value, name)
    _check_int(num_prompts, "num_prompts", low=0)
    head = output_head(model)
    hidden = head.hidden_size
    g = _generator(seed, generator)
    counts = [math.floor(f * hidden + 1e-9) for f in fractions]
    plans = {}  # name -> (order, removal basis (d, d), rows of E in that basis (V, d))
    for name, (ranking, basis) in specs.items():
        order, components = _removal_order(head.weight, ranking, basis, report, g)
        basis_matrix = _directions(order, components, hidden).to(device=head.weight.device, dtype=head.weight.dtype)
        plans[name] = (order, basis_matrix, head.weight.detach() @ basis_matrix)

    splits = {"in_distribution": _encode_texts(texts, tokenizer, max_length)}
    if held_out_texts is not None:
        splits["held_out"] = _encode_texts(held_out_texts, tokenizer, max_length, name="held_out_texts")
    # totals[name][split]: (fraction, [kl, js, top1, nll]) sums; js_values: per-position JS for the quantiles
    totals = {n: {s: torch.zeros(len(fractions), 4, dtype=torch.float64) for s in splits} for n in specs}
    js_values = {n: {s: [[] for _ in fractions] for s in splits} for n in specs}
    # position-summed distributions, for the divergence between the *average* distributions ᾱ and ᾱ'
    p_sum = {s: torch.zeros(head.vocab_size, dtype=torch.float64) for s in splits}
    q_sum = {n: {s: torch.zeros(len(fractions), head.vocab_size, dtype=torch.float64) for s in splits} for n in specs}
    ref_nll = dict.fromkeys(splits, 0.0)
    n_pos, n_tgt = dict.fromkeys(splits, 0), dict.fromkeys(splits, 0)
    check_hidden: torch.Tensor | None = None
    for split, sequences in splits.items():
        pos = _collect_positions(model, sequences, batch_size=batch_size, progress=progress, desc=f"hidden ({split})")
        n_pos[split] = pos.num_positions
        if check_hidden is None:
            check_hidden = pos.hidden[:4]
        for part in tqdm(_chunks(pos.num_positions, chunk_size), desc=f"pruning ({split})", disable=not progress):
            h = pos.hidden[part]  # (c, d)
            tgt = pos.targets[part].to(h.device)
            has_tgt = tgt >= 0
            n_tgt[split] += int(has_tgt.sum())
            raw0 = head.raw_logits(h).float()  # (c, V)
            logp = torch.log_softmax(head.cap(raw0), dim=-1)
            p = logp.exp()
            p_logp = torch.special.xlogy(p, p).sum(-1, dtype=torch.float64)  # −H(p)
            p_sum[split] += p.sum(0, dtype=torch.float64).cpu()
            top_p = logp.argmax(-1)
            ref_nll[split] -= float(logp[has_tgt].gather(-1, tgt[has_tgt, None]).sum())
            for name, (_, basis_matrix, weight_rot) in plans.items():
                h_rot = h @ basis_matrix  # (c, d): coordinates of h along the removal directions
                raw, done = raw0, 0
                for i, k in enumerate(counts):
                    if k > done:  # remove the next block of directions from every logit
                        raw = raw - h_rot[:, done:k] @ weight_rot[:, done:k].T
                        done = k
                    logq = torch.log_softmax(head.cap(raw), dim=-1)
                    q = logq.exp()
                    kl = (p * (logp - logq)).sum(-1, dtype=torch.float64)
                    # JS = H(m) − (H(p) + H(q))/2, m = (p + q)/2 (exact 0 when q == p)
                    q_logq = torch.special.xlogy(q, q).sum(-1, dtype=torch.float64)
                    m = (p + q) * 0.5
                    js = (0.5 * (p_logp + q_logq) - torch.special.xlogy(m, m).sum(-1, dtype=torch.float64)).clamp_min(0)
                    total = totals[name][split][i]
                    total[0] += float(kl.sum())
                    total[1] += float(js.sum())
                    total[2] += float((logq.argmax(-1) == top_p).sum())
                    total[3] -= float(logq[has_tgt].gather(-1, tgt[has_tgt, None]).sum())
                    js_values[name][split][i].append(js.cpu())
                    q_sum[name][split][i] += q.sum(0, dtype=torch.float64).cpu()

    prompt_ids: list[list[int]] = []
    if prompts is not None:
        prompt_ids = _encode_texts(prompts, tokenizer, max_length, name="prompts")
    elif num_prompts > 0:
        source = splits.get("held_out", splits["in_distribution"])
        prompt_ids = [s[:prompt_length] for s in source if len(s) >= prompt_length][:num_prompts]
        if not prompt_ids:
            prompt_ids = [s[:prompt_length] for s in source][:num_prompts]
    pad = _pad_id(model, tokenizer)
    reference = _greedy(model, prompt_ids, max_new_tokens, pad) if prompt_ids else None

    # The real edits, one per fraction: they generate, and they check the incremental logits above.
    check_raw = head.raw_logits(check_hidden).double()  # (4, V)
    reference_perplexity = {s: math.exp(ref_nll[s] / n_tgt[s]) if n_tgt[s] else float("nan") for s in splits}
    curves = {}
    for name, (ranking, basis) in specs.items():
        order, basis_matrix, weight_rot = plans[name]
        rank_scores = torch.empty(hidden, dtype=torch.float64)
        rank_scores[order] = torch.arange(hidden, dtype=torch.float64)  # replays exactly the curve's order
        check_rot = check_hidden.double() @ basis_matrix.double()
        points = []
        steps = list(zip(fractions, counts, strict=True))
        for i, (fraction, k) in enumerate(tqdm(steps, desc=f"pruned generation ({name})", disable=not progress)):
            expected = check_raw - check_rot[:, :k] @ weight_rot[:, :k].double().T
            with prune_output_dimensions(model, fraction, rank_scores, report=report, basis=basis):
                direct = output_head(model).raw_logits(check_hidden).double()
                if not torch.allclose(direct, expected, rtol=1e-3, atol=1e-3 * (1 + float(expected.abs().max()))):
                    raise HfDecodingError("pruning_curve: the curve's logits differ from the pruned model's (a bug).")
                agreement = identical = None
                if reference is not None:
                    same = _greedy(model, prompt_ids, max_new_tokens, pad) == reference
                    agreement, identical = float(same.double().mean()), float(same.all(-1).double().mean())
            metrics = {}
            for split in splits:
                kl, js, top1 = (totals[name][split][i, :3] / n_pos[split]).tolist()
                nll = float(totals[name][split][i, 3]) / max(n_tgt[split], 1)
                metrics[split] = {
                    "kl": kl,
                    "js": js,
                    "js_p95": float(torch.quantile(torch.cat(js_values[name][split][i]), 0.95)),
                    "top1": top1,
                    "perplexity": math.exp(nll) if n_tgt[split] else float("nan"),
                    "js_average": _js(p_sum[split] / n_pos[split], q_sum[name][split][i] / n_pos[split]),
                }
            points.append(PruningPoint(fraction, k, metrics, agreement, identical))
            logger.info("%s: pruned %.0f%% (%d dims): %s", name, 100 * fraction, k, metrics)
        curves[name] = PruningCurve(
            ranking=ranking if isinstance(ranking, str) else "custom",
            basis=basis,
            hidden_size=hidden,
            reference_perplexity=dict(reference_perplexity),
            points=points,
        )
    return curves
