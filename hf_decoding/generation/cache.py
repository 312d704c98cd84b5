"""The one owner of the model's cache, the model kwargs and every private transformers name the loop relies on.

Every other module of `hf_decoding` reaches the cache and transformers' generation internals through the helpers
here, never by name: transformers renames them between minor releases (5.24 moved the cache from
`model_kwargs["past_key_values"]` to `model_kwargs["cache"]`, model forwards from `past_key_values=` to `cache=`,
output fields likewise). Each name is detected once, from the installed release's signatures rather than its
version string, and each entry below says which releases it was checked against. `tests/test_cache.py` exercises
every helper on the installed release; CI runs it on the lowest supported release and on the newest.

The cache is manipulated only through transformers' public `Cache` API (`reorder_cache`, `crop`,
`get_seq_length`, per-layer `keys` / `values`), except for static layers, which are re-indexed in place so the
storage (and a compiled graph's static addresses) survives a resampling.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, StaticLayer, StaticSlidingWindowLayer
from transformers.generation import utils as generation_utils
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .validation import validate_prompt

__all__ = [
    "CACHE_KWARG",
    "CACHE_NAMES",
    "OUTPUT_CACHE_FIELD",
    "ROW_KEYS",
    "any_device_compile_config",
    "cache_output_fields",
    "cache_rows",
    "copy_cache",
    "crop_cache",
    "decode_context",
    "decode_forward",
    "decode_step",
    "eos_token_tensor",
    "forward_cache_kwargs",
    "gather_rows_in_place",
    "get_cache",
    "has_fixed_rows",
    "keep_custom_generation_keys",
    "new_dynamic_cache",
    "output_cache",
    "output_cache_kwargs",
    "pad_token_tensor",
    "prefill",
    "reorder_rows",
    "update_model_kwargs",
    "with_cache",
    "without_cache",
]

# ------------------------------------------------------------------------------------------------- detected names

# The key under which `generate` keeps the cache in `model_kwargs`, and the parameter name of
# `prepare_inputs_for_generation` that reads it. Checked: 5.17-5.23 `past_key_values`; 5.24-5.25 `cache` (the
# old name is a deprecated alias until 5.40).
CACHE_KWARG: str = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)

# Every name some release keeps a cache under in `model_kwargs`, the installed release's own list first
# (`ALL_CACHE_NAMES`: 5.17-5.23 start with `past_key_values`, 5.25 with `cache`).
CACHE_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            CACHE_KWARG,
            *getattr(generation_utils, "ALL_CACHE_NAMES", ()),
            "cache",
            "past_key_values",
            "cache_params",
            "state",
            "mems",
            "past_buckets_states",
        )
    )
)

# The cache field of transformers' generate output dataclasses. Checked: 5.17-5.23 `past_key_values`,
# 5.25 `cache` (with a deprecated `past_key_values` property).
OUTPUT_CACHE_FIELD: str = (
    "cache" if "cache" in getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {}) else "past_key_values"
)

#: Per-row model kwargs re-indexed together with the cache rows.
ROW_KEYS: tuple[str, ...] = ("attention_mask", "position_ids", "token_type_ids", "mm_token_type_ids")

# Static layer types whose storage is exactly `keys` / `values` of shape (rows, heads, length, dim), re-indexed in
# place. Other static layers (indexed, linear attention) keep extra state and use their own `reorder_cache`.
# Checked: 5.17, 5.23, 5.25.
_IN_PLACE_LAYERS = (StaticLayer, StaticSlidingWindowLayer)

# `DynamicCache(config=...)` builds the per-layer types (sliding window, ...) the config asks for. Checked: 5.17-5.25.
_DYNAMIC_CACHE_TAKES_CONFIG = "config" in inspect.signature(DynamicCache.__init__).parameters


# ------------------------------------------------------------------------------------------------- model kwargs


def get_cache(model_kwargs: Mapping[str, Any]) -> Any | None:
    """The cache held in `model_kwargs` (under whichever name the installed transformers uses), or `None`."""
    for name in CACHE_NAMES:
        value = model_kwargs.get(name)
        if value is not None:
            return value
    return None


def without_cache(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `model_kwargs` with no cache under any name (releases the cache of finished rows)."""
    return {key: value for key, value in model_kwargs.items() if key not in CACHE_NAMES}


def with_cache(model_kwargs: Mapping[str, Any], cache: Any | None) -> dict[str, Any]:
    """A copy of `model_kwargs` holding `cache` under the installed release's key (`None`: no cache)."""
    out = without_cache(model_kwargs)
    if cache is not None:
        out[CACHE_KWARG] = cache
    return out


def copy_cache(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `model_kwargs` whose cache is a deep copy: the original stays reusable."""
    cache = get_cache(model_kwargs)
    return with_cache(model_kwargs, None if cache is None else copy.deepcopy(cache))


def forward_cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword that hands `cache` to `model.forward` directly: `{"cache": c}` on transformers whose forwards
    take `cache=` (5.24+), `{"past_key_values": c}` otherwise (5.17-5.23, remote code that still spells it so)."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:
        return {"cache": cache}
    if "past_key_values" in parameters:
        return {"past_key_values": cache}
    return {CACHE_KWARG: cache}  # a forward taking **kwargs (a wrapper): the installed release's name


def output_cache(outputs: Any) -> Any | None:
    """The cache a model forward (or a generate output) returned, read without deprecation warnings: a dataclass
    output is read only through the fields it declares (5.24+ outputs map `past_key_values` to `cache` with a
    warning), a plain mapping through its keys."""
    fields = getattr(type(outputs), "__dataclass_fields__", None)
    for name in ("cache", "past_key_values"):
        if fields is not None:
            value = getattr(outputs, name, None) if name in fields else None
        else:
            value = outputs.get(name) if isinstance(outputs, Mapping) else None
        if value is not None:
            return value
    return None


def output_cache_kwargs(cache: Any | None) -> dict[str, Any]:
    """`{<cache field>: cache}` for building a `GenerateDecoderOnlyOutput` (or a subclass) on this release."""
    return {OUTPUT_CACHE_FIELD: cache}


def cache_output_fields(cache: Any | None) -> dict[str, Any]:
    """`{"cache": c, "past_key_values": c}` for an output dataclass of our own that declares both fields (the
    AutoDeco wrapper's): whichever name the installed release's `_update_model_kwargs_for_generation` reads
    (5.24+: `cache`; 5.17-5.23: `past_key_values`), the cache is there, and `.past_key_values` keeps working."""
    return {"cache": cache, "past_key_values": cache}


# ------------------------------------------------------------------------------------------------- cache rows


def new_dynamic_cache(model: Any) -> DynamicCache:
    """An empty `DynamicCache` laid out for `model`'s config (Gemma-3's sliding layers get sliding-window layers)."""
    config = getattr(model, "config", None)
    if _DYNAMIC_CACHE_TAKES_CONFIG and config is not None:
        return DynamicCache(config=config)
    return DynamicCache()


def cache_rows(cache: Any) -> int:
    """Rows (batch size) a cache currently holds; `-1` when no layer has been filled yet."""
    for layer in getattr(cache, "layers", ()):
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() > 0:
            return keys.shape[0]
    return -1


def crop_cache(cache: Any, num_tokens: int) -> None:
    """Removes the last `num_tokens` positions of every layer (`Cache.crop(-n)`; checked 5.17-5.25)."""
    if num_tokens > 0:
        cache.crop(-num_tokens)


def _layer_initialized(layer: Any) -> bool:
    return isinstance(getattr(layer, "keys", None), torch.Tensor) and getattr(layer, "is_initialized", True)


def _reorder_static_layer(layer: Any, index: torch.LongTensor) -> None:
    """Re-indexes a static layer's rows. Same row count: in place (same storage, same address); a new row count
    (a fan-out from B prompts to B·N particles): new storage, marked static like transformers' own."""
    index = index.to(layer.keys.device)
    if index.shape[0] == layer.keys.shape[0]:
        layer.keys.copy_(layer.keys.index_select(0, index))
        layer.values.copy_(layer.values.index_select(0, index))
        return
    layer.keys = layer.keys.index_select(0, index)
    layer.values = layer.values.index_select(0, index)
    if hasattr(layer, "batch_size"):
        layer.batch_size = index.shape[0]
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)


def _reorder_cache(cache: Any, index: torch.LongTensor) -> None:
    if not isinstance(cache, Cache):
        raise TypeError(
            f"Cannot re-index rows of a cache of type {type(cache).__name__}: hf_decoding needs a "
            "transformers `Cache` (DynamicCache, StaticCache, ...); legacy tuple caches are not supported."
        )
    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.reorder_cache(index)
        return
    for layer in layers:
        if type(layer) in _IN_PLACE_LAYERS:
            if _layer_initialized(layer):
                _reorder_static_layer(layer, index)
        elif _layer_initialized(layer) or not hasattr(layer, "keys"):
            keys = getattr(layer, "keys", None)
            layer.reorder_cache(index.to(keys.device if isinstance(keys, torch.Tensor) else index.device))


def has_fixed_rows(model_kwargs: Mapping[str, Any]) -> bool:
    """Whether the cache's storage has a fixed shape (a `StaticCache`, `cache_implementation="static"`): its rows
    must then be re-indexed in place, never reallocated, or a compiled forward recompiles (and loses its graphs).
    Only caches made entirely of plain static layers qualify; a hybrid one (static attention beside layers with
    their own state) is re-indexed by [`reorder_rows`] as before."""
    cache = get_cache(model_kwargs)
    layers = getattr(cache, "layers", None) or ()
    return bool(layers) and all(type(layer) in _IN_PLACE_LAYERS for layer in layers)


def gather_rows_in_place(model_kwargs: Mapping[str, Any], index: torch.LongTensor) -> dict[str, Any]:
    """Like [`reorder_rows`] with `len(index)` ≤ the cache's rows, for a cache of fixed shape: the first
    `len(index)` cache rows receive rows `index` in place (same storage, same addresses, no recompilation); the
    remaining rows keep whatever they hold (the caller masks them). Per-row model kwargs are re-indexed to
    `len(index)` rows like [`reorder_rows`]. Every layer of the cache must be re-indexable in place."""
    out = dict(model_kwargs)
    cache = get_cache(out)
    if cache is not None:
        for layer in cache.layers:
            if type(layer) not in _IN_PLACE_LAYERS:
                raise TypeError(f"{type(layer).__name__} cannot be re-indexed in place")
            if _layer_initialized(layer):
                rows = index.to(layer.keys.device)
                layer.keys[: rows.shape[0]].copy_(layer.keys.index_select(0, rows))
                layer.values[: rows.shape[0]].copy_(layer.values.index_select(0, rows))
    for key in ROW_KEYS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value.index_select(0, index.to(value.device))
    return out


def reorder_rows(model_kwargs: Mapping[str, Any], index: torch.LongTensor) -> dict[str, Any]:
    """Re-indexes every per-row piece of `model_kwargs` (cache rows, masks, positions) with `index` of shape (R,).

    `index` may repeat or drop rows (resampling, fan-out, finished rows). Dynamic and sliding-window layers use
    their own `reorder_cache`; static layers are re-indexed in place while the row count is unchanged. The cache
    object itself is updated (it is shared by reference); the returned dict holds the re-indexed masks.
    """
    out = dict(model_kwargs)
    cache = get_cache(out)
    if cache is not None:
        _reorder_cache(cache, index)
    for key in ROW_KEYS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value.index_select(0, index.to(value.device))
    return out


# ------------------------------------------------------------------------------------------------- forward passes


def prefill(
    model: Any, input_ids: torch.LongTensor, generation_config: GenerationConfig, model_kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Runs the prompt through the model; returns `(outputs, updated model_kwargs)`.

    Raises [`InvalidDecodingArgument`] for an empty prompt or an all-padding row (`validate_prompt`).

    Uses transformers' own `_prefill` when it has one (checked 5.17-5.25: `_prefill(input_ids, generation_config,
    model_kwargs)`; chunked prefill and resumed caches then work as in `generate`), else feeds the prompt minus
    whatever a passed-in cache already holds.
    """
    model_kwargs = with_cache(model_kwargs, get_cache(model_kwargs))  # one name, the installed release's
    cache = get_cache(model_kwargs)
    validate_prompt(
        input_ids,
        model_kwargs.get("attention_mask"),
        cache.get_seq_length() if isinstance(cache, Cache) else 0,
    )
    if hasattr(model, "_prefill"):
        outputs = model._prefill(input_ids, generation_config, model_kwargs)
    else:
        next_sequence_length = None
        cache = get_cache(model_kwargs)
        if isinstance(cache, Cache) and cache.get_seq_length() > 0:
            next_sequence_length = input_ids.shape[1] - cache.get_seq_length()
        inputs = model.prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, is_first_iteration=True, **model_kwargs
        )
        outputs = model(**inputs, return_dict=True)
    return outputs, update_model_kwargs(model, outputs, model_kwargs)


def decode_step(
    model: Any,
    input_ids: torch.LongTensor,
    model_kwargs: dict[str, Any],
    num_new_tokens: int = 1,
    forward: Any | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Feeds the last `num_new_tokens` tokens of `input_ids` (the cache holds the rest), through `forward` (the
    compiled call [`decode_forward`] returns) or the model itself.

    Passing `next_sequence_length` matters (checked 5.17-5.25): without it transformers 5 feeds the whole sequence
    into the cache again at every step, silently. Without a cache (`use_cache=False`) the whole sequence is fed.
    """
    next_sequence_length = num_new_tokens if model_kwargs.get("use_cache", True) else None
    inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=next_sequence_length, **model_kwargs)
    outputs = (forward or model)(**inputs, return_dict=True)
    return outputs, update_model_kwargs(model, outputs, model_kwargs, num_new_tokens=num_new_tokens)


def decode_forward(model: Any, generation_config: GenerationConfig, model_kwargs: Mapping[str, Any]) -> Any:
    """The callable `generate` itself would run decode steps with: the model's compiled call
    (`get_compiled_call(generation_config.compile_config)`) when transformers' auto-compile criteria hold (a
    compileable cache such as `cache_implementation="static"`, an accelerator or a compile config for every device,
    `disable_compile` unset), else the model. Checked 5.17-5.25: `_valid_auto_compile_criteria(model_kwargs,
    generation_config)` reads the cache under `"cache"` on 5.24+ and `"past_key_values"` before, so the kwargs are
    handed over under both names.

    A model with forward hooks or pre-hooks on any module (AutoDeco's capture of the LM-head input, a user's probe)
    decodes eagerly: a compiled call does not guard on hooks, so hooks registered after it was traced would silently
    not run."""
    criteria = getattr(model, "_valid_auto_compile_criteria", None)
    if criteria is None or not hasattr(model, "get_compiled_call"):
        return model
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return model
    cache = get_cache(model_kwargs)
    if not criteria({"cache": cache, "past_key_values": cache}, generation_config):
        return model
    return model.get_compiled_call(generation_config.compile_config)


def decode_context(model: Any) -> Any:
    """The context `generate` decodes under (`_optimize_model_for_decode`: MoE expert kernels for small batches;
    checked 5.17-5.25), or a null context on models without it."""
    optimize = getattr(model, "_optimize_model_for_decode", None)
    return optimize() if optimize is not None else contextlib.nullcontext()


def any_device_compile_config(**kwargs: Any) -> CompileConfig:
    """A `CompileConfig(**kwargs)` that `generate` (and our decoders) honour on every device, the CPU included;
    transformers compiles only on accelerators unless the config opts in (`_compile_all_devices`; checked
    5.17-5.25)."""
    config = CompileConfig(**kwargs)
    config._compile_all_devices = True
    return config


def update_model_kwargs(
    model: Any, outputs: Any, model_kwargs: dict[str, Any], num_new_tokens: int = 1
) -> dict[str, Any]:
    """transformers' `_update_model_kwargs_for_generation` (the new cache, one more mask column); checked
    5.17-5.25. A forward whose output names the cache differently from the installed release (a wrapper written
    for another release) still hands its cache on."""
    updated = model._update_model_kwargs_for_generation(
        outputs,
        model_kwargs,
        is_encoder_decoder=getattr(model.config, "is_encoder_decoder", False),
        num_new_tokens=num_new_tokens,
    )
    if get_cache(updated) is None or updated.get(CACHE_KWARG) is None:
        cache = output_cache(outputs)
        if cache is not None:
            updated = with_cache(updated, cache)
    return updated


# ------------------------------------------------------------------------------------------------- generation config


def pad_token_tensor(generation_config: GenerationConfig) -> torch.Tensor | None:
    """The pad token `generate` prepared (`_pad_token_tensor`; checked 5.17-5.25), else `pad_token_id`."""
    value = getattr(generation_config, "_pad_token_tensor", None)
    if value is None and generation_config.pad_token_id is not None:
        value = torch.tensor(generation_config.pad_token_id)
    return value


def eos_token_tensor(generation_config: GenerationConfig) -> torch.Tensor | None:
    """The EOS ids `generate` prepared, 1-D (`_eos_token_tensor`; checked 5.17-5.25), else from `eos_token_id`."""
    value = getattr(generation_config, "_eos_token_tensor", None)
    if value is None and generation_config.eos_token_id is not None:
        ids = generation_config.eos_token_id
        value = torch.tensor(ids if isinstance(ids, list) else [ids])
    return None if value is None else value.reshape(-1)


def keep_custom_generation_keys(generation_config: GenerationConfig) -> GenerationConfig:
    """Marks a generation config as the user's own (`_from_model_config = False`; checked 5.17-5.25), so that
    transformers keeps its custom keys (`decoding`, method options) when the model is saved and reloaded."""
    generation_config._from_model_config = False
    return generation_config
