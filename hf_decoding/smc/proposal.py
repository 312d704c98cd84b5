"""Per-row proposals: how a particle's tokens are sampled when it is not one static processor chain.

A [`RowProposal`] recomputes per-row sampling parameters after every forward pass of the policy (the prefill and
each token) from what that pass produced, keeps them in the batch's per-row state (so they follow the particles
through fan-out, resampling and dropped rows), sets them on its processor chain before each token, and records the
values applied to each generated token so that the returned particles carry them (`out.<output_field>`).

Proposals are built from a decoder call by the factories registered with [`register_proposal`]: a layer above
this one (AutoDeco's heads, `hf_decoding.decoders.autodeco`) registers its factory, and [`build_proposal`] asks
each in turn. Without one, particles are sampled from the static chain `generate` built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from transformers import LogitsProcessorList

from ..generation.arguments import DecoderCall

__all__ = ["RowProposal", "build_proposal", "register_proposal"]


class RowProposal(Protocol):
    """What the step runner needs from a per-row proposal."""

    #: The processor chain to sample with (the call's chain with per-row warpers in place).
    processors: LogitsProcessorList
    #: The `DecodingOutput` field that receives the recorded values of the returned particles.
    output_field: str

    def after_forward(self, row_state: dict[str, torch.Tensor], logits: torch.Tensor, real: torch.Tensor | None):
        """Updates `row_state` from the pass that produced `logits` `(R, V)`; only rows where `real` `(R,)` (all
        rows when `None`: the prefill) get new values."""

    def before_token(self, row_state: dict[str, torch.Tensor]) -> None:
        """Sets the chain's per-row parameters from `row_state` before the next token is drawn."""

    def token_values(self, row_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The `(R,)` values applied to the token just drawn, by name (recorded per generated token)."""

    def make_trace(self, values: dict[str, torch.Tensor]) -> Any:
        """The output field's value from the recorded `(B, L)` values of the returned particles (NaN after a
        particle finished)."""


ProposalFactory = Callable[[DecoderCall, LogitsProcessorList], "RowProposal | None"]

_FACTORIES: list[ProposalFactory] = []


def register_proposal(factory: ProposalFactory) -> ProposalFactory:
    """Registers `factory(call, processors) -> RowProposal | None` (idempotent)."""
    if factory not in _FACTORIES:
        _FACTORIES.append(factory)
    return factory


def build_proposal(call: DecoderCall, processors: LogitsProcessorList) -> RowProposal | None:
    """The first proposal a registered factory builds for `call`, else `None` (the static chain)."""
    for factory in _FACTORIES:
        proposal = factory(call, processors)
        if proposal is not None:
            return proposal
    return None
