"""Enumerable toy joints over `V ** L` sequences and their perfect denoiser.

The joints have known conditionals, so a masked-diffusion sampler run on [`JointTableDenoiser`] has zero
training error (`eps_train = 0` in Li & Cai's Theorem 1) and every quantity of the theory can be computed
exactly (see `hf_decoding.analysis.convergence`).

- [`markov_chain_joint`]: a stationary "sticky" Markov chain `P = a * I + (1 - a) / V`; `a = dependence`
  (0: i.i.d. uniform tokens, no mutual information; near 1: long runs).
- [`hidden_markov_joint`]: a sticky hidden chain on `H` states with noisy emissions: the observed tokens are
  dependent at every range, not only between neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..errors import invalid_argument

__all__ = ["EnumeratedJoint", "JointTableDenoiser", "hidden_markov_joint", "markov_chain_joint"]


@dataclass
class EnumeratedJoint:
    """A distribution over `V ** L` token sequences, stored as a full probability table.

    Args:
        probs (`np.ndarray` of shape `(V,) * L`): `probs[x_1, ..., x_L] = p(x)`, float64, sums to 1.
        name (`str`): a label for tables and plots.
        params (`dict`): the parameters it was built from.
    """

    probs: np.ndarray
    name: str = "joint"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if self.probs.ndim < 1 or len(set(self.probs.shape)) != 1:
            raise invalid_argument("probs", self.probs.shape, "an array of shape (V,) * L")
        if not np.isclose(self.probs.sum(), 1.0) or (self.probs < 0).any():
            raise invalid_argument("probs", float(self.probs.sum()), "a non-negative table summing to 1")

    @property
    def length(self) -> int:
        """Sequence length `L`."""
        return self.probs.ndim

    @property
    def vocab_size(self) -> int:
        """Alphabet size `V`."""
        return self.probs.shape[0]

    def sequences(self) -> np.ndarray:
        """All `V ** L` sequences in table order, shape `(V ** L, L)`."""
        grids = np.indices(self.probs.shape).reshape(self.length, -1)
        return grids.T.copy()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.LongTensor:
        """Exact samples, shape `(num_samples, L)`."""
        flat = torch.as_tensor(self.probs.reshape(-1))
        index = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
        return torch.as_tensor(self.sequences())[index]


def _check_unit(name: str, value: float, closed_right: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_argument(name, value, "a number")
    if value < 0 or value > 1 or (value == 1 and not closed_right):
        raise invalid_argument(name, value, "a number in [0, 1]" if closed_right else "a number in [0, 1)")


def _check_sizes(length: int, vocab_size: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise invalid_argument("length", length, "a positive integer")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise invalid_argument("vocab_size", vocab_size, "an integer >= 2")
    if vocab_size**length > 2**24:
        raise invalid_argument(
            "length", length, f"small enough that {vocab_size}**length <= 2**24", "Use L <= 12 with V = 3."
        )


def markov_chain_joint(length: int = 8, vocab_size: int = 3, dependence: float = 0.6) -> EnumeratedJoint:
    r"""A stationary sticky Markov chain: `x_1 ~ Uniform(V)`, `P(x_{t+1} = x_t) = a + (1 - a) / V`.

    Args:
        length (`int`, *optional*, defaults to 8): `L`.
        vocab_size (`int`, *optional*, defaults to 3): `V`.
        dependence (`float`, *optional*, defaults to 0.6): `a` in `[0, 1)`; the mutual information grows with it.
    """
    _check_sizes(length, vocab_size)
    _check_unit("dependence", dependence)
    transition = dependence * np.eye(vocab_size) + (1 - dependence) / vocab_size  # (V, V)
    probs = np.full((vocab_size,), 1.0 / vocab_size)
    for _ in range(length - 1):
        probs = probs[..., None] * transition[(None,) * (probs.ndim - 1)]  # (V,)*t x V
    return EnumeratedJoint(probs, name=f"markov(a={dependence:g})", params={"kind": "markov", "dependence": dependence})


def hidden_markov_joint(
    length: int = 8, vocab_size: int = 3, hidden_states: int = 2, dependence: float = 0.8, noise: float = 0.3
) -> EnumeratedJoint:
    r"""A hidden Markov model: a sticky hidden chain on `H` states, each emitting a preferred token.

    Hidden transitions `a * I + (1 - a) / H`; state `h` emits token `h mod V` with probability `1 - noise`
    and a uniform token otherwise.

    Args:
        length (`int`, *optional*, defaults to 8): `L`.
        vocab_size (`int`, *optional*, defaults to 3): `V`.
        hidden_states (`int`, *optional*, defaults to 2): `H`.
        dependence (`float`, *optional*, defaults to 0.8): `a` in `[0, 1)`.
        noise (`float`, *optional*, defaults to 0.3): emission noise in `[0, 1]`.
    """
    _check_sizes(length, vocab_size)
    _check_unit("dependence", dependence)
    _check_unit("noise", noise, closed_right=True)
    if isinstance(hidden_states, bool) or not isinstance(hidden_states, int) or hidden_states < 1:
        raise invalid_argument("hidden_states", hidden_states, "a positive integer")
    transition = dependence * np.eye(hidden_states) + (1 - dependence) / hidden_states  # (H, H)
    emission = np.full((hidden_states, vocab_size), noise / vocab_size)  # (H, V)
    emission[np.arange(hidden_states), np.arange(hidden_states) % vocab_size] += 1 - noise
    # forward algorithm over every observed prefix at once: alpha has shape (V,)*t x H
    alpha = np.full((hidden_states,), 1.0 / hidden_states)[None, :] * emission.T  # (V, H)
    for _ in range(length - 1):
        predicted = alpha @ transition  # (V,)*t x H
        alpha = predicted[..., None, :] * emission.T[(None,) * (alpha.ndim - 1)]  # (V,)*t x V x H
    return EnumeratedJoint(
        alpha.sum(-1),
        name=f"hmm(a={dependence:g},noise={noise:g})",
        params={"kind": "hmm", "dependence": dependence, "noise": noise, "hidden_states": hidden_states},
    )


class JointTableDenoiser(torch.nn.Module):
    r"""The perfect denoiser of an [`EnumeratedJoint`]: `logits[b, i] = log p(x_i | revealed tokens of row b)`.

    Token ids `0 .. V - 1` are the joint's values; `V` is the mask token. It follows the masked-LM interface
    (`config.mask_token_id`, `forward(input_ids) -> .logits`), so the masked-diffusion decoder runs on it as on
    any transformer, with `eps_train = 0`.

    Args:
        joint ([`EnumeratedJoint`]): the target distribution.
    """

    def __init__(self, joint: EnumeratedJoint):
        super().__init__()
        self.joint = joint
        vocab = joint.vocab_size
        self.config = SimpleNamespace(mask_token_id=vocab, vocab_size=vocab + 1, is_decoder=False)
        sequences = torch.as_tensor(joint.sequences())  # (N, L)
        self.register_buffer("sequences", sequences, persistent=False)
        self.register_buffer("probs", torch.as_tensor(joint.probs.reshape(-1)), persistent=False)  # (N,)
        one_hot = torch.nn.functional.one_hot(sequences, vocab).to(torch.float64)  # (N, L, V)
        self.register_buffer("one_hot", one_hot, persistent=False)

    def forward(self, input_ids: torch.LongTensor, **_: Any) -> SimpleNamespace:
        """`input_ids` of shape `(B, L)`; returns `.logits` of shape `(B, L, V + 1)` (the mask token at `-inf`)."""
        if input_ids.shape[-1] != self.joint.length:
            raise invalid_argument("input_ids", tuple(input_ids.shape), f"shape (B, {self.joint.length})")
        mask_id = self.config.mask_token_id
        revealed = input_ids != mask_id  # (B, L)
        chunks = []
        for start in range(0, input_ids.shape[0], 256):
            ids, known = input_ids[start : start + 256], revealed[start : start + 256]
            agrees = (self.sequences[None] == ids[:, None]) | ~known[:, None]  # (b, N, L)
            weights = agrees.all(-1).to(torch.float64) * self.probs[None]  # (b, N)
            marginals = torch.einsum("bn,nlv->blv", weights, self.one_hot)  # (b, L, V)
            chunks.append(marginals / weights.sum(-1)[:, None, None])
        marginals = torch.cat(chunks)  # (B, L, V)
        logits = torch.log(marginals).to(torch.float32)
        mask_column = torch.full((*logits.shape[:2], 1), float("-inf"))
        return SimpleNamespace(logits=torch.cat([logits, mask_column], dim=-1))
