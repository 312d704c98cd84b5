"""`decoding=` dispatch: the decoder registry and `enable(model)`.

transformers has no plugin registry for decoding methods. `enable(model)` rebinds the model instance's
`generate` to a thin wrapper that reads `decoding` (from the call, from a passed `GenerationConfig`, or from
`model.generation_config`), looks the decoder up here and calls transformers' own `generate` with
`custom_generate=<decoder>`, so all of transformers' input preparation (config merge, special tokens, attention
mask, cache, processors, stopping criteria) still happens. Without `decoding`, `generate` is untouched.
"""

from __future__ import annotations

import copy
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

from .errors import InvalidDecodingArgument, UnknownDecodingError, invalid_argument
from .generation.cache import keep_custom_generation_keys
from .generation.validation import validate_sampling_arguments

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
    _load_builtin_decoders()
    return sorted(_DECODERS)


def get_decoder(name: str) -> Callable[..., Any]:
    """The decoder registered as `name`; [`UnknownDecodingError`] listing the valid names otherwise."""
    _load_builtin_decoders()
    try:
        return _DECODERS[name]
    except (KeyError, TypeError):
        raise UnknownDecodingError(
            f"Unknown decoding method `decoding={name!r}`. Available: {', '.join(sorted(_DECODERS))}. "
            "Register your own with `hf_decoding.register_decoder(name, fn)`."
        ) from None


def _load_builtin_decoders() -> None:
    from . import decoders  # noqa: F401  (registers the built-in decoders on import)


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
        from .decoders.masked_diffusion import attach_masked_diffusion_generate, supports_masked_diffusion

        if supports_masked_diffusion(model):  # a masked LM (BertForMaskedLM, ...): decoding="masked_diffusion" only
            attach_masked_diffusion_generate(model)
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
        if kwargs.get("custom_generate") is not None:
            raise invalid_argument(
                "custom_generate",
                kwargs["custom_generate"],
                "unset when `decoding` is given",
                "Pass either decoding=... or custom_generate=..., not both.",
            )
        decoder = get_decoder(decoding)
        validate_sampling_arguments(kwargs, passed_config, getattr(self, "generation_config", None))
        kwargs = _move_stop_strings_to_criteria(self, kwargs)
        kwargs["custom_generate"] = _bind_generation_extras(decoder, kwargs)
        return original_generate(*args, **kwargs)

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


def _bind_generation_extras(decoder: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """Binds `streamer` and `tokenizer` into the decoder: transformers does not forward them to callables."""
    parameters = inspect.signature(decoder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    extras = {}
    for name in ("streamer", "tokenizer"):
        if kwargs.get(name) is not None and (name in parameters or accepts_any):
            extras[name] = kwargs[name]
    return functools.partial(decoder, **extras) if extras else decoder


def _move_stop_strings_to_criteria(model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turns `stop_strings` into a `StopStringCriteria` (transformers cannot build it for custom decoders)."""
    kwargs = dict(kwargs)
    stop_strings = kwargs.pop("stop_strings", None)
    passed_config = kwargs.get("generation_config")
    if stop_strings is None and passed_config is not None and getattr(passed_config, "stop_strings", None):
        stop_strings = passed_config.stop_strings
        passed_config = copy.deepcopy(passed_config)
        passed_config.stop_strings = None
        kwargs["generation_config"] = passed_config
    model_config = getattr(model, "generation_config", None)
    if stop_strings is None and model_config is not None and getattr(model_config, "stop_strings", None):
        stop_strings = model_config.stop_strings
    if not stop_strings:
        return kwargs
    kwargs["stop_strings"] = None  # keep transformers from building (and failing on) its own criterion
    tokenizer = kwargs.get("tokenizer")
    if tokenizer is None:
        raise InvalidDecodingArgument(
            f"`stop_strings={stop_strings!r}` needs the tokenizer to match strings on token ids. "
            "Fix: pass `tokenizer=tokenizer` to `generate`."
        )
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    kwargs["stopping_criteria"] = criteria
    return kwargs
