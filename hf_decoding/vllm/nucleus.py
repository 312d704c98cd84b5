"""The distortion-aware nucleus as a vLLM logits processor, enabled per request.

```python
from vllm import LLM, SamplingParams
llm = LLM(model=path)   # the processor is registered by the "vllm.logits_processors" entry point
params = SamplingParams(extra_args={"decoding": "distortion_aware_nucleus", "top_p": 0.9}, temperature=1.0)
```

Requests without `extra_args["decoding"] == "distortion_aware_nucleus"` are left alone. The math is the HF processor's
([`~hf_decoding.processors.DistortionAwareNucleusLogitsProcessor`], imported, not copied): keep the nucleus of
the *tempered* distribution and down-weight its boundary token so that the kept mass is exactly `top_p`.

One class serves both of vLLM's model runners, because vLLM loads every class of the entry-point group in either
runner and the V2 runner rejects a class that does not implement its interface:

- **V1 runner** (CPU, and GPUs with `VLLM_USE_V2_MODEL_RUNNER=0`; tested): `__init__(vllm_config, device,
  is_pin_memory)`, `update_state(BatchUpdate)`, `apply(logits)`. The processor declares itself argmax-invariant, so
  vLLM applies it after the temperature and only to randomly sampled rows, as transformers orders its warpers.
- **V2 runner** (the GPU default since vLLM 0.25; written against vLLM 0.32's
  `vllm.v1.worker.gpu.sample.logits_processor` but **untested here**, no GPU): `__init__(vllm_config, req_states)`,
  `add_request(slot, params)`, `apply(logits, ctx)`. V2 calls `apply` *before* the temperature; the processor
  therefore cuts the tempered distribution itself and multiplies the result back by the request's temperature, so
  that the runner's later division gives the same scores as the V1 order.

vLLM's own `top_p < 1` together with this processor is rejected (two nucleus cuts would compose); vLLM's `top_k` and
`min_p`, if set, act after this processor.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from ..processors.distortion_aware_nucleus import DistortionAwareNucleusLogitsProcessor

__all__ = ["DECODING_NAME", "DistortionAwareNucleusVllmProcessor", "requested_top_p"]

#: The value of `SamplingParams.extra_args["decoding"]` that turns the processor on for a request.
DECODING_NAME = "distortion_aware_nucleus"


def requested_top_p(params: SamplingParams | None) -> float | None:
    """The kept mass a request asks for, or `None` when it does not ask for the distortion-aware nucleus.

    Raises:
        `ValueError`: `extra_args["top_p"]` is missing or not in `(0, 1]`, or vLLM's own `top_p < 1` is set as well.
    """
    extra = getattr(params, "extra_args", None) or {}
    if extra.get("decoding") != DECODING_NAME:
        return None
    value = extra.get("top_p")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f'SamplingParams(extra_args={{"decoding": "{DECODING_NAME}", "top_p": ...}}) needs a top_p in (0, 1], '
            f"got {value!r}. Fix: pass the kept mass as extra_args['top_p'], e.g. 0.9."
        )
    own_top_p = getattr(params, "top_p", 1.0)
    if own_top_p is not None and own_top_p < 1.0:
        raise ValueError(
            f"SamplingParams(top_p={own_top_p}) cannot be combined with "
            f"extra_args={{'decoding': '{DECODING_NAME}', 'top_p': {value}}}: both would cut the nucleus. "
            "Fix: leave vLLM's top_p at 1.0 and pass the kept mass only as extra_args['top_p']."
        )
    return float(value)


def _nucleus(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The HF processor on rows `(R, V)` with one kept mass per row `(R,)`."""
    return DistortionAwareNucleusLogitsProcessor(top_p)(None, scores)


class DistortionAwareNucleusVllmProcessor(V1LogitsProcessor, V2LogitsProcessor):
    r"""vLLM logits processor: the distortion-aware nucleus for the requests that ask for it.

    Enable it per request with `SamplingParams(extra_args={"decoding": "distortion_aware_nucleus", "top_p": p})`;
    vLLM's `temperature` still applies (first, as in transformers). vLLM builds it; its constructor takes the V1
    arguments `(vllm_config, device, is_pin_memory)` or the V2 ones `(vllm_config, req_states)`.
    """

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        self._runner = "v1" if len(args) == 2 else "v2"
        # V1: batch row -> kept mass of the rows that asked for the processor.
        self._rows: dict[int, float] = {}
        if self._runner == "v2":
            (req_states,) = args
            slots = int(req_states.max_num_reqs)
            self._device = req_states.device
            # V2: persistent request slot -> kept mass (1 = off) and the request's temperature (1 when greedy).
            self._slot_top_p = torch.ones(slots, dtype=torch.float32, device=self._device)
            self._slot_temperature = torch.ones(slots, dtype=torch.float32, device=self._device)
            self._slot_active = [False] * slots  # on the host: skip steps without a device sync

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        requested_top_p(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # Every kept token keeps its score except the boundary one, which only loses mass, so the top token stays
        # on top: vLLM may skip the processor for greedy rows and apply it after the temperature.
        return True

    # ---------------------------------------------------------------------------------------------------------------
    # V1 runner
    # ---------------------------------------------------------------------------------------------------------------

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, _output_ids in batch_update.added:
            top_p = requested_top_p(params)
            if top_p is None or top_p >= 1.0:
                self._rows.pop(index, None)  # an added request may replace one at the same index
            else:
                self._rows[index] = top_p
        for first, second, direction in batch_update.moved:
            a, b = self._rows.pop(first, None), self._rows.pop(second, None)
            if a is not None:
                self._rows[second] = a
            if direction == MoveDirectionality.SWAP and b is not None:
                self._rows[first] = b

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if ctx is not None:
            return self._apply_v2(logits, ctx)
        if not self._rows:
            return logits
        index = sorted(i for i in self._rows if i < logits.shape[0])
        if not index:
            return logits
        rows = torch.tensor(index, device=logits.device)
        top_p = torch.tensor([self._rows[i] for i in index], dtype=torch.float64)
        logits[rows] = _nucleus(logits[rows], top_p)  # (R, V), after vLLM's temperature
        return logits

    # ---------------------------------------------------------------------------------------------------------------
    # V2 runner (untested here: vLLM runs it on GPUs only)
    # ---------------------------------------------------------------------------------------------------------------

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        top_p = requested_top_p(sampling_params)
        temperature = float(sampling_params.temperature or 0.0)
        active = top_p is not None and top_p < 1.0 and temperature > 0.0  # greedy rows keep their argmax anyway
        self._slot_active[req_idx] = active
        self._slot_top_p[req_idx] = top_p if active else 1.0
        self._slot_temperature[req_idx] = temperature if active else 1.0
        return active

    def _apply_v2(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not any(self._slot_active[int(slot)] for slot in ctx.idx_mapping_np):
            return logits
        slots = ctx.expanded_idx_mapping.long()  # (R,) logits row -> request slot
        top_p = self._slot_top_p[slots]  # (R,), 1 for the rows that did not ask
        temperature = self._slot_temperature[slots].unsqueeze(-1)  # (R, 1)
        # V2 applies the temperature after this call: cut the tempered distribution, then undo the scaling.
        return _nucleus(logits / temperature, top_p) * temperature
