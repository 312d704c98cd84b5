"""Token probability encoded in output embeddings: analysis, dimension pruning and probability steering.

Cho et al., "Understanding Token Probability Encoding in Output Embeddings" (COLING 2025, arXiv 2406.01468) observe
that the average output probability of a token over a dataset, ᾱ_w, is close to log-linear in its output embedding
(its LM-head row) `E_w`:

    −log ᾱ_w ≈ A · E_w + B            (multiple linear regression over the vocabulary)

and that the encoding is sparse: a few dimensions carry it, 30–40% of the dimensions can be deleted with little
change of the output distribution, and moving `E_w` along the fitted direction scales the token's probability by a
chosen ratio. This module measures all three on any causal LM of transformers:

- [`probability_encoding`]: ᾱ_w (and the unigram frequency as an alternative target), the MLR fit scored on a
  held-out split of the *vocabulary*, two per-dimension saliencies, the R²-vs-number-of-dimensions curves (top
  dimensions, top principal components, random dimensions) and the closed-form baseline `−log ᾱ_w ≈ −z̄_w + c`
  from the mean logit (the mean final hidden state `h̄` times `E_w`, plus any bias).
- [`prune_output_dimensions`]: zeroes the least probability-relevant dimensions, axis-aligned or in the PCA basis
  of the output embeddings; [`pruning_curve`] measures what that does, for 0–90% removed.
- [`steer_token_probability`]: moves chosen rows along a steering direction so that their probability scales by a
  ratio; [`steering_curve`] compares the achieved ratio with the target, and with the exact
  [`~hf_decoding.processors.token_probability.TokenProbabilityLogitsProcessor`].

Every edit is reversible and exact: it installs a *new* `nn.Parameter` on the output-embedding module and
[`OutputEmbeddingEdit.restore`] puts the original parameter object back, so the weights are bit-identical
afterwards and the original tensor is never written to. With tied embeddings (SmolLM2, Gemma) this also unties
the output embeddings for the duration of the edit: the input embeddings never change, and the tie is back after
`restore`. Do not `save_pretrained` a model while an edit is active.

The logits are reconstructed as `softcap(lm_head(h))`, where `h` is the last hidden state of `model.get_decoder()`
(after the final norm) and `softcap` is the model's `final_logit_softcapping` when it has one; an `lm_head` bias is
included by the head module itself. Every collection pass checks this reconstruction against the model's own
logits once and raises [`IncompatibleCheckpointError`] for architectures that scale their logits otherwise.

Example:

```python
>>> import hf_decoding as hfd
>>> from hf_decoding.analysis import embeddings
>>> model, tok = hfd.load_default_model()
>>> report = embeddings.probability_encoding(model, tok, texts)          # texts: a list of strings
>>> report.fit.r2, report.fit.spearman                                   # held-out vocabulary split
>>> with embeddings.prune_output_dimensions(model, 0.3, report=report):  # 30% of the dimensions zeroed
...     out = model.generate(**inputs)
>>> with embeddings.steer_token_probability(model, [tok.convert_tokens_to_ids("Ġcat")], 5.0, report=report):
...     out = model.generate(**inputs)                                    # "cat" about 5× as likely
```
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import HfDecodingError, IncompatibleCheckpointError, invalid_argument

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DimensionCurve",
    "LinearFit",
    "OutputEmbeddingEdit",
    "OutputHead",
    "ProbabilityEncodingReport",
    "PruningCurve",
    "PruningPoint",
    "SteeringCurve",
    "fit_log_linear",
    "output_head",
    "plot_dimension_curve",
    "plot_probability_pca",
    "plot_pruning_curves",
    "plot_steering_curve",
    "probability_encoding",
    "prune_output_dimensions",
    "pruning_curve",
    "pruning_curves",
    "steer_token_probability",
    "steering_curve",
    "steering_vector",
]

logger = logging.getLogger(__name__)

Texts = Sequence[str] | Sequence[Sequence[int]] | Sequence[torch.Tensor]

TARGETS = ("probability", "unigram")
RANKINGS = ("variance", "coefficient", "random")
BASES = ("axis", "pca")
DIRECTIONS = ("fitted", "mean_hidden", "least_squares")
DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_RATIOS = (1 / 20, 1 / 10, 1 / 5, 1 / 2, 1.0, 2.0, 5.0, 10.0, 20.0)


# --------------------------------------------------------------------------------------------------------------------
# The output head
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputHead:
    """The pieces of a model that turn its last hidden state into logits.

    Args:
        module (`nn.Module`): `model.get_output_embeddings()` (usually an `nn.Linear` without bias).
        weight (`torch.Tensor` of shape `(vocab_size, hidden_size)`): its current weight, the output embeddings `E`.
        bias (`torch.Tensor` of shape `(vocab_size,)`, *optional*): the LM-head bias, when it has one.
        softcap (`float`, *optional*): `final_logit_softcapping` (logits become `c·tanh(z/c)`), when set.
        tied (`bool`): whether the weight is the very parameter of the input embeddings.
    """

    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None
    tied: bool

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`lm_head(hidden)` before soft-capping: `(..., hidden_size)` → `(..., vocab_size)`."""
        return self.module(hidden.to(self.weight.dtype))

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """Applies the final-logit soft-capping, if the model has one."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits from its last hidden state: `softcap(lm_head(hidden))`."""
        return self.cap(self.raw_logits(hidden))


def output_head(model: PreTrainedModel) -> OutputHead:
    """Finds the output embeddings of a causal LM, with its bias, soft-capping and tying.

    Args:
        model ([`PreTrainedModel`]): a causal LM whose `get_output_embeddings()` returns a module with a 2-D `weight`.

    Returns:
        [`OutputHead`]: the head as it is now (an active edit's weight, if one is installed).

    Raises:
        [`IncompatibleCheckpointError`]: if the model has no usable output embeddings.
    """
    get = getattr(model, "get_output_embeddings", None)
    module = get() if callable(get) else None
    weight = getattr(module, "weight", None)
    if module is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise IncompatibleCheckpointError(
            f"{type(model).__name__} has no output embeddings with a 2-D weight (`get_output_embeddings()` returned "
            f"{module!r}). The embedding analysis needs a causal LM with an LM head such as `nn.Linear`."
        )
    bias = getattr(module, "bias", None)
    bias = bias if isinstance(bias, torch.Tensor) else None
    get_input = getattr(model, "get_input_embeddings", None)
    input_module = get_input() if callable(get_input) else None
    tied = input_module is not None and getattr(input_module, "weight", None) is weight
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    return OutputHead(module=module, weight=weight, bias=bias, softcap=float(softcap) if softcap else None, tied=tied)


# --------------------------------------------------------------------------------------------------------------------
# Texts, hidden states
# --------------------------------------------------------------------------------------------------------------------


def _encode_texts(
    texts: Texts, tokenizer: PreTrainedTokenizerBase | None, max_length: int, name: str = "texts"
) -> list[list[int]]:
    """Tokenizes strings (or takes token-id sequences as they are), truncates them and drops empty ones."""
    fix = "Pass a non-empty list of strings (with `tokenizer=`) or of token-id sequences."
    if texts is None or isinstance(texts, (str, bytes)):
        raise invalid_argument(name, texts, "a list of texts, not a single string", fix)
    texts = list(texts)
    if not texts:
        raise invalid_argument(name, texts, "a non-empty sequence of texts", fix)
    sequences = []
    for text in texts:
        if isinstance(text, str):
            if tokenizer is None:
                raise invalid_argument("tokenizer", None, "a tokenizer when `texts` holds strings", fix)
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        elif isinstance(text, torch.Tensor):
            ids = text.reshape(-1).tolist()
        else:
            try:
                ids = [int(t) for t in text]
            except (TypeError, ValueError):
                raise invalid_argument(name, text, "strings or sequences of token ids", fix) from None
        ids = list(ids)[:max_length]
        if ids:
            sequences.append(ids)
    if not sequences:
        raise invalid_argument(name, texts, "texts with at least one token", "Every text was empty after tokenization.")
    return sequences


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _decoder(model: PreTrainedModel) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    try:
        decoder = get() if callable(get) else None
    except (AttributeError, ValueError, NotImplementedError):
        decoder = None
    if decoder is None:
        raise IncompatibleCheckpointError(
            f"{type(model).__name__}.get_decoder() does not return the decoder stack; the embedding analysis needs "
            "the last hidden state (after the final norm) that the LM head reads."
        )
    return decoder


def _last_hidden(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


@torch.no_grad()
def _check_head(model: PreTrainedModel, head: OutputHead, sequence: list[int]) -> None:
    """Checks once that `softcap(lm_head(h))` reproduces the model's logits, so every number below is the model's."""
    device = _model_device(model)
    ids = torch.tensor([sequence[:16]], device=device)
    mask = torch.ones_like(ids)
    expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()  # (1, T, V)
    got = head.logits(_last_hidden(_decoder(model), ids, mask)).float()
    if expected.shape != got.shape or not torch.allclose(
        got, expected, rtol=1e-3, atol=1e-3 * (1 + expected.abs().max())
    ):
        diff = (got - expected).abs().max().item() if expected.shape == got.shape else float("nan")
        raise IncompatibleCheckpointError(
            f"The logits of {type(model).__name__} are not `softcap(lm_head(last_hidden_state))` (max difference "
            f"{diff:.3g}); models that rescale their logits otherwise (e.g. `logit_scale`) are not supported."
        )


@dataclass
class _Positions:
    """Last hidden states of every real position of some texts, flattened: what the LM head reads."""

    hidden: torch.Tensor  # (N, d), float32, on the model's device
    tokens: torch.Tensor  # (N,) the input token at each position
    targets: torch.Tensor  # (N,) the next token, -1 at the last position of each text
    sequences: list[list[int]]

    @property
    def num_positions(self) -> int:
        return int(self.hidden.shape[0])


@torch.no_grad()
def _collect_positions(
    model: PreTrainedModel,
    sequences: list[list[int]],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> _Positions:
    from tqdm.auto import tqdm

    head = output_head(model)
    _check_head(model, head, sequences[0])
    decoder = _decoder(model)
    device = _model_device(model)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths share a batch
    hidden, tokens, targets = [], [], []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        batch = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        nxt = torch.full((len(batch), width), -1, dtype=torch.long)
        for row, seq in enumerate(batch):  # right padding: position ids of real tokens stay 0..T-1
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            nxt[row, : len(seq) - 1] = torch.tensor(seq[1:], dtype=torch.long)
        h = _last_hidden(decoder, ids.to(device), mask.to(device))  # (B, T, d)
        keep = mask.bool().to(device)
        hidden.append(h[keep].float())  # (n, d)
        tokens.append(ids[mask.bool()])
        targets.append(nxt[mask.bool()])
    return _Positions(torch.cat(hidden), torch.cat(tokens), torch.cat(targets), sequences)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# --------------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------------


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their ranks), as Spearman's rho needs."""
    values, order = torch.sort(x)
    _, counts = torch.unique_consecutive(values, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based mean rank of each tie group
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(mean_rank, counts)
    return ranks


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.double() - x.double().mean()
    y = y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return _pearson(_ranks(x.double()), _ranks(y.double()))


def _r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    target = target.double()
    ss_tot = float(((target - target.mean()) ** 2).sum())
    ss_res = float(((target - prediction.double()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _vocabulary_split(
    vocab_size: int, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise invalid_argument("test_fraction", test_fraction, "a number in (0, 1)", "Use e.g. 0.2.")
    perm = torch.randperm(vocab_size, generator=generator)
    n_test = min(vocab_size - 2, max(2, round(test_fraction * vocab_size)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


@dataclass
class _Design:
    """Centred least squares on a train split, scored on a test split; subsets of columns are refitted from the Gram
    matrix, so the R² curves cost no pass over the data."""

    gram: torch.Tensor  # (p, p) Xc^T Xc on the train rows
    cross: torch.Tensor  # (p,) Xc^T (y - mean y)
    x_mean: torch.Tensor  # (p,)
    y_mean: float
    x_test: torch.Tensor  # (n_test, p), centred with the train means
    y_test: torch.Tensor  # (n_test,)
    n_train: int

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> _Design:
        x_train = x[train]
        x_mean = x_train.mean(0)
        xc = x_train - x_mean
        y_mean = float(y[train].mean())
        return cls(
            gram=xc.T @ xc,
            cross=xc.T @ (y[train] - y_mean),
            x_mean=x_mean,
            y_mean=y_mean,
            x_test=x[test] - x_mean,
            y_test=y[test],
            n_train=int(train.numel()),
        )

    def rotated(self, basis: torch.Tensor) -> _Design:
        """The same regression in another basis of the columns (`basis` is `(p, p)`, orthonormal columns)."""
        return _Design(
            gram=basis.T @ self.gram @ basis,
            cross=basis.T @ self.cross,
            x_mean=basis.T @ self.x_mean,
            y_mean=self.y_mean,
            x_test=self.x_test @ basis,
            y_test=self.y_test,
            n_train=self.n_train,
        )

    def solve(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        gram, cross = self.gram, self.cross
        if columns is not None:
            gram, cross = gram[columns][:, columns], cross[columns]
        if gram.numel() == 0:
            return torch.zeros(0, dtype=gram.dtype)
        # gelsd: the minimum-norm solution when columns are collinear (a dimension constant over the vocabulary).
        return torch.linalg.lstsq(gram, cross.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)

    def test_prediction(self, beta: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x_test if columns is None else self.x_test[:, columns]
        return x @ beta + self.y_mean

    def test_r2(self, columns: torch.Tensor) -> float:
        return _r2(self.test_prediction(self.solve(columns), columns), self.y_test)


@dataclass
class LinearFit:
    """A multiple linear regression `target_w ≈ coefficients · E_w (+ bias_coefficient · b_w) + intercept`.

    Args:
        coefficients (`torch.Tensor` of shape `(hidden_size,)`): `A`, float64.
        intercept (`float`): `B`.
        bias_coefficient (`float`, *optional*): the coefficient of the LM-head bias `b_w`, a regressor of its own
            when the head has a bias.
        train_index (`torch.LongTensor`), test_index (`torch.LongTensor`): the vocabulary split (token ids).
        r2 (`float`), pearson (`float`), spearman (`float`): scores on the held-out tokens.
        r2_train (`float`): R² on the train tokens.
    """

    coefficients: torch.Tensor
    intercept: float
    bias_coefficient: float | None
    train_index: torch.Tensor
    test_index: torch.Tensor
    r2: float
    pearson: float
    spearman: float
    r2_train: float

    def predict(self, embeddings: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted target for rows of output embeddings `(n, hidden_size)` (and their bias `(n,)`)."""
        out = embeddings.double() @ self.coefficients + self.intercept
        if self.bias_coefficient is not None and bias is not None:
            out = out + self.bias_coefficient * bias.double()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "r2": self.r2,
            "pearson": self.pearson,
            "spearman": self.spearman,
            "r2_train": self.r2_train,
            "intercept": self.intercept,
            "bias_coefficient": self.bias_coefficient,
            "coefficient_norm": float(self.coefficients.norm()),
            "num_train_tokens": int(self.train_index.numel()),
            "num_test_tokens": int(self.test_index.numel()),
        }


def _features(embeddings: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    x = embeddings.detach().double().cpu()
    if bias is not None:
        x = torch.cat([x, bias.detach().double().cpu().unsqueeze(-1)], dim=-1)
    return x


def _fit_from_design(
    design: _Design, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, hidden: int
) -> LinearFit:
    beta = design.solve()
    intercept = design.y_mean - float(design.x_mean @ beta)
    prediction = design.test_prediction(beta)
    train_prediction = x[train] @ beta + intercept
    return LinearFit(
        coefficients=beta[:hidden].clone(),
        intercept=intercept,
        bias_coefficient=float(beta[hidden]) if beta.numel() > hidden else None,
        train_index=train,
        test_index=test,
        r2=_r2(prediction, design.y_test),
        pearson=_pearson(prediction, design.y_test),
        spearman=_spearman(prediction, design.y_test),
        r2_train=_r2(train_prediction, y[train]),
    )


def fit_log_linear(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    test_fraction: float = 0.2,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> LinearFit:
    """Fits `target_w ≈ A · E_w (+ c · b_w) + B` by least squares on a seeded split of the vocabulary.

    Args:
        embeddings (`torch.Tensor` of shape `(vocab_size, hidden_size)`): the output embeddings `E`.
        target (`torch.Tensor` of shape `(vocab_size,)`): e.g. `−log ᾱ_w`.
        bias (`torch.Tensor` of shape `(vocab_size,)`, *optional*): an LM-head bias, used as one more regressor.
        test_fraction (`float`, *optional*, defaults to 0.2): share of the tokens held out for scoring.
        seed (`int`, *optional*, defaults to 0): seeds the split (ignored when `generator` is given).
        generator (`torch.Generator`, *optional*): draws the split.

    Returns:
        [`LinearFit`]: coefficients, intercept and held-out R², Pearson and Spearman (float64, computed in closed
        form from the normal equations; collinear columns get the minimum-norm solution).
    """
    if embeddings.dim() != 2 or target.dim() != 1 or target.shape[0] != embeddings.shape[0]:
        raise invalid_argument(
            "target", tuple(target.shape), f"a 1-D tensor with one value per embedding row ({embeddings.shape[0]})"
        )
    g = _generator(seed, generator)
    train, test = _vocabulary_split(embeddings.shape[0], test_fraction, g)
    x = _features(embeddings, bias)
    y = target.detach().double().cpu()
    design = _Design.build(x, y, train, test)
    return _fit_from_design(design, x, y, train, test, embeddings.shape[1])


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


# --------------------------------------------------------------------------------------------------------------------
# Reversible edits
# --------------------------------------------------------------------------------------------------------------------


class OutputEmbeddingEdit:
    """A reversible edit of a model's output embeddings; also a context manager.

    The edit installs a new `nn.Parameter` (the edited copy) on the output-embedding module; the original parameter
    object is kept aside untouched and [`restore`] puts it back, so the weights are bit-identical afterwards. When
    the output embeddings were tied to the input embeddings, they are untied while the edit is active (the input
    embeddings never change) and tied again by `restore`. Edits stack: restore them in reverse order (a `with`
    block does).

    Attributes:
        kind (`str`): `"prune"` or `"steer"`.
        was_tied (`bool`): whether the output embeddings were tied when the edit was made.
        details (`dict`): what was edited (removed dimensions or directions, steered tokens and ratios).
    """

    def __init__(self, model: PreTrainedModel, weight: torch.Tensor, *, kind: str, details: dict[str, Any]):
        head = output_head(model)
        self.kind = kind
        self.details = details
        self.was_tied = head.tied
        self._module = head.module
        self._original = head.module.weight
        self._installed = nn.Parameter(
            weight.to(dtype=self._original.dtype, device=self._original.device),
            requires_grad=self._original.requires_grad,
        )
        self._module.weight = self._installed
        self.active = True
        logger.debug("installed %s edit of the output embeddings (untied: %s)", kind, self.was_tied)

    @property
    def weight(self) -> torch.Tensor:
        """The edited output embeddings `(vocab_size, hidden_size)`."""
        return self._installed

    def restore(self) -> None:
        """Puts the original output-embedding parameter back (idempotent)."""
        if not self.active:
            return
        if self._module.weight is not self._installed:
            raise HfDecodingError(
                f"Cannot restore this {self.kind} edit: another edit of the output embeddings was made after it and "
                "is still active. Restore edits in reverse order (nest `with` blocks)."
            )
        self._module.weight = self._original
        self.active = False

    def __enter__(self) -> OutputEmbeddingEdit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"OutputEmbeddingEdit(kind={self.kind!r}, {state}, was_tied={self.was_tied})"


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
    if report is None:
        raise invalid_argument(
            "report",
            None,
            f"a ProbabilityEncodingReport for ranking={ranking!r}",
            "Run `probability_encoding(model, tokenizer, texts)` first, or use ranking='random'.",
        )
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
    if report is None:
        raise invalid_argument(
            "report",
            None,
            f"a ProbabilityEncodingReport for direction={direction!r}",
            "Run `probability_encoding(model, tokenizer, texts)` first, or pass a direction tensor.",
        )
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

    from ..processors.token_probability import TokenProbabilityLogitsProcessor

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


# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, the `plot` extra)
# --------------------------------------------------------------------------------------------------------------------


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is in the test extra
        raise ImportError('Plots need matplotlib: pip install "hf-decoding[plot]"') from err
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_probability_pca(
    report: ProbabilityEncodingReport,
    path: str | os.PathLike[str],
    *,
    max_points: int = 20000,
    seed: int = 0,
    title: str | None = None,
) -> str:
    """Output embeddings on their first two principal components, coloured by the rank percentile of ᾱ_w (the
    paper's Fig. 1). Returns the path written."""
    vocab = report.vocab_size
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(vocab, generator=g)[: min(max_points, vocab)]
    percentile = _ranks(report.log_probability)[keep] / vocab * 100
    xy = report.embedding_projection[keep]
    fig, (ax,) = _figure()
    points = ax.scatter(xy[:, 0], xy[:, 1], c=percentile, s=2, cmap="viridis", rasterized=True)
    fig.colorbar(points, ax=ax, label="rank percentile of mean probability ᾱ")
    ax.set_xlabel(f"PC1 ({float(report.pca_variance[0] / report.pca_variance.sum()):.1%} of variance)")
    ax.set_ylabel(f"PC2 ({float(report.pca_variance[1] / report.pca_variance.sum()):.1%})")
    ax.set_title(title or "Output embeddings, coloured by probability")
    return _save(fig, path)


def plot_dimension_curve(
    report: ProbabilityEncodingReport, path: str | os.PathLike[str], *, title: str | None = None
) -> str:
    """Held-out R² of the MLR vs the number of dimensions kept. Returns the path written."""
    curve = report.dimension_curve
    fig, (ax,) = _figure()
    k = curve.num_dimensions
    ax.plot(k, curve.top_coefficient, marker="o", label="top dims, |standardised coef|")
    ax.plot(k, curve.top_variance, marker="s", label="top dims, E[h²]·Var(E)")
    ax.plot(k, curve.top_components, marker="^", label="top principal components")
    low = [m - s for m, s in zip(curve.random_mean, curve.random_std, strict=True)]
    high = [m + s for m, s in zip(curve.random_mean, curve.random_std, strict=True)]
    ax.plot(k, curve.random_mean, marker="x", color="grey", label="random dims")
    ax.fill_between(k, low, high, color="grey", alpha=0.2)
    ax.axhline(report.baseline.get("r2_affine", float("nan")), color="black", ls=":", label="mean-logit baseline")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of dimensions")
    ax.set_ylabel("held-out R² of −log ᾱ")
    ax.set_ylim(bottom=min(0.0, *[v for v in curve.random_mean if math.isfinite(v)]))
    ax.legend(fontsize=8)
    ax.set_title(title or "Sparsity of the probability encoding")
    return _save(fig, path)


def plot_pruning_curves(
    curves: Mapping[str, PruningCurve],
    path: str | os.PathLike[str],
    *,
    split: str = "held_out",
    title: str | None = None,
) -> str:
    """Mean JS, top-1 agreement and greedy agreement vs the fraction of dimensions removed, one line per curve."""
    fig, axes = _figure(ncols=3, width=4.2)
    for label, curve in curves.items():
        xs = [p.fraction for p in curve.points]
        name = split if split in curve.points[0].metrics else next(iter(curve.points[0].metrics))
        removed = [p for p in curve.points if p.num_removed > 0]  # JS is 0 with nothing removed: off a log axis
        axes[0].plot(
            [p.fraction for p in removed], [max(p.metrics[name]["js"], 1e-12) for p in removed], marker="o", label=label
        )
        axes[1].plot(xs, [p.metrics[name]["top1"] for p in curve.points], marker="o", label=label)
        if curve.points[0].greedy_agreement is not None:
            axes[2].plot(xs, [p.greedy_agreement for p in curve.points], marker="o", label=label)
    axes[0].axhline(0.01, color="black", ls=":")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"mean JS per position ({split}, nats)")
    axes[1].axhline(0.95, color="black", ls=":")
    axes[1].set_ylabel("top-1 agreement")
    axes[2].set_ylabel("greedy continuation agreement")
    for ax in axes:
        ax.set_xlabel("fraction of dimensions removed")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Pruning output-embedding dimensions")
    return _save(fig, path)


def plot_steering_curve(curve: SteeringCurve, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Achieved vs target ratio (geometric mean over tokens, with the min–max band) per method."""
    fig, (ax,) = _figure()
    for method, achieved in curve.achieved.items():
        geo = achieved.log().mean(-1).exp()
        ax.plot(curve.ratios, geo, marker="o", label=method)
        ax.fill_between(curve.ratios, achieved.min(-1).values, achieved.max(-1).values, alpha=0.15)
    ax.plot(curve.ratios, curve.ratios, color="black", ls=":", label="target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target ratio r")
    ax.set_ylabel("achieved ᾱ'/ᾱ")
    ax.legend(fontsize=8)
    ax.set_title(title or "Steering token probability")
    return _save(fig, path)
