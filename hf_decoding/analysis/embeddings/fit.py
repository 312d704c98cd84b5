"""The multiple linear regression of a per-token target on the output embeddings ([`fit_log_linear`],
[`LinearFit`]): the vocabulary split, the Gram-matrix design that refits column subsets, and the rank and
correlation statistics it is scored with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import invalid_argument

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
        scalars = ("r2", "pearson", "spearman", "r2_train", "intercept", "bias_coefficient")
        return {
            **{name: getattr(self, name) for name in scalars},
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
