"""The two AutoDeco heads (temperature and top-p) and the hidden-state capture they read from.

Architecture as in the paper and the official code (so official checkpoints load unchanged):

- temperature head: `Linear(H, 256) -> ReLU -> Linear(256, 1) -> Sigmoid`, times `T_max` (2), so `T̂ ∈ (0, T_max)`;
- top-p head: `Linear(H + 1 + 4, 256) -> ReLU -> Linear(256, 1) -> Sigmoid`, reading the hidden state, the
  *detached* predicted temperature and four statistics of `softmax(logits / T̂)`: max prob, entropy, variance over
  the vocabulary and top-5 mass.

Both read the post-final-norm hidden state, the input of the LM head. During decoding only the last position is
needed; [`capture_lm_head_input`] records exactly that tensor with a forward pre-hook on the output embeddings, so
no `output_hidden_states=True` (every layer's states) is ever requested.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import IncompatibleCheckpointError, invalid_argument
from .config import AutoDecoConfig

__all__ = [
    "AutoDecoHeads",
    "HeadPredictions",
    "LMHeadInputCapture",
    "TemperatureHead",
    "TopPHead",
    "capture_lm_head_input",
    "probability_features",
]

_NUM_STATS = 4


def probability_features(scaled_logits: torch.Tensor) -> torch.Tensor:
    """The four statistics the top-p head reads: max prob, entropy, variance over the vocabulary, top-5 mass.

    Args:
        scaled_logits (`torch.Tensor` of shape `(..., V)`): logits divided by the predicted temperature.

    Returns:
        `torch.Tensor` of shape `(..., 4)` (float32): the official definitions (unbiased variance over the `V`
        probabilities), computed with three `(..., V)` temporaries instead of seven (the entropy uses `-p log p`
        instead of the official `-p log(p + 1e-8)`, a difference below 1e-6 nats).
    """
    probs = torch.softmax(scaled_logits.float(), dim=-1)  # (..., V)
    vocab = probs.shape[-1]
    top5 = torch.topk(probs, min(5, vocab), dim=-1).values  # (..., 5), descending
    entropy = torch.special.entr(probs).sum(dim=-1)  # (...)
    total = probs.sum(dim=-1)
    square_sum = torch.linalg.vector_norm(probs, dim=-1).square()
    variance = (square_sum - total.square() / vocab) / max(vocab - 1, 1)
    return torch.stack([top5[..., 0], entropy, variance, top5.sum(dim=-1)], dim=-1)  # (..., 4)


def _linear(input_size: int, output_size: int, generator: torch.Generator) -> nn.Linear:
    """`nn.Linear` with PyTorch's default init drawn from `generator`, never from the global RNG."""
    layer = torch.nn.utils.skip_init(nn.Linear, input_size, output_size)
    weight = torch.empty(layer.weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(input_size)
    bias = torch.empty(layer.bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _mlp(input_size: int, width: int, seed: int = 0) -> nn.Sequential:
    # Indices 0 and 2 hold the weights: `mlp.0.*`, `mlp.2.*` is the official tensor layout.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return nn.Sequential(_linear(input_size, width, generator), nn.ReLU(), _linear(width, 1, generator), nn.Sigmoid())


class TemperatureHead(nn.Module):
    r"""`T̂ = sigmoid(MLP(h)) * T_max`.

    Args:
        hidden_size (`int`): `H`, the base model's hidden size.
        width (`int`, *optional*, defaults to 256): hidden layer width.
        max_temperature (`float`, *optional*, defaults to 2.0): `T_max`.
    """

    def __init__(self, hidden_size: int, width: int = 256, max_temperature: float = 2.0):
        super().__init__()
        self.mlp = _mlp(hidden_size, width)
        self.max_temperature = max_temperature

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(..., H)` -> temperatures `(...)`."""
        return self.mlp(hidden_states).squeeze(-1) * self.max_temperature


class TopPHead(nn.Module):
    r"""`P̂ = sigmoid(MLP([h, T̂, stats(softmax(logits / T̂))]))`.

    Args:
        hidden_size (`int`): `H`.
        width (`int`, *optional*, defaults to 256): hidden layer width.
        use_enhanced_features (`bool`, *optional*, defaults to `True`): append the four probability statistics.
    """

    def __init__(self, hidden_size: int, width: int = 256, use_enhanced_features: bool = True):
        super().__init__()
        self.use_enhanced_features = use_enhanced_features
        self.mlp = _mlp(hidden_size + 1 + (_NUM_STATS if use_enhanced_features else 0), width)

    def forward(
        self, hidden_states: torch.Tensor, temperature: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`hidden_states` `(..., H)`, `temperature` `(...)`, `logits` `(..., V)` -> top-p values `(...)`."""
        t = temperature.unsqueeze(-1).to(hidden_states.dtype)  # (..., 1)
        features = [hidden_states, t]
        if self.use_enhanced_features:
            if logits is None:
                stats = hidden_states.new_zeros((*hidden_states.shape[:-1], _NUM_STATS))
            else:
                stats = probability_features(logits.float() / (t.float() + 1e-8)).to(hidden_states.dtype)
            features.append(stats)
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)


@dataclass
class HeadPredictions:
    """Per-position predictions of the heads.

    Args:
        temperature (`torch.Tensor` of shape `(...)`): `T̂` (1 where the temperature head is disabled).
        top_p (`torch.Tensor` of shape `(...)`): `P̂` (1 where the top-p head is disabled).
    """

    temperature: torch.Tensor
    top_p: torch.Tensor


class AutoDecoHeads(nn.Module):
    r"""Both AutoDeco heads, with the official parameter names (`temp_head.mlp.{0,2}.*`, `top_p_head.mlp.{0,2}.*`).

    Args:
        config ([`AutoDecoConfig`]): `hidden_size` must be set.
    """

    def __init__(self, config: AutoDecoConfig):
        super().__init__()
        if config.hidden_size is None:
            raise invalid_argument("config.hidden_size", None, "the base model's hidden size")
        self.config = config
        self.temp_head = TemperatureHead(config.hidden_size, config.head_hidden_size, config.max_temperature)
        self.top_p_head = TopPHead(config.hidden_size, config.head_hidden_size, config.use_enhanced_features)
        self.reset_parameters(seed=0)

    # ------------------------------------------------------------------------------------------------------------
    # Initialisation
    # ------------------------------------------------------------------------------------------------------------

    def reset_parameters(self, seed: int | None = 0) -> None:
        """Re-draws every weight with PyTorch's default `nn.Linear` init (as the official code), from a
        `torch.Generator` seeded with `seed` (never the global RNG), so that fresh heads are reproducible."""
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fresh = _linear(module.in_features, module.out_features, generator)
                with torch.no_grad():
                    module.weight.copy_(fresh.weight)
                    module.bias.copy_(fresh.bias)

    def init_predictions(self, temperature: float | None = None, top_p: float | None = None) -> None:
        """Makes the heads predict exactly `temperature` and/or `top_p` for every input at step 0.

        Zeroes the last layer's weight and sets its bias to the sigmoid's inverse of the target, so training starts
        from the chosen static setting (e.g. the model's recommended one) instead of an arbitrary one; the first
        layer keeps its random init, so gradients flow from the first update on.
        """
        if temperature is not None:
            if not 0 < temperature < self.config.max_temperature:
                raise invalid_argument(
                    "temperature", temperature, f"in (0, max_temperature={self.config.max_temperature})"
                )
            self._set_output(self.temp_head.mlp, temperature / self.config.max_temperature)
        if top_p is not None:
            if not 0 < top_p < 1:
                raise invalid_argument("top_p", top_p, "in (0, 1)", "The sigmoid output cannot reach 1; use e.g. 0.99.")
            self._set_output(self.top_p_head.mlp, top_p)

    @staticmethod
    def _set_output(mlp: nn.Sequential, value: float) -> None:
        with torch.no_grad():
            mlp[2].weight.zero_()
            mlp[2].bias.fill_(math.log(value / (1 - value)))

    # ------------------------------------------------------------------------------------------------------------
    # Prediction
    # ------------------------------------------------------------------------------------------------------------

    def forward(
        self, hidden_states: torch.Tensor, logits: torch.Tensor | None = None, detach_temperature: bool = True
    ) -> HeadPredictions:
        r"""Raw head outputs for every position.

        Args:
            hidden_states (`torch.Tensor` of shape `(..., H)`): post-final-norm hidden states.
            logits (`torch.Tensor` of shape `(..., V)`, *optional*): the model's logits at the same positions (the
                top-p head's probability statistics; zeros when missing, as the official code).
            detach_temperature (`bool`, *optional*, defaults to `True`): detach `T̂` before it enters the top-p head
                (the official HF code does; its Megatron code does not).

        Returns:
            [`HeadPredictions`] with `temperature` clamped below at `min_temperature`; a disabled head gives ones.
        """
        param = self.temp_head.mlp[0].weight
        h = hidden_states.to(device=param.device, dtype=param.dtype)
        if logits is not None:
            logits = logits.to(param.device)
        if self.config.enable_temperature_head:
            temperature = self.temp_head(h).clamp(min=self.config.min_temperature)  # (...)
        else:
            temperature = h.new_ones(h.shape[:-1])
        if self.config.enable_top_p_head:
            t_in = temperature.detach() if detach_temperature else temperature
            top_p = self.top_p_head(h, t_in, logits)  # (...)
        else:
            top_p = h.new_ones(h.shape[:-1])
        return HeadPredictions(temperature=temperature, top_p=top_p)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoint helpers
    # ------------------------------------------------------------------------------------------------------------

    def load_head_state(self, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        """Loads head tensors (official names), checking names and shapes.

        Raises:
            [`IncompatibleCheckpointError`]: a tensor has the wrong shape, or an enabled head has no tensors.
        """
        own = self.state_dict()
        heads_state = {k: v for k, v in state.items() if k.startswith(("temp_head.", "top_p_head."))}
        for key, tensor in heads_state.items():
            if key not in own:
                raise IncompatibleCheckpointError(
                    f"{source} holds the head tensor `{key}`, which these heads do not have. Fix: check "
                    "`use_enhanced_features` in its config.json."
                )
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise IncompatibleCheckpointError(
                    f"{source}: `{key}` has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)} for a base "
                    f"of hidden size {self.config.hidden_size}. Fix: load the heads onto the base model they were "
                    "trained on."
                )
        flags = (
            ("temp_head.", "enable_temperature_head", self.config.enable_temperature_head),
            ("top_p_head.", "enable_top_p_head", self.config.enable_top_p_head),
        )
        for prefix, flag, enabled in flags:
            wanted = [k for k in own if k.startswith(prefix)]
            missing = sorted(k for k in wanted if k not in heads_state)
            if enabled and missing:
                raise IncompatibleCheckpointError(
                    f"{source} has no tensors {missing} although `{flag}` is true. Fix: point to a complete AutoDeco "
                    f"checkpoint (model.safetensors or autodeco_heads.safetensors), or set `{flag}=False`."
                )
        self.load_state_dict(heads_state, strict=False)

    def size_bytes(self) -> int:
        """Bytes of the head parameters (what a heads-only checkpoint stores)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())


class LMHeadInputCapture:
    """Records the input of a model's output embeddings (the post-final-norm hidden states) at every forward.

    Use it through [`capture_lm_head_input`]. `hidden` is the tensor of the latest call, shape `(B, K, H)` where
    `K` is the number of positions whose logits the model computed (1 during `generate`).
    """

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.hidden = args[0]

    def pop(self) -> torch.Tensor:
        """Returns the latest captured hidden states and forgets them."""
        if self.hidden is None:
            raise RuntimeError(
                "AutoDeco saw no hidden state: the model's forward did not call its output embeddings "
                "(`model.get_output_embeddings()`)."
            )
        hidden, self.hidden = self.hidden, None
        return hidden


def _output_embeddings(model: Any) -> nn.Module:
    getter = getattr(model, "get_output_embeddings", None)
    module = getter() if callable(getter) else None
    if not isinstance(module, nn.Module):
        raise invalid_argument(
            "model",
            type(model).__name__,
            "a causal LM whose `get_output_embeddings()` returns its LM head",
            "AutoDeco reads the LM head's input (the post-final-norm hidden state).",
        )
    return module


@contextlib.contextmanager
def capture_lm_head_input(model: Any) -> Iterator[LMHeadInputCapture]:
    """Context manager: while active, `capture.hidden` holds the latest input of `model`'s LM head.

    ```python
    with capture_lm_head_input(model) as capture:
        logits = model(**inputs, logits_to_keep=1).logits   # (B, 1, V)
        hidden = capture.pop()                              # (B, 1, H), post-final-norm
    ```
    """
    capture = LMHeadInputCapture()
    handle = _output_embeddings(model).register_forward_pre_hook(capture._hook)
    try:
        yield capture
    finally:
        handle.remove()
