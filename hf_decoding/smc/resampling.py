"""Resampling schemes: small pure functions from log-weights to ancestor indices.

Each scheme has the signature `scheme(log_weights, generator=None, num_samples=None) -> ancestors` with
`log_weights` of shape `(B, N)` (unnormalised, `-inf` allowed; an all `-inf` group is treated as uniform) and
`ancestors` a `torch.LongTensor` of shape `(B, M)` (`M = num_samples or N`) of indices into `[0, N)`. All draw from
the explicit `torch.Generator` (`None`: torch's global generator). All four are unbiased: the expected number of
copies of particle `i` is `M * W_i`.

| name | variance | note |
|---|---|---|
| `systematic` (default) | lowest in practice | one uniform per group; sorted output |
| `stratified` | low | one uniform per stratum; sorted output |
| `multinomial` | highest | the reference code's choice (`np.random.choice`) |
| `residual` | low | deterministic `floor(M W_i)` copies, multinomial on the rest |

```python
>>> from hf_decoding.smc import resample
>>> ancestors = resample("systematic", log_weights, generator=torch.Generator().manual_seed(0))
```
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InvalidDecodingArgument
from .weights import normalize_log_weights

__all__ = [
    "RESAMPLING_SCHEMES",
    "get_resampler",
    "multinomial",
    "offspring_counts",
    "resample",
    "residual",
    "stable_ancestors",
    "stratified",
    "systematic",
]

Resampler = Callable[..., torch.Tensor]


def _weights(log_weights: torch.Tensor) -> torch.Tensor:
    if log_weights.dim() != 2:
        raise InvalidDecodingArgument(
            f"`log_weights` must have shape (groups, particles), got {tuple(log_weights.shape)}."
        )
    return normalize_log_weights(log_weights.to(torch.float64)).exp()  # (B, N), rows sum to 1


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def _invert_cdf(weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Indices `i` with `cdf[i-1] <= point < cdf[i]`, never landing on a zero-weight particle."""
    cdf = weights.cumsum(-1)  # (B, N)
    n = weights.shape[-1]
    index = torch.searchsorted(cdf, points.contiguous(), right=True)  # (B, M)
    # Rounding can leave cdf[-1] slightly below 1: clamp to the last particle that has positive weight.
    last_positive = n - 1 - torch.flip(weights > 0, dims=[-1]).to(torch.long).argmax(-1, keepdim=True)  # (B, 1)
    return torch.minimum(index, last_positive)


def systematic(
    log_weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
) -> torch.LongTensor:
    """Systematic resampling: points `(u + k) / M`, `k = 0..M-1`, with one `u ~ U[0, 1)` per group."""
    weights = _weights(log_weights)
    batch, n = weights.shape
    m = num_samples or n
    u = _rand((batch, 1), generator, weights.device)
    points = (u + torch.arange(m, device=weights.device, dtype=torch.float64)) / m  # (B, M)
    return _invert_cdf(weights, points)


def stratified(
    log_weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
) -> torch.LongTensor:
    """Stratified resampling: points `(u_k + k) / M` with an independent `u_k ~ U[0, 1)` per stratum."""
    weights = _weights(log_weights)
    batch, n = weights.shape
    m = num_samples or n
    u = _rand((batch, m), generator, weights.device)
    points = (u + torch.arange(m, device=weights.device, dtype=torch.float64)) / m
    return _invert_cdf(weights, points)


def multinomial(
    log_weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
) -> torch.LongTensor:
    """Multinomial resampling: `M` independent draws from the normalised weights (the reference code's scheme)."""
    weights = _weights(log_weights)
    m = num_samples or weights.shape[-1]
    return torch.multinomial(weights, m, replacement=True, generator=generator)


def residual(
    log_weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
) -> torch.LongTensor:
    """Residual resampling: `floor(M W_i)` copies of each particle, the remaining `R` draws multinomial on
    `M W_i - floor(M W_i)`."""
    weights = _weights(log_weights)
    _batch, n = weights.shape
    m = num_samples or n
    expected = weights * m  # (B, N)
    counts = expected.floor()
    remaining = (m - counts.sum(-1)).round().to(torch.long)  # (B,)
    residual_weights = (expected - counts).clamp(min=0)
    empty = residual_weights.sum(-1, keepdim=True) <= 0
    residual_weights = torch.where(empty, torch.ones_like(residual_weights), residual_weights)
    draws = torch.multinomial(residual_weights, m, replacement=True, generator=generator)  # (B, M)
    used = torch.arange(m, device=weights.device)[None, :] < remaining[:, None]  # (B, M)
    counts = counts.to(torch.long).scatter_add(1, draws, used.to(torch.long))
    return _counts_to_ancestors(counts)


def _counts_to_ancestors(counts: torch.Tensor) -> torch.LongTensor:
    """Offspring counts `(B, N)` summing to `M` per group → sorted ancestors `(B, M)`."""
    batch, n = counts.shape
    m = int(counts[0].sum())
    index = torch.arange(n, device=counts.device).expand(batch, n).reshape(-1)
    return torch.repeat_interleave(index, counts.reshape(-1)).reshape(batch, m)


def offspring_counts(ancestors: torch.Tensor, num_particles: int) -> torch.LongTensor:
    """How many copies of each particle `ancestors` (B, M) holds, shape `(B, num_particles)`."""
    counts = torch.zeros(ancestors.shape[0], num_particles, dtype=torch.long, device=ancestors.device)
    return counts.scatter_add(1, ancestors, torch.ones_like(ancestors))


def stable_ancestors(ancestors: torch.Tensor) -> torch.LongTensor:
    """Permutes each group's ancestors so that every surviving particle keeps its own slot.

    Particles are exchangeable within a group, so any permutation of an ancestor vector is an equally valid
    resampling outcome. Keeping survivors in place means only the slots of particles that died receive a copy,
    which keeps the ancestry readable and moves fewer cache rows.

    Args:
        ancestors (`torch.LongTensor` of shape `(B, N)`): ancestor indices in `[0, N)`.
    """
    batch, n = ancestors.shape
    counts = offspring_counts(ancestors, n)  # (B, N)
    survives = counts > 0
    out = torch.where(survives, torch.arange(n, device=ancestors.device).expand(batch, n), -1)
    # The extra copies (count - 1 per survivor) fill the slots of the particles that died, in order.
    extra = (counts - 1).clamp(min=0)
    for b in range(batch):
        free = (~survives[b]).nonzero().flatten()
        if free.numel() == 0:
            continue
        donors = torch.repeat_interleave(torch.arange(n, device=ancestors.device), extra[b])
        out[b, free] = donors
    return out


RESAMPLING_SCHEMES: dict[str, Resampler] = {
    "multinomial": multinomial,
    "residual": residual,
    "stratified": stratified,
    "systematic": systematic,
}


def get_resampler(name: str) -> Resampler:
    """The resampling function called `name`; [`InvalidDecodingArgument`] listing the valid names otherwise."""
    try:
        return RESAMPLING_SCHEMES[name]
    except (KeyError, TypeError):
        raise InvalidDecodingArgument(
            f"`resampling` must be one of {sorted(RESAMPLING_SCHEMES)}, got {name!r}."
        ) from None


def resample(
    name: str, log_weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
) -> torch.LongTensor:
    """Draws ancestors `(B, M)` from `log_weights` `(B, N)` with the scheme called `name`."""
    return get_resampler(name)(log_weights, generator=generator, num_samples=num_samples)
