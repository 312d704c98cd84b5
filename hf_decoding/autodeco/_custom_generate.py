"""AutoDeco as a Hub `custom_generate` recipe: `model.generate(custom_generate="<repo>", trust_remote_code=True)`.

Standalone (torch, transformers, safetensors, huggingface_hub only): `hf-decoding autodeco export-custom-generate`
copies this file to `<repo>/custom_generate/generate.py` with `HEADS_SOURCE` set to the repository that holds the
heads (`config.json` + `model.safetensors`), so a user without `hf-decoding` installed can run AutoDeco on the
base model. It mirrors `hf_decoding.decoders.autodeco`: with the same seed it returns the same tokens.

Extra `generate` arguments: `autodeco_heads` (a Hub id or directory to read the heads from instead of
`HEADS_SOURCE`). User `temperature` / `top_p` act as multipliers of the predicted values; `temperature=0` or
`do_sample=False` is greedy. Pass `top_k=0` for the paper's setting (transformers adds `top_k=50` when sampling).
"""

from __future__ import annotations

import functools
import json
import os

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    LogitNormalization,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

HEADS_SOURCE = None  # set by the export command
_WEIGHTS = ("model.safetensors", "autodeco_heads.safetensors")
_CACHE: dict[str, nn.Module] = {}


def _linear(inputs: int, outputs: int) -> nn.Linear:
    # No random init (the weights are loaded): leaves the global RNG, and so the sampled tokens, untouched.
    layer = torch.nn.utils.skip_init(nn.Linear, inputs, outputs)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


def _mlp(inputs: int, width: int) -> nn.Sequential:
    return nn.Sequential(_linear(inputs, width), nn.ReLU(), _linear(width, 1), nn.Sigmoid())


def _output_cache_field() -> str:
    """The cache field of `GenerateDecoderOnlyOutput`: `cache` from transformers 5.24 on, `past_key_values` before
    (checked 5.17-5.25). This recipe runs without the package, so it keeps its own copy; a test checks that it
    agrees with the package's."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


class _Heads(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        hidden = config.get("hidden_size") or config.get("temperature_hidden_size")
        width = config.get("head_hidden_size", 256)
        self.max_t = float(config.get("max_temperature", 2.0))
        self.min_t = float(config.get("min_temperature", 0.01))
        self.min_p = float(config.get("min_top_p", 0.0))
        self.enable_t = bool(config.get("enable_temperature_head", True))
        self.enable_p = bool(config.get("enable_top_p_head", True))
        self.enhanced = bool(config.get("use_enhanced_features", True))
        self.temp_head = nn.Module()
        self.temp_head.mlp = _mlp(hidden, width)
        self.top_p_head = nn.Module()
        self.top_p_head.mlp = _mlp(hidden + 1 + (4 if self.enhanced else 0), width)

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.temp_head.mlp[0].weight
        h = hidden.to(weight.device, weight.dtype)  # (B, H)
        if self.enable_t:
            t = (self.temp_head.mlp(h).squeeze(-1) * self.max_t).clamp(min=self.min_t)
        else:
            t = h.new_ones(h.shape[:-1])
        if not self.enable_p:
            return t, h.new_ones(h.shape[:-1])
        features = [h, t.unsqueeze(-1)]
        if self.enhanced:
            probs = torch.softmax(logits.float().to(h.device) / (t.unsqueeze(-1).float() + 1e-8), dim=-1)
            stats = [
                probs.amax(-1, keepdim=True),
                -(probs * torch.log(probs + 1e-8)).sum(-1, keepdim=True),
                probs.var(-1, keepdim=True),
                torch.topk(probs, min(5, probs.shape[-1]), dim=-1).values.sum(-1, keepdim=True),
            ]
            features.append(torch.cat(stats, -1).to(h.dtype))
        return t, self.top_p_head.mlp(torch.cat(features, -1)).squeeze(-1)


def _file(source: str, name: str) -> str | None:
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(source, name)
    except EntryNotFoundError:
        return None


def load_heads(source: str, model: nn.Module) -> nn.Module:
    """Heads from a directory or Hub id (safetensors only), checked against the model's hidden size."""
    if source in _CACHE:
        return _CACHE[source]
    with open(_file(source, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    heads = _Heads(config)
    hidden = model.get_output_embeddings().weight.shape[1]
    if heads.temp_head.mlp[0].in_features != hidden:
        raise ValueError(
            f"The AutoDeco heads in {source} expect hidden size {heads.temp_head.mlp[0].in_features}, the model has "
            f"{hidden}. Load them onto the base model they were trained on."
        )
    for name in _WEIGHTS:
        path = _file(source, name)
        if path is not None:
            state = {k: v for k, v in load_file(path).items() if k.startswith(("temp_head.", "top_p_head."))}
            if state:
                heads.load_state_dict(state, strict=False)
                break
    else:
        raise ValueError(f"No AutoDeco head tensors found in {source}.")
    heads.to(next(model.parameters()).device).eval()
    _CACHE[source] = heads
    return heads


class _RowTemperature(LogitsProcessor):
    def __init__(self) -> None:
        self.values = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.values.to(scores.device, torch.float64).unsqueeze(-1).to(scores.dtype)


class _RowTopP(LogitsProcessor):
    def __init__(self) -> None:
        self.values = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        threshold = (1 - self.values.to(scores.device, torch.float64)).unsqueeze(-1).to(scores.dtype)
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= threshold
        remove[..., -1:] = False
        return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))


def _is_warper(processor: LogitsProcessor) -> bool:
    name = type(processor).__name__
    return name.endswith("LogitsWarper") or getattr(processor, "is_warper", False)


def _per_row(processors: LogitsProcessorList) -> tuple[LogitsProcessorList, _RowTemperature, _RowTopP]:
    t, p = _RowTemperature(), _RowTopP()
    out = LogitsProcessorList(x for x in processors if not isinstance(x, (TemperatureLogitsWarper, TopPLogitsWarper)))
    warpers = [i for i, x in enumerate(out) if _is_warper(x)]
    if warpers:
        position = warpers[0]
    else:
        position = len(out)
        while position > 0 and isinstance(out[position - 1], LogitNormalization):
            position -= 1
    out.insert(position, t)
    after = position
    for i, x in enumerate(out):
        if isinstance(x, (TopHLogitsWarper, TopKLogitsWarper)):
            after = max(after, i)
    out.insert(after + 1, p)
    return out, t, p


def _loop(
    model, input_ids, logits_processor, stopping_criteria, generation_config, heads=None, streamer=None, **model_kwargs
):
    user_t = 1.0 if generation_config.temperature is None else float(generation_config.temperature)
    user_p = 1.0 if generation_config.top_p is None else float(generation_config.top_p)
    do_sample = bool(generation_config.do_sample) and user_t > 0
    processors, t_warper, p_warper = _per_row(logits_processor) if do_sample else (logits_processor, None, None)
    pad = generation_config._pad_token_tensor
    has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    captured = {}
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: captured.__setitem__("h", args[0])
    )
    applied_t, applied_p = [], []
    try:
        outputs = model._prefill(input_ids, generation_config, model_kwargs)
        model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
        while True:
            logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)  # (B, V)
            t_hat, p_hat = heads(captured.pop("h")[:, -1], logits)
            final_t = (t_hat.float() * user_t).to(input_ids.device)
            final_p = (p_hat.float() * user_p).clamp(min=max(heads.min_p, 1e-6), max=1.0).to(input_ids.device)
            if do_sample:
                t_warper.values, p_warper.values = final_t, final_p
            scores = processors(input_ids, logits)
            if do_sample:
                tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                tokens = torch.argmax(scores, dim=-1)
            if has_eos:
                tokens = torch.where(unfinished, tokens, pad.to(input_ids.device))
            # Positions after a row finished hold NaN: no prediction was made there.
            applied_t.append(torch.where(unfinished, final_t if do_sample else 0 * final_t, float("nan")))
            applied_p.append(torch.where(unfinished, final_p, float("nan")))
            input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(tokens.cpu())
            unfinished = unfinished & ~stopping_criteria(input_ids, None)
            if not bool(unfinished.any()):
                break
            inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
            outputs = model(**inputs, return_dict=True)
            model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
    finally:
        handle.remove()
    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        found = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
        out = GenerateDecoderOnlyOutput(sequences=input_ids, **{_output_cache_field(): found})
        out["autodeco_temperature"] = torch.stack(applied_t, dim=-1)
        out["autodeco_top_p"] = torch.stack(applied_p, dim=-1)
        return out
    return input_ids


def generate(model, *args, autodeco_heads=None, **kwargs):
    """Entry point called by `model.generate(custom_generate=<this repo>, trust_remote_code=True, ...)`."""
    source = autodeco_heads or HEADS_SOURCE
    if source is None:
        raise ValueError("No AutoDeco heads: pass `autodeco_heads=<hub id or directory>`.")
    heads = load_heads(str(source), model)
    loop = functools.partial(_loop, heads=heads, streamer=kwargs.get("streamer"))
    return GenerationMixin.generate(model, *args, custom_generate=loop, **kwargs)
