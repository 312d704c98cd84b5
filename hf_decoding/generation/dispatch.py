"""Running a decoder through `generate`: what every entry point does before transformers takes over.

Three entry points hand a decoder to a `generate` — `hf_decoding.enable(model)`'s `decoding=` (the model's own
`generate`), [`AutoDecoModelForCausalLM.generate`] (the base model's `generate`) and the `generate` that
[`attach_masked_diffusion_generate`] gives a masked LM — and all three call [`generate_with_decoder`]: it checks
the sampling arguments, turns `stop_strings` into a stopping criterion, binds the extras transformers does not
forward to a `custom_generate` callable (`streamer`, `tokenizer`) and calls `generate(custom_generate=...)`.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

from ..errors import InvalidDecodingArgument, invalid_argument
from .validation import validate_sampling_arguments

__all__ = ["bind_generation_extras", "generate_with_decoder", "move_stop_strings_to_criteria"]


def generate_with_decoder(
    generate: Callable[..., Any], decoder: Callable[..., Any], model: Any, *args: Any, **kwargs: Any
) -> Any:
    """Calls `generate(*args, custom_generate=<decoder>, **kwargs)` with the call prepared for a decoder.

    Args:
        generate (`Callable`): the `generate` that prepares the inputs (transformers' `GenerationMixin.generate`
            bound to `model`, or a masked LM's attached one); it must accept `custom_generate=`.
        decoder (`Callable`): a `custom_generate` callable (a registered decoder, possibly a `functools.partial`).
        model: the model `generate` runs; its `generation_config` fills unset sampling arguments and stop strings.
        args, kwargs: the user's `generate` arguments.

    Raises:
        [`InvalidDecodingArgument`]: `custom_generate` was also passed, a sampling argument is out of range, or
            `stop_strings` were given without a `tokenizer`.
    """
    if kwargs.get("custom_generate") is not None:
        raise invalid_argument(
            "custom_generate",
            kwargs["custom_generate"],
            "unset when `decoding` is given",
            "Pass either decoding=... or custom_generate=..., not both.",
        )
    validate_sampling_arguments(kwargs, kwargs.get("generation_config"), getattr(model, "generation_config", None))
    kwargs = move_stop_strings_to_criteria(model, kwargs)
    kwargs["custom_generate"] = bind_generation_extras(decoder, kwargs)
    return generate(*args, **kwargs)


def bind_generation_extras(decoder: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """Binds `streamer` and `tokenizer` into the decoder: transformers does not forward them to callables."""
    parameters = inspect.signature(decoder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    extras = {}
    for name in ("streamer", "tokenizer"):
        if kwargs.get(name) is not None and (name in parameters or accepts_any):
            extras[name] = kwargs[name]
    return functools.partial(decoder, **extras) if extras else decoder


def move_stop_strings_to_criteria(model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turns `stop_strings` into a `StopStringCriteria` (transformers cannot build it for custom decoders).

    Reads them from the call, else from a passed `generation_config`, else from `model.generation_config`.
    """
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
    # Keep transformers from building (and failing on) its own criterion. With a passed config the override goes
    # into (a copy of) that config: a `generation_config` beside generation arguments is deprecated in transformers.
    if passed_config is not None:
        if getattr(passed_config, "stop_strings", None) is not None:
            passed_config = copy.deepcopy(passed_config)
        passed_config.stop_strings = None
        kwargs["generation_config"] = passed_config
    else:
        kwargs["stop_strings"] = None
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
