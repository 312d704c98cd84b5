"""[`OutputEmbeddingEdit`]: the reversible, exact edit of a model's output embeddings that pruning and steering
install (a new `nn.Parameter`, the original put back by `restore`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import HfDecodingError
from .head import output_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


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
