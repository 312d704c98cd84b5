"""AutoDeco in stock vLLM: an out-of-tree architecture whose logits already carry the heads' temperature and top-p.

```python
from vllm import LLM, SamplingParams
llm = LLM(model=merged_dir)        # written by hf_decoding.vllm.export_for_vllm (or an official merged checkpoint)
llm.generate(prompts, SamplingParams(temperature=1.0, top_p=1.0, max_tokens=256))
```

`AutoDecoForCausalLM` wraps vLLM's own implementation of the base architecture (`llm.*` weights, built from the
base config [`VllmAutoDecoConfig`] rebuilds) and the two heads (`temp_head.*`, `top_p_head.*`). Its
`compute_logits(hidden_states)` runs the base's LM head, then the heads on the same post-norm hidden states and raw
logits, and returns

    scores = PerRowTopP(P̂)(logits / T̂)      (filtered tokens at -inf)

per sampled row: vLLM's sampler at `temperature=1, top_p=1` then draws from AutoDeco's per-token distribution, and
the log-probabilities vLLM returns (`logprobs=k`, computed from `compute_logits`' output) are AutoDeco's. This is the
same math as the HF decoder (`decoding="autodeco"` with the user's values at 1), through the same per-row warpers.

A user's own `temperature=τ` and `top_p=q` then act on these scores: the temperature multiplies (`T = T̂·τ`, as in the
official fork), greedy (`τ = 0`) is the base model's argmax (temperature and top-p keep the top token), and `q`
cuts the renormalized AutoDeco nucleus once more (a kept mass of about `P̂·q`, not exactly the fork's `clamp(P̂·q)`:
see docs/methods/vllm.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix

from ..autodeco.heads import AutoDecoHeads
from ..decoders.autodeco import apply_multipliers
from ..processors.per_row import PerRowTemperatureLogitsWarper, PerRowTopPLogitsWarper
from .config import VllmAutoDecoConfig

__all__ = ["AutoDecoForCausalLM", "autodeco_scores"]

_HEAD_PREFIXES = ("temp_head.", "top_p_head.")
_BASE_PREFIX = "llm."


def autodeco_scores(heads: AutoDecoHeads, hidden_states: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """AutoDeco's processed scores `(N, V)`: the raw `logits` `(N, V)` divided by the predicted temperature and cut
    to the predicted top-p (per row), from the post-norm `hidden_states` `(N, H)` the logits came from."""
    with torch.no_grad():
        predictions = heads(hidden_states, logits)
    # Rows vLLM fills with placeholders (profiling runs) can give NaN predictions; they are never sampled.
    temperature = torch.nan_to_num(predictions.temperature.float(), nan=1.0)
    top_p = torch.nan_to_num(predictions.top_p.float(), nan=1.0)
    min_top_p = float(getattr(heads.config, "min_top_p", 0.0) or 0.0)
    temperature, top_p = apply_multipliers(temperature, top_p, 1.0, 1.0, min_top_p)
    scores = PerRowTemperatureLogitsWarper(temperature.clamp(min=1e-6))(None, logits.float())  # (N, V)
    return PerRowTopPLogitsWarper(top_p)(None, scores)  # (N, V)


class AutoDecoForCausalLM(nn.Module):
    r"""vLLM model for merged AutoDeco checkpoints (`architectures: ["AutoDecoModelForCausalLM"]`).

    Args:
        vllm_config (`VllmConfig`): vLLM's config; `model_config.hf_config` is a [`VllmAutoDecoConfig`].
        prefix (`str`, *optional*): vLLM's module prefix.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if not isinstance(config, VllmAutoDecoConfig):
            raise TypeError(
                f"AutoDecoForCausalLM needs a VllmAutoDecoConfig, got {type(config).__name__}: the hf_decoding vLLM "
                "plugin did not run. Fix: install hf-decoding in the environment that runs vLLM."
            )
        self.config = config
        base_config = config.base_config
        self.llm = init_vllm_registered_model(
            vllm_config=vllm_config,
            hf_config=base_config,
            prefix=maybe_prefix(prefix, "llm"),
            architectures=base_config.architectures,
        )
        # The heads draw their init from a CPU generator; build them on the CPU, then move them (weights load later).
        with torch.device("cpu"):
            heads = AutoDecoHeads(config).float()
        self.heads = heads.to(vllm_config.device_config.device)
        if hasattr(self.llm, "make_empty_intermediate_tensors"):
            self.make_empty_intermediate_tensors = self.llm.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self.llm(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """AutoDeco's processed scores for the sampled rows `(N, H)` -> `(N, V)` (`None` off the last PP rank)."""
        logits = self.llm.compute_logits(hidden_states)
        if logits is None:
            return None
        return autodeco_scores(self.heads, hidden_states, logits)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Base tensors (`llm.*`, or unprefixed) go to the base's own loader; `temp_head.*` / `top_p_head.*` to the
        heads, checked by [`AutoDecoHeads.load_head_state`]."""
        head_state: dict[str, torch.Tensor] = {}

        def base_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(_HEAD_PREFIXES):
                    head_state[name] = tensor
                    continue
                yield name.removeprefix(_BASE_PREFIX), tensor

        loaded = {maybe_prefix("llm", name) for name in self.llm.load_weights(base_weights())}
        self.heads.load_head_state(
            {key: value.to(torch.float32) for key, value in head_state.items()}, source="the merged checkpoint"
        )
        return loaded | {f"heads.{key}" for key in head_state}
