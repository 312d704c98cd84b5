"""Declaring a decoder's keyword arguments once: its signature, its docs and the split of each call.

transformers' `generate` routes the keyword arguments of a `custom_generate` callable to it by reading the
callable's signature. [`decoder`] gives a decoder written as `fn(call: DecoderCall)` that signature (the five
positional parameters of `custom_generate`, its keyword arguments defaulting to `None`, then `**model_kwargs`) and
the "Args" section of its docstring from [`Argument`] entries, so that a family of decoders sharing arguments
(the particle methods: `hf_decoding.smc.arguments`) declares them once. Each call reaches `fn` as one
[`DecoderCall`].
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from .cache import decode_context

__all__ = ["GENERATOR", "SEED", "STREAMER", "Argument", "DecoderCall", "decoder"]


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a particle decoder.

    Args:
        name (`str`): the keyword.
        type_doc (`str`): its type as the docs print it (`"int"`, `"str or list[str]"`).
        doc (`str`): what it does (the text after the type in the docs).
        annotation (`str`): its annotation in the signature.
    """

    name: str
    type_doc: str
    doc: str
    annotation: str = "Any"

    def doc_line(self, default: Any = None) -> str:
        """`name (`type`, *optional*[, defaults to X]): doc` (HF docstring style)."""
        shown = "" if default is None else f", defaults to `{default!r}`"
        return f"{self.name} (`{self.type_doc}`, *optional*{shown}): {self.doc}"


#: Arguments every sampling decoder takes.
SEED = Argument(
    "seed",
    "int",
    "seeds a private `torch.Generator` (default: torch's global generator, as transformers does, so "
    "`torch.manual_seed` reproduces the built-in results).",
    "int | None",
)
GENERATOR = Argument("generator", "torch.Generator", "draw from this generator instead of `seed`.")
STREAMER = Argument(
    "streamer", "BaseStreamer", "receives each new token column; bound by `hf_decoding.enable`'s `generate`."
)

_POSITIONAL = ("model", "input_ids", "logits_processor", "stopping_criteria", "generation_config")


def decoder(
    arguments: Sequence[Argument],
    *,
    defaults: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
) -> Callable[[Callable[[DecoderCall], Any]], Callable[..., Any]]:
    """Turns `fn(call: DecoderCall)` into a decoder: a `custom_generate` callable.

    The decoder has the signature transformers reads (the five positional parameters of a `custom_generate`
    callable, then each argument as a keyword defaulting to `None`, then `**model_kwargs`), splits each call into
    a [`DecoderCall`] and hands it to `fn`; its docstring is `fn`'s with an "Args" section added.

    Args:
        arguments (`Sequence[Argument]`): the decoder's keyword arguments, in the order the docs list them.
        defaults (`Mapping[str, Any]`, *optional*): the decoder's defaults, printed in the docs.
        notes (`Mapping[str, str]`, *optional*): a sentence appended to an argument's docs for this decoder.
    """
    declared = list(arguments)
    names = tuple(a.name for a in declared)
    defaults = dict(defaults or {})
    notes = dict(notes or {})

    def decorate(fn: Callable[[DecoderCall], Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(
            model: Any,
            input_ids: torch.LongTensor,
            logits_processor: LogitsProcessorList,
            stopping_criteria: StoppingCriteriaList,
            generation_config: GenerationConfig,
            **kwargs: Any,
        ) -> Any:
            call = DecoderCall(
                model=model,
                input_ids=input_ids,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
                generation_config=generation_config,
                arguments={name: kwargs.get(name) for name in names},
                model_kwargs={key: value for key, value in kwargs.items() if key not in names},
            )
            with call.resources:  # hooks a decoder registered for the call are removed when it returns
                call.resources.enter_context(decode_context(model))  # as `generate` decodes (MoE kernels)
                return fn(call)

        parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in _POSITIONAL]
        parameters += [
            inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a.annotation)
            for a in declared
        ]
        parameters.append(inspect.Parameter("model_kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.decoder_arguments = names  # type: ignore[attr-defined]
        lines = ["Args:"]
        for a in declared:
            line = a.doc_line(defaults.get(a.name))
            if a.name in notes:
                line += " " + notes[a.name]
            lines.append("    " + line)
        head, returns, tail = inspect.cleandoc(fn.__doc__ or "").partition("\nReturns:")
        wrapper.__doc__ = head.rstrip() + "\n\n" + "\n".join(lines) + ("\n" + returns + tail if returns else "") + "\n"
        del wrapper.__wrapped__  # `inspect.signature` must read `__signature__`, not `fn`'s
        return wrapper

    return decorate


@dataclass
class DecoderCall:
    """One call of a decoder: transformers' `custom_generate` inputs, the decoder's own arguments (`None`: unset)
    and the remaining model kwargs (attention mask, cache, ...)."""

    model: Any
    input_ids: torch.LongTensor
    logits_processor: LogitsProcessorList
    stopping_criteria: StoppingCriteriaList
    generation_config: GenerationConfig
    arguments: dict[str, Any]
    model_kwargs: dict[str, Any]
    resources: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def __getitem__(self, name: str) -> Any:
        return self.arguments.get(name)

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def replace(self, **changes: Any) -> DecoderCall:
        """A copy with some fields changed (e.g. the processors or the config a decoder derived)."""
        return dataclasses.replace(self, **changes)
