"""`decoding=` dispatch: the decoder registry and `enable(model)`.

transformers has no plugin registry for decoding methods. `enable(model)` rebinds the model instance's
`generate` to a thin wrapper that reads `decoding` (from the call, from a passed `GenerationConfig`, or from
`model.generation_config`), looks the decoder up here and calls transformers' own `generate` with
`custom_generate=<decoder>`, so all of transformers' input preparation (config merge, special tokens, attention
mask, cache, processors, stopping criteria) still happens. Without `decoding`, `generate` is untouched.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from .errors import UnknownDecodingError, invalid_argument
from .generation.cache import keep_custom_generation_keys
from .generation.dispatch import generate_with_decoder

__all__ = ["available_decoders", "enable", "get_decoder", "register_decoder", "set_default_decoding"]

_DECODERS: dict[str, Callable[..., Any]] = {}
_ENABLED_FLAG = "_hf_decoding_enabled"


def register_decoder(name: str, fn: Callable[..., Any], *, overwrite: bool = False) -> Callable[..., Any]:
    """Registers `fn` as `decoding=name`.

    Args:
        name (`str`): the name users pass as `decoding=`.
        fn (`Callable`): a callable with transformers' `custom_generate` signature
            `fn(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs)`; extra
            keyword parameters it declares become legal `generate` flags.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing decoder of that name.

    Returns:
        `fn`, so the function can be used as a decorator target.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise invalid_argument("name", name, "a Python identifier such as 'my_method'")
    if not callable(fn):
        raise invalid_argument("fn", fn, "a callable with the custom_generate signature")
    if name in _DECODERS and _DECODERS[name] is not fn and not overwrite:
        raise invalid_argument(
            "name", name, "not already registered", "Pick another name or pass overwrite=True to replace it."
        )
    _DECODERS[name] = fn
    return fn


def available_decoders() -> list[str]:
    """Sorted names accepted by `decoding=`."""
    return sorted(_DECODERS)


def get_decoder(name: str) -> Callable[..., Any]:
    """The decoder registered as `name`; [`UnknownDecodingError`] listing the valid names otherwise."""
    try:
        return _DECODERS[name]
    except (KeyError, TypeError):
        raise UnknownDecodingError(
            f"Unknown decoding method `decoding={name!r}`. Available: {', '.join(sorted(_DECODERS))}. "
            "Register your own with `hf_decoding.register_decoder(name, fn)`."
        ) from None


def set_default_decoding(model: Any, decoding: str, **options: Any) -> Any:
    """Makes `decoding` (and its options) the default of `model.generate`, persisted by `save_pretrained`.

    Stores them in `model.generation_config` and clears its `_from_model_config` flag: transformers drops custom
    keys of a generation config that was derived from the model config when it is reloaded.
    """
    get_decoder(decoding)
    enable(model)
    config = model.generation_config
    config.decoding = decoding
    for key, value in options.items():
        setattr(config, key, value)
    keep_custom_generation_keys(config)
    return model


def enable(model: Any) -> Any:
    """Adds `decoding=` to `model.generate`. Idempotent; returns the same model.

    ```python
    model = hf_decoding.enable(model)
    model.generate(**inputs, decoding="distortion_aware_nucleus", do_sample=True, top_p=0.9)
    ```

    Also makes `save_pretrained` keep a `decoding` entry of `model.generation_config` across reloads.
    """
    if getattr(model, _ENABLED_FLAG, False):
        return model
    if not hasattr(model, "generate"):
        # A model without `generate` (a masked LM such as BertForMaskedLM) gets one from the first decoder that
        # can run on it (`decoding="masked_diffusion"`), declared by the decoder's `attach_generate` attribute.
        for decoder in _DECODERS.values():
            attach = getattr(decoder, "attach_generate", None)
            if attach is not None and decoder.supports_model(model):
                attach(model)
                break
    if not hasattr(model, "generate"):
        raise invalid_argument(
            "model", type(model).__name__, "a model with a `generate` method (a causal LM with GenerationMixin)"
        )
    original_generate = model.generate
    original_save = getattr(model, "save_pretrained", None)

    @functools.wraps(original_generate)
    def generate(self: Any, *args: Any, decoding: str | None = None, **kwargs: Any) -> Any:
        passed_config = kwargs.get("generation_config")
        if decoding is None and passed_config is not None:
            decoding = getattr(passed_config, "decoding", None)
        if decoding is None:
            decoding = getattr(getattr(self, "generation_config", None), "decoding", None)
        if decoding is None:
            return original_generate(*args, **kwargs)
        return generate_with_decoder(original_generate, get_decoder(decoding), self, *args, **kwargs)

    model.generate = types.MethodType(generate, model)

    if original_save is not None:

        @functools.wraps(original_save)
        def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
            config = getattr(self, "generation_config", None)
            if config is not None and getattr(config, "decoding", None) is not None:
                keep_custom_generation_keys(config)
            return original_save(*args, **kwargs)

        model.save_pretrained = types.MethodType(save_pretrained, model)
    setattr(model, _ENABLED_FLAG, True)
    return model
