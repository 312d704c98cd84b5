"""The output head of a causal LM ([`OutputHead`], [`output_head`]) and the pass that collects the last hidden
states it reads: text encoding, the logits check and the flattened positions shared by every measurement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...errors import IncompatibleCheckpointError, invalid_argument

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Texts = Sequence[str] | Sequence[Sequence[int]] | Sequence[torch.Tensor]


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
