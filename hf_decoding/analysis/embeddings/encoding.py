"""[`probability_encoding`]: how the output embeddings encode token probability (ᾱ_w and unigram targets,
the MLR fit, saliencies, PCA, R² vs number of dimensions, the mean-logit baseline), and its
[`ProbabilityEncodingReport`] / [`DimensionCurve`] results."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...errors import invalid_argument
from .fit import (
    LinearFit,
    _Design,
    _features,
    _fit_from_design,
    _generator,
    _pearson,
    _r2,
    _spearman,
    _vocabulary_split,
)
from .head import Texts, _chunks, _collect_positions, _encode_texts, output_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TARGETS = ("probability", "unigram")


# --------------------------------------------------------------------------------------------------------------------
# probability_encoding
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DimensionCurve:
    """Held-out R² of the MLR refitted on the top-k dimensions only.

    Args:
        num_dimensions (`list[int]`): the values of k.
        top_coefficient (`list[float]`): dimensions ranked by standardised |coefficient| (the paper's ranking).
        top_variance (`list[float]`): dimensions ranked by `E[h_j²]·Var_w(E_wj)`.
        top_components (`list[float]`): the k principal components of the output embeddings with most variance.
        random_mean (`list[float]`), random_std (`list[float]`): k random dimensions, over seeded repeats.
    """

    num_dimensions: list[int]
    top_coefficient: list[float]
    top_variance: list[float]
    top_components: list[float]
    random_mean: list[float]
    random_std: list[float]

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.__dict__.items()}


@dataclass
class ProbabilityEncodingReport:
    """What [`probability_encoding`] measured. Tensors are float64 on CPU; `to_dict()` gives the JSON summary.

    Args:
        target (`str`): `"probability"` (ᾱ_w) or `"unigram"`: the target of `fit`, saliencies and curves.
        num_texts (`int`), num_positions (`int`): the data ᾱ was averaged over.
        vocab_size (`int`), hidden_size (`int`), tied (`bool`), has_bias (`bool`), softcap (`float`, *optional*):
            the output head.
        log_probability (`torch.Tensor` of shape `(vocab_size,)`): `log ᾱ_w`, the log of the output probability
            averaged over every position.
        log_unigram (`torch.Tensor` of shape `(vocab_size,)`): log of the smoothed unigram frequency of the tokens
            in the texts.
        mean_logits (`torch.Tensor` of shape `(vocab_size,)`): the logit averaged over positions, `z̄_w`.
        mean_hidden (`torch.Tensor` of shape `(hidden_size,)`): `h̄`, the mean last hidden state.
        hidden_second_moment (`torch.Tensor` of shape `(hidden_size, hidden_size)`): `E[h hᵀ]`.
        fit (`LinearFit`): the MLR of `−log target` on the output embeddings; `alternative_fit` is the other target.
        coefficient_saliency (`torch.Tensor` of shape `(hidden_size,)`): `|A_j|·std_w(E_wj)` (standardised
            coefficient).
        variance_saliency (`torch.Tensor` of shape `(hidden_size,)`): `E[h_j²]·Var_w(E_wj)`, the variance over
            tokens of dimension j's logit contribution, averaged over positions (model-based, no fitting).
        pca_components (`torch.Tensor` of shape `(hidden_size, hidden_size)`): principal axes of the output
            embeddings (columns, most variance first), fitted on the train tokens; `pca_variance` their variances.
        pca_coefficient_saliency, pca_variance_saliency (`torch.Tensor` of shape `(hidden_size,)`): both saliencies
            in the PCA basis.
        embedding_projection (`torch.Tensor` of shape `(vocab_size, 2)`): every row on the first two components.
        dimension_curve ([`DimensionCurve`]): R² vs number of dimensions.
        baseline (`dict[str, float]`): the closed-form predictor `−z̄_w + c` on the held-out tokens (`pearson`,
            `spearman`, `r2_unit_slope`: slope 1 and c from the train tokens, `r2_affine`: slope and c fitted), and
            `cosine_coefficients_mean_hidden`: cos(A, −h̄).
        alternative_fit (`LinearFit`): the MLR for the other target.
    """

    target: str
    num_texts: int
    num_positions: int
    vocab_size: int
    hidden_size: int
    tied: bool
    has_bias: bool
    softcap: float | None
    log_probability: torch.Tensor
    log_unigram: torch.Tensor
    mean_logits: torch.Tensor
    mean_hidden: torch.Tensor
    hidden_second_moment: torch.Tensor
    fit: LinearFit
    alternative_fit: LinearFit
    coefficient_saliency: torch.Tensor
    variance_saliency: torch.Tensor
    pca_components: torch.Tensor
    pca_variance: torch.Tensor
    pca_coefficient_saliency: torch.Tensor
    pca_variance_saliency: torch.Tensor
    embedding_projection: torch.Tensor
    dimension_curve: DimensionCurve
    baseline: dict[str, float] = field(default_factory=dict)

    def saliency(self, ranking: str = "variance", basis: str = "axis") -> torch.Tensor:
        """Per-dimension (or per-component) relevance: `"variance"` or `"coefficient"`, `"axis"` or `"pca"`."""
        table = {
            ("variance", "axis"): self.variance_saliency,
            ("coefficient", "axis"): self.coefficient_saliency,
            ("variance", "pca"): self.pca_variance_saliency,
            ("coefficient", "pca"): self.pca_coefficient_saliency,
        }
        if (ranking, basis) not in table:
            raise invalid_argument("ranking", ranking, "'variance' or 'coefficient'")
        return table[(ranking, basis)]

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """JSON-ready summary (no vocabulary-sized arrays)."""
        return {
            "target": self.target,
            "num_texts": self.num_texts,
            "num_positions": self.num_positions,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "tied_embeddings": self.tied,
            "lm_head_bias": self.has_bias,
            "final_logit_softcapping": self.softcap,
            "fit": self.fit.to_dict(),
            "alternative_fit": {"target": _other(self.target), **self.alternative_fit.to_dict()},
            "baseline_mean_hidden": dict(self.baseline),
            "saliency_rank_correlation": _spearman(self.coefficient_saliency, self.variance_saliency),
            "top_dimensions_coefficient": torch.argsort(self.coefficient_saliency, descending=True)[:top].tolist(),
            "top_dimensions_variance": torch.argsort(self.variance_saliency, descending=True)[:top].tolist(),
            "pca_explained_variance_top": (self.pca_variance[:top] / self.pca_variance.sum()).tolist(),
            # share of the total saliency carried by the least salient `fraction` of the dimensions
            "saliency_share_of_least_salient": {
                name: {f"{f:.1f}": _low_share(self.saliency(name), f) for f in (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)}
                for name in ("variance", "coefficient")
            },
            # E[h_j^2] of the largest dimensions, as a share of E[|h|^2] (massive activations)
            "hidden_energy_share_top": {
                f"top{k}": float(
                    torch.topk(torch.diagonal(self.hidden_second_moment), min(k, self.hidden_size)).values.sum()
                    / torch.trace(self.hidden_second_moment)
                )
                for k in (1, 5, 20)
            },
            "dimension_curve": self.dimension_curve.to_dict(),
        }


def _low_share(saliency: torch.Tensor, fraction: float) -> float:
    values = torch.sort(saliency).values
    return float(values[: math.floor(fraction * values.numel() + 1e-9)].sum() / values.sum())


def _other(target: str) -> str:
    return "unigram" if target == "probability" else "probability"


def _default_ks(hidden: int) -> list[int]:
    ks, k = [], 1
    while k < hidden:
        ks.append(k)
        k *= 2
    return [*ks, hidden]


def _check_int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid_argument(name, value, f"an integer ≥ {low}")
    return value


def _require_report(
    report: ProbabilityEncodingReport | None, name: str, value: Any, alternative: str
) -> ProbabilityEncodingReport:
    """`report`, or an error saying that `name=value` needs one (`alternative`: how to do without it)."""
    if report is None:
        raise invalid_argument(
            "report",
            None,
            f"a ProbabilityEncodingReport for {name}={value!r}",
            f"Run `probability_encoding(model, tokenizer, texts)` first, or {alternative}.",
        )
    return report


@torch.no_grad()
def probability_encoding(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Texts,
    *,
    target: str = "probability",
    batch_size: int = 8,
    max_length: int = 128,
    chunk_size: int = 256,
    test_fraction: float = 0.2,
    num_dimensions: Sequence[int] | None = None,
    random_repeats: int = 3,
    unigram_smoothing: float = 0.5,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> ProbabilityEncodingReport:
    r"""Measures how the output embeddings encode token probability (Cho et al., arXiv 2406.01468).

    One pass over `texts` gives, at every real position `t`, the last hidden state `h_t` and the output
    distribution `p_t = softmax(softcap(E h_t + b))`. Then:

    - `ᾱ_w = mean_t p_t(w)` over all positions of all texts (the *average output probability*), and the smoothed
      unigram frequency `(count_w + s) / (N + s·V)` of the tokens in the texts;
    - the MLR `−log target_w ≈ A·E_w + B` (the LM-head bias, if any, is one more regressor), fitted on a seeded
      split of the **vocabulary** and scored (R², Pearson, Spearman) on the held-out tokens;
    - saliencies `|A_j|·std_w(E_wj)` and `E_t[h_tj²]·Var_w(E_wj)`, in the axis and in the PCA basis;
    - held-out R² refitted on the top-k dimensions (both rankings), top-k principal components, and k random
      dimensions;
    - the closed-form baseline `−log ᾱ_w ≈ −z̄_w + c`, `z̄_w = h̄·E_w + b_w` the mean logit (by Jensen,
      `log ᾱ_w ≥ z̄_w − E_t[log Z_t]`), with no fitted coefficients.

    Args:
        model ([`PreTrainedModel`]): a causal LM (eval mode).
        tokenizer ([`PreTrainedTokenizerBase`], *optional*): needed when `texts` holds strings.
        texts (`Sequence[str]` or `Sequence[Sequence[int]]`): the dataset D; strings or token-id sequences.
        target (`str`, *optional*, defaults to `"probability"`): `"probability"` (ᾱ_w) or `"unigram"`; the target
            of `report.fit`, the saliencies and the curves. The other target is fitted too (`alternative_fit`).
        batch_size (`int`, *optional*, defaults to 8): texts per forward pass.
        max_length (`int`, *optional*, defaults to 128): texts are truncated to this many tokens.
        chunk_size (`int`, *optional*, defaults to 256): positions per `(chunk, vocab)` softmax (memory bound).
        test_fraction (`float`, *optional*, defaults to 0.2): share of the vocabulary held out.
        num_dimensions (`Sequence[int]`, *optional*): values of k for the curves; powers of two and `hidden_size` by
            default.
        random_repeats (`int`, *optional*, defaults to 3): random subsets per k.
        unigram_smoothing (`float`, *optional*, defaults to 0.5): add-s smoothing of the unigram counts.
        seed (`int`, *optional*, defaults to 0), generator (`torch.Generator`, *optional*): the vocabulary split and
            the random dimensions.
        progress (`bool`, *optional*, defaults to `True`): show tqdm progress bars.

    Returns:
        [`ProbabilityEncodingReport`].

    Raises:
        [`InvalidDecodingArgument`]: empty `texts`, a bad `target`, `test_fraction` outside (0, 1), etc.
        [`IncompatibleCheckpointError`]: the model's logits are not `softcap(lm_head(h))`.
    """
    from tqdm.auto import tqdm

    if target not in TARGETS:
        raise invalid_argument("target", target, f"one of {TARGETS}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length), ("chunk_size", chunk_size)):
        _check_int(value, name)
    _check_int(random_repeats, "random_repeats", low=0)
    if isinstance(unigram_smoothing, bool) or not isinstance(unigram_smoothing, (int, float)) or unigram_smoothing <= 0:
        raise invalid_argument("unigram_smoothing", unigram_smoothing, "a positive number", "Use e.g. 0.5.")
    g = _generator(seed, generator)
    sequences = _encode_texts(texts, tokenizer, max_length)
    head = output_head(model)
    vocab, hidden = head.vocab_size, head.hidden_size
    ks = _default_ks(hidden) if num_dimensions is None else sorted({int(k) for k in num_dimensions})
    if not ks or ks[0] < 1 or ks[-1] > hidden:
        raise invalid_argument("num_dimensions", num_dimensions, f"integers in [1, {hidden}]")
    train, test = _vocabulary_split(vocab, test_fraction, g)

    positions = _collect_positions(model, sequences, batch_size=batch_size, progress=progress, desc="hidden states")
    h = positions.hidden  # (N, d)
    n = positions.num_positions
    prob_sum = torch.zeros(vocab, dtype=torch.float64)
    logit_sum = torch.zeros(vocab, dtype=torch.float64)
    for part in tqdm(_chunks(n, chunk_size), desc="output distributions", disable=not progress, unit="chunk"):
        z = head.logits(h[part]).float()  # (c, V)
        prob_sum += torch.softmax(z, dim=-1).sum(0, dtype=torch.float64).cpu()
        logit_sum += z.sum(0, dtype=torch.float64).cpu()
    h64 = h.double().cpu()
    mean_hidden = h64.mean(0)
    second_moment = h64.T @ h64 / n  # (d, d)
    log_probability = torch.log(prob_sum / n)
    counts = torch.bincount(positions.tokens[positions.tokens < vocab], minlength=vocab).double()
    log_unigram = torch.log((counts + unigram_smoothing) / (counts.sum() + unigram_smoothing * vocab))
    mean_logits = logit_sum / n

    x = _features(head.weight, head.bias)
    targets = {"probability": -log_probability, "unigram": -log_unigram}
    designs = {name: _Design.build(x, y, train, test) for name, y in targets.items()}
    fits = {name: _fit_from_design(designs[name], x, targets[name], train, test, hidden) for name in targets}
    fit, design = fits[target], designs[target]
    logger.info("MLR of -log %s: held-out R2 %.4f, Spearman %.4f", target, fit.r2, fit.spearman)

    # Saliencies and PCA, from the train tokens only (nothing about the held-out tokens leaks into the curves).
    emb_var = torch.diagonal(design.gram)[:hidden] / design.n_train  # Var_w(E_wj)
    coefficient_saliency = fit.coefficients.abs() * emb_var.sqrt()
    variance_saliency = torch.diagonal(second_moment) * emb_var
    pca_variance, pca_components = torch.linalg.eigh(design.gram[:hidden, :hidden] / design.n_train)
    pca_variance, pca_components = pca_variance.flip(0).clamp_min(0), pca_components.flip(1)
    pca_coefficient_saliency = (pca_components.T @ fit.coefficients).abs() * pca_variance.sqrt()
    pca_variance_saliency = torch.einsum("ij,jk,ki->i", pca_components.T, second_moment, pca_components) * pca_variance
    projection = ((x[:, :hidden] - design.x_mean[:hidden]) @ pca_components[:, :2]).float()

    # R² vs number of dimensions. The bias column (if any) stays in every subset.
    extra = torch.arange(hidden, x.shape[1])
    rotation = torch.eye(x.shape[1], dtype=torch.float64)
    rotation[:hidden, :hidden] = pca_components
    pca_design = design.rotated(rotation)
    by_coefficient = torch.argsort(coefficient_saliency, descending=True)
    by_variance = torch.argsort(variance_saliency, descending=True)
    curve = DimensionCurve(ks, [], [], [], [], [])
    for k in tqdm(ks, desc="R² vs dimensions", disable=not progress, unit="k"):
        curve.top_coefficient.append(design.test_r2(torch.cat([by_coefficient[:k], extra])))
        curve.top_variance.append(design.test_r2(torch.cat([by_variance[:k], extra])))
        curve.top_components.append(pca_design.test_r2(torch.cat([torch.arange(k), extra])))
        scores = [
            design.test_r2(torch.cat([torch.randperm(hidden, generator=g)[:k], extra])) for _ in range(random_repeats)
        ]
        scores_t = torch.tensor(scores, dtype=torch.float64)
        curve.random_mean.append(float(scores_t.mean()) if scores else float("nan"))
        curve.random_std.append(float(scores_t.std(unbiased=False)) if scores else float("nan"))

    # Closed-form baseline from the mean logit z̄_w = h̄·E_w + b_w (softcap: the mean of the capped logits).
    y = targets[target]
    pred = -mean_logits
    offset = float((y[train] - pred[train]).mean())
    slope_design = _Design.build(pred.unsqueeze(-1), y, train, test)
    baseline = {
        "pearson": _pearson(pred[test], y[test]),
        "spearman": _spearman(pred[test], y[test]),
        "r2_unit_slope": _r2(pred[test] + offset, y[test]),
        "r2_affine": slope_design.test_r2(torch.arange(1)),
        "cosine_coefficients_mean_hidden": float(
            torch.nn.functional.cosine_similarity(fit.coefficients, -mean_hidden, dim=0)
        ),
    }
    return ProbabilityEncodingReport(
        target=target,
        num_texts=len(sequences),
        num_positions=n,
        vocab_size=vocab,
        hidden_size=hidden,
        tied=head.tied,
        has_bias=head.bias is not None,
        softcap=head.softcap,
        log_probability=log_probability,
        log_unigram=log_unigram,
        mean_logits=mean_logits,
        mean_hidden=mean_hidden,
        hidden_second_moment=second_moment,
        fit=fit,
        alternative_fit=fits[_other(target)],
        coefficient_saliency=coefficient_saliency,
        variance_saliency=variance_saliency,
        pca_components=pca_components,
        pca_variance=pca_variance,
        pca_coefficient_saliency=pca_coefficient_saliency,
        pca_variance_saliency=pca_variance_saliency,
        embedding_projection=projection,
        dimension_curve=curve,
        baseline=baseline,
    )
