"""`AutoDecoModelForCausalLM`: any causal LM plus the two AutoDeco heads, saved and shared as heads only.

The wrapper *composes* the base model (like PEFT): `model.llm` is the untouched causal LM, `model.heads` the two
small heads. `save_pretrained` writes `config.json` (base id and revision, hidden size, head config, package
version), `model.safetensors` with only the head tensors, `generation_config.json` and a model card;
`from_pretrained` loads the base by its id (or takes `base_model=`) and reads our layout as well as the official
heads-only layout (`temp_head.mlp.{0,2}.*`, `top_p_head.mlp.{0,2}.*` in `model.safetensors` or
`autodeco_heads.safetensors`). `generate` runs `decoding="autodeco"` by default.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput, cached_file

from ..errors import IncompatibleCheckpointError, InvalidDecodingArgument, invalid_argument
from ..generation.cache import cache_output_fields, keep_custom_generation_keys, output_cache
from ..generation.dispatch import generate_with_decoder
from ..registry import get_decoder
from .card import build_model_card
from .config import AutoDecoConfig, package_version
from .heads import AutoDecoHeads, capture_lm_head_input
from .losses import AutoDecoLossConfig, chunked_autodeco_loss

__all__ = [
    "HEADS_WEIGHTS_NAMES",
    "AutoDecoCausalLMOutput",
    "AutoDecoModelForCausalLM",
    "base_hidden_size",
    "base_hidden_states",
    "logits_from_hidden",
    "register_auto_classes",
]

logger = logging.getLogger(__name__)

#: File names searched for head tensors, in order (ours and the official one, then a sharded merged checkpoint).
HEADS_WEIGHTS_NAMES = ("model.safetensors", "autodeco_heads.safetensors")
_INDEX_NAME = "model.safetensors.index.json"
_LORA_SUBFOLDER = "lora_adapter"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_UNSET: Any = object()


@dataclass
class AutoDecoCausalLMOutput(ModelOutput):
    """Output of [`AutoDecoModelForCausalLM.forward`].

    Args:
        loss (`torch.FloatTensor`, *optional*): weighted AutoDeco loss (when `labels` are given).
        temperature_loss (`torch.FloatTensor`, *optional*): the temperature loss.
        top_p_loss (`torch.FloatTensor`, *optional*): the soft top-p loss.
        logits (`torch.FloatTensor` of shape `(B, K, V)`): the base model's logits (`K` positions kept).
        temperature (`torch.FloatTensor` of shape `(B, K)`): predicted temperature `T̂` at those positions.
        top_p (`torch.FloatTensor` of shape `(B, K)`): predicted top-p `P̂` at those positions.
        cache, past_key_values: the base model's cache, under both names (transformers 5.24+ reads `cache`,
            earlier releases `past_key_values`).
        hidden_states, attentions: as returned by the base model.
    """

    loss: torch.FloatTensor | None = None
    temperature_loss: torch.FloatTensor | None = None
    top_p_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    temperature: torch.FloatTensor | None = None
    top_p: torch.FloatTensor | None = None
    past_key_values: Any = None
    cache: Any = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Base-model helpers
# --------------------------------------------------------------------------------------------------------------------


def _text_config(base: Any) -> Any:
    config = base.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def base_hidden_size(base: Any) -> int:
    """Hidden size `H` of a causal LM (the LM head's input size)."""
    config = _text_config(base)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    head = base.get_output_embeddings()
    return int(head.weight.shape[1])


def base_hidden_states(
    base: Any, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    """Post-final-norm hidden states `(B, L, H)` of every position, from the base's decoder stack alone.

    Only the last layer's output is materialised (no `output_hidden_states=True`) and the LM head is not applied,
    so training can compute logits chunk by chunk with [`logits_from_hidden`].
    """
    decoder = base.get_decoder()
    if decoder is base:
        raise invalid_argument(
            "base_model", type(base).__name__, "a causal LM whose `get_decoder()` returns its decoder stack"
        )
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True, **kwargs)
    return out.last_hidden_state


def logits_from_hidden(base: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The base's logits for post-norm hidden states `(..., H)` -> `(..., V)`.

    Applies the LM head and the logit post-processing some architectures do in their `forward`
    (`final_logit_softcapping` (Gemma 2/3), `logit_scale` (Cohere), `logits_scaling` (Granite)).
    """
    head = base.get_output_embeddings()
    logits = head(hidden.to(head.weight.dtype))
    config = _text_config(base)
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, (int, float)) and not isinstance(scaling, bool) and scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _base_name_and_revision(base: Any) -> tuple[str | None, str | None]:
    config = getattr(base, "config", None)
    name = getattr(base, "name_or_path", None) or getattr(config, "_name_or_path", None) or None
    revision = getattr(config, "_commit_hash", None)
    return name, revision


def _autodeco_generation_config(base_config: GenerationConfig | None) -> GenerationConfig:
    """The wrapper's default generation config: the base's, sampling with `T_user = p_user = 1` (raw predictions),
    no top-k, `decoding="autodeco"`."""
    config = copy.deepcopy(base_config) if base_config is not None else GenerationConfig()
    config.do_sample = True
    config.temperature = 1.0
    config.top_p = 1.0
    config.top_k = 0
    config.decoding = "autodeco"
    return keep_custom_generation_keys(config)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class AutoDecoModelForCausalLM(PreTrainedModel, GenerationMixin):
    r"""A causal LM with AutoDeco's temperature and top-p heads (arXiv 2510.26697).

    ```python
    from hf_decoding import AutoDecoModelForCausalLM
    model = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.7, init_top_p=0.9)  # fresh heads
    model = AutoDecoModelForCausalLM.from_pretrained("dir-or-hub-id")                       # trained heads
    out = model.generate(**inputs, max_new_tokens=64, return_dict_in_generate=True)         # decoding="autodeco"
    out.autodeco.temperature, out.autodeco.top_p                                            # (B, new tokens)
    ```

    Args:
        config ([`AutoDecoConfig`]): the heads' configuration.
        base_model (`PreTrainedModel`, *optional*): the causal LM; loaded from `config.base_model_name_or_path`
            (at `config.base_model_revision`) when not given.
    """

    config_class = AutoDecoConfig
    base_model_prefix = "llm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: AutoDecoConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        if base_model is None:
            base_model = _load_base(config)
        check_base_fits(config, base_model)
        self.llm = base_model
        self.heads = AutoDecoHeads(config)
        self.heads.reset_parameters(seed=0)
        device = _first_device(base_model)
        if device is not None:
            self.heads.to(device)
        self.generation_config = _autodeco_generation_config(getattr(base_model, "generation_config", None))
        self.post_init()

    def init_weights(self) -> None:
        """No-op: the base is already initialised or loaded (re-running transformers' init would reset modules it
        does not know, such as a PEFT adapter's), and the heads are initialised by `reset_parameters`."""

    # ------------------------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_base(
        cls,
        base_model: PreTrainedModel,
        *,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        init_temperature: float | None = None,
        init_top_p: float | None = None,
        seed: int = 0,
        **config_kwargs: Any,
    ) -> AutoDecoModelForCausalLM:
        r"""Fresh heads on `base_model`.

        Args:
            base_model (`PreTrainedModel`): any causal LM (its weights are neither copied nor changed).
            base_model_name_or_path (`str`, *optional*): Hub id to record in the checkpoint (defaults to the base's
                `name_or_path`; pass the Hub id when the base was loaded from a local copy).
            base_model_revision (`str`, *optional*): revision to record.
            init_temperature (`float`, *optional*), init_top_p (`float`, *optional*): make the step-0 predictions
                equal these values (see [`AutoDecoHeads.init_predictions`]).
            seed (`int`, *optional*, defaults to 0): seed of the heads' random init.
            config_kwargs: other [`AutoDecoConfig`] fields (`enable_top_p_head`, `max_temperature`, ...).
        """
        name, revision = _base_name_and_revision(base_model)
        text_config = _text_config(base_model)
        config = AutoDecoConfig(
            base_model_name_or_path=base_model_name_or_path or name,
            base_model_revision=base_model_revision or revision,
            base_model_type=getattr(text_config, "model_type", None),
            base_architectures=getattr(base_model.config, "architectures", None),
            hidden_size=base_hidden_size(base_model),
            vocab_size=getattr(text_config, "vocab_size", None),
            hf_decoding_version=package_version(),
            **config_kwargs,
        )
        model = cls(config, base_model=base_model)
        model.heads.reset_parameters(seed=seed)
        model.heads.init_predictions(init_temperature, init_top_p)
        model.eval()
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *model_args: Any,
        base_model: PreTrainedModel | None = None,
        config: AutoDecoConfig | None = None,
        base_model_name_or_path: str | None = None,
        base_model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AutoDecoModelForCausalLM:
        r"""Loads heads from a local directory or a Hub repository, and the base model by its id.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a directory or a Hub repo id written by
                [`save_pretrained`], or an official AutoDeco heads-only checkpoint.
            base_model (`PreTrainedModel`, *optional*): the base, already loaded (skips loading it by id).
            config ([`AutoDecoConfig`], *optional*): use this config instead of the checkpoint's.
            base_model_name_or_path (`str`, *optional*): load the base from here instead of the id in the config
                (official checkpoints record the training machine's local path).
            base_model_kwargs (`dict`, *optional*): extra kwargs for the base's `from_pretrained` (`dtype`,
                `device_map`, `attn_implementation`, ...). `dtype` and `device_map` given directly are forwarded too.
            kwargs: Hub options (`revision`, `cache_dir`, `token`, `local_files_only`, `force_download`,
                `subfolder`). Other keys the Auto classes add are ignored.

        Raises:
            [`IncompatibleCheckpointError`]: hidden size or architecture of the base differs from the checkpoint's,
                a head tensor has the wrong shape, or no head tensors are found.
        """
        hub = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        base_kwargs = dict(base_model_kwargs or {})
        for key in ("dtype", "torch_dtype", "device_map", "attn_implementation"):
            if key in kwargs:
                base_kwargs.setdefault(key, kwargs.pop(key))
        for key in (
            "_from_auto",
            "_from_pipeline",
            "trust_remote_code",
            "adapter_kwargs",
            "_commit_hash",
            "code_revision",
            "use_safetensors",
        ):
            kwargs.pop(key, None)
        if kwargs:
            logger.debug("AutoDecoModelForCausalLM.from_pretrained ignores %s", sorted(kwargs))
        path = os.fspath(pretrained_model_name_or_path)
        _check_source(path)
        if config is None or not isinstance(config, AutoDecoConfig):
            try:
                config = AutoDecoConfig.from_pretrained(path, **hub)
            except OSError as err:
                where = (
                    f"no directory `{os.path.abspath(path)}` exists here and the Hub"
                    if not os.path.isdir(path)
                    else "the directory"
                )
                raise IncompatibleCheckpointError(
                    f"Could not read an AutoDeco config from `{path}`: {where} gave: {err} Fix: pass a directory "
                    "written by `AutoDecoModelForCausalLM.save_pretrained` or the Hub id of an AutoDeco checkpoint."
                ) from err
        if base_model_name_or_path is not None:
            config.base_model_name_or_path = base_model_name_or_path
        if base_model is None:
            base_model = _load_base(config, **base_kwargs)
        if config.lora_adapter:
            base_model = _load_lora(base_model, path, config.lora_adapter, hub)
        state = _load_head_tensors(path, hub)
        model = cls(config, base_model=base_model)
        model.heads.load_head_state(state, source=f"`{path}`")
        model.name_or_path = path
        model.eval()
        return model

    # ------------------------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        is_main_process: bool = True,
        safe_serialization: bool = True,
        repo_id: str | None = None,
        model_card: bool = True,
        **kwargs: Any,
    ) -> None:
        r"""Writes the heads only: `config.json`, `model.safetensors` (head tensors), `generation_config.json`,
        `README.md` (model card) and, with a jointly trained LoRA, `lora_adapter/`.

        Args:
            save_directory (`str` or `os.PathLike`): target directory (created).
            is_main_process (`bool`, *optional*, defaults to `True`): only the main process writes (multi-GPU).
            safe_serialization (`bool`, *optional*, defaults to `True`): must be `True` (safetensors only).
            repo_id (`str`, *optional*): Hub id shown in the model card's usage snippet.
            model_card (`bool`, *optional*, defaults to `True`): write `README.md`.
            kwargs: accepted for compatibility with `PreTrainedModel.save_pretrained` (`max_shard_size`,
                `push_to_hub`, ...) and ignored.
        """
        if not safe_serialization:
            raise invalid_argument(
                "safe_serialization",
                safe_serialization,
                "True",
                "AutoDeco checkpoints are written as safetensors only.",
            )
        if not is_main_process:
            return
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.hf_decoding_version = package_version()
        config.lora_adapter = _LORA_SUBFOLDER if _is_peft_model(self.llm) else None
        config.save_pretrained(directory)
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in self.heads.state_dict().items()}
        save_file(
            tensors,
            os.path.join(directory, HEADS_WEIGHTS_NAMES[0]),
            metadata={"format": "pt", "hf_decoding_version": config.hf_decoding_version},
        )
        generation_config = copy.deepcopy(self.generation_config)
        keep_custom_generation_keys(generation_config)
        generation_config.save_pretrained(directory)
        if config.lora_adapter:
            self.llm.save_pretrained(os.path.join(directory, _LORA_SUBFOLDER))
        if model_card:
            with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as handle:
                handle.write(build_model_card(config, repo_id=repo_id, head_bytes=self.heads.size_bytes()))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs: Any,
    ) -> Any:
        r"""Creates (if needed) the Hub repository `repo_id` and uploads the heads-only checkpoint in one commit.

        Returns:
            The `CommitInfo` of `huggingface_hub.HfApi.create_commit`.
        """
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            operations = []
            for root, _, files in os.walk(tmp):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    with open(full, "rb") as handle:
                        data = handle.read()
                    operations.append(
                        CommitOperationAdd(
                            path_in_repo=os.path.relpath(full, tmp).replace(os.sep, "/"), path_or_fileobj=data
                        )
                    )
            return api.create_commit(
                repo_id=repo_id,
                operations=operations,
                commit_message=commit_message or "Upload AutoDeco heads",
                revision=revision,
                create_pr=create_pr,
            )

    # ------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.llm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_config: AutoDecoLossConfig | None = None,
        generator: torch.Generator | None = None,
        train_temperature: bool = True,
        train_top_p: bool = True,
        **kwargs: Any,
    ) -> AutoDecoCausalLMOutput:
        r"""Base logits plus the heads' predictions; with `labels`, the AutoDeco training loss instead.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): tokens.
            attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*): padding mask.
            labels (`torch.LongTensor` of shape `(B, L)`, *optional*): `input_ids` with `-100` outside the completion;
                shifted inside. Returns the loss computed chunk by chunk over the supervised positions (no full
                `(B, L, V)` logits are materialised), and no logits.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0): as for the base (0 keeps all).
            loss_config ([`AutoDecoLossConfig`], *optional*): loss options (paper defaults otherwise).
            generator (`torch.Generator`, *optional*): draws the easy-token mask (a fixed seed when missing).
            train_temperature (`bool`), train_top_p (`bool`): which losses to compute.
            kwargs: passed to the base (`past_key_values`, `position_ids`, `use_cache`, ...).
        """
        if labels is not None:
            return self._loss_forward(
                input_ids,
                attention_mask,
                labels,
                loss_config or AutoDecoLossConfig(),
                generator,
                train_temperature,
                train_top_p,
                **kwargs,
            )
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        kwargs.pop("return_dict", None)
        with capture_lm_head_input(self.llm) as capture:
            out = self.llm(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = capture.pop()  # (B, K, H)
        predictions = self.heads(hidden, out.logits)
        return AutoDecoCausalLMOutput(
            logits=out.logits,
            temperature=predictions.temperature,
            top_p=predictions.top_p,
            **cache_output_fields(output_cache(out)),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )

    def _loss_forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor,
        loss_config: AutoDecoLossConfig,
        generator: torch.Generator | None,
        train_temperature: bool,
        train_top_p: bool,
        **kwargs: Any,
    ) -> AutoDecoCausalLMOutput:
        base_trains = any(p.requires_grad for p in self.llm.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and base_trains):
            hidden = base_hidden_states(self.llm, input_ids, attention_mask, **kwargs)  # (B, L, H)
        targets = labels[:, 1:]  # (B, L-1)
        selected = targets != -100
        hidden = hidden[:, :-1][selected]  # (N, H)
        targets = targets[selected]  # (N,)
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(0)
        uniform = torch.rand(targets.shape[0], generator=generator, device=generator.device)
        llm = self.llm

        def logits_fn(h: torch.Tensor, positions: slice) -> torch.Tensor:
            with torch.set_grad_enabled(torch.is_grad_enabled() and base_trains):
                return logits_from_hidden(llm, h)

        loss = chunked_autodeco_loss(
            self.heads,
            hidden,
            targets,
            logits_fn,
            loss_config,
            uniform.to(hidden.device),
            train_temperature,
            train_top_p,
        )
        return AutoDecoCausalLMOutput(
            loss=loss.loss, temperature_loss=loss.temperature_loss, top_p_loss=loss.top_p_loss
        )

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        decoding: str | None = _UNSET,
        **kwargs: Any,
    ) -> Any:
        r"""`generate` with `decoding="autodeco"` as the default.

        The base model's own `generate` does all of transformers' input preparation; the AutoDeco decoder then
        applies `T = T̂ · temperature` and `p = clamp(P̂ · top_p, 0, 1)` per row and per token (user values are
        multipliers, as in the official vLLM integration; they default to 1, i.e. the raw predictions).
        `temperature=0` (or `do_sample=False`) is greedy. The wrapper's default generation config samples with
        `top_k=0`; pass `top_k` to add a top-k cut.

        Args:
            inputs (`torch.Tensor`, *optional*): prompt token ids `(B, L)`, left padded.
            generation_config (`GenerationConfig`, *optional*): unset fields come from `model.generation_config`.
            decoding (`str`, *optional*, defaults to `"autodeco"`): another registered decoder runs on the base;
                `None` runs transformers' own decoding of the base (no heads).
            kwargs: generation flags, model inputs, `seed=`/`generator=`, `streamer`, `tokenizer`, ...

        Returns:
            `torch.LongTensor` `(B, L + new)`, or [`DecodingOutput`] with `return_dict_in_generate=True`
            (`out.autodeco.temperature` / `.top_p`: the values applied, `(B, new)`; `out.distortion`).
        """
        config = self._merged_generation_config(generation_config)
        kwargs = config.update(**kwargs)
        if decoding is _UNSET:
            decoding = getattr(config, "decoding", "autodeco")
        if hasattr(config, "decoding"):
            del config.decoding  # already resolved; keeps an `enable`d base from dispatching again
        if config.temperature is not None and config.temperature == 0:
            config.do_sample = False  # T_user = 0 -> greedy, as in the official vLLM integration
            config.temperature = 1.0
        if not config.do_sample and config.top_k == 0:
            config.top_k = None  # a sampling-only flag: transformers warns about it under greedy decoding
        base_generate = functools.partial(type(self.llm).generate, self.llm)
        if decoding is None:
            return base_generate(inputs, generation_config=config, **kwargs)
        decoder = get_decoder(decoding)
        if "autodeco_heads" in getattr(decoder, "decoder_arguments", ()):
            # The heads drive sampling: `autodeco` itself and every particle decoder (their proposal).
            decoder = functools.partial(decoder, autodeco_heads=self.heads)
        return generate_with_decoder(base_generate, decoder, self.llm, inputs, generation_config=config, **kwargs)

    def _merged_generation_config(self, generation_config: GenerationConfig | None) -> GenerationConfig:
        defaults = self.generation_config
        if generation_config is None:
            return copy.deepcopy(defaults)
        if not isinstance(generation_config, GenerationConfig):
            raise InvalidDecodingArgument(
                f"`generation_config` must be a transformers `GenerationConfig`, got {type(generation_config)!r}."
            )
        config = copy.deepcopy(generation_config)
        for key, value in defaults.to_dict().items():
            if key.startswith("_") or key == "transformers_version":
                continue
            if getattr(config, key, None) is None:
                setattr(config, key, value)
        return config


# --------------------------------------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------------------------------------


def _first_device(module: torch.nn.Module) -> torch.device | None:
    for parameter in module.parameters():
        return parameter.device
    return None


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is an optional extra
        return False
    return isinstance(model, PeftModel)


def check_base_fits(config: AutoDecoConfig, base: Any) -> None:
    """Raises [`IncompatibleCheckpointError`] when `base` does not fit the heads described by `config` (hidden size,
    then model type)."""
    size = base_hidden_size(base)
    if config.hidden_size is None:
        config.hidden_size = size
    if config.hidden_size != size:
        raise IncompatibleCheckpointError(
            f"The AutoDeco heads expect a base of hidden size {config.hidden_size} "
            f"({config.base_model_name_or_path or 'unknown base'}), but the base model has hidden size {size}. "
            "Fix: load the heads onto the base model they were trained on."
        )
    model_type = getattr(_text_config(base), "model_type", None)
    if config.base_model_type and model_type and config.base_model_type != model_type:
        raise IncompatibleCheckpointError(
            f"The AutoDeco heads were trained on a `{config.base_model_type}` model "
            f"({config.base_model_name_or_path or 'unknown base'}), but the base model is a `{model_type}`. "
            "Fix: load the heads onto the base model they were trained on."
        )


def _load_base(config: AutoDecoConfig, **base_kwargs: Any) -> PreTrainedModel:
    name = config.base_model_name_or_path
    if not name:
        raise IncompatibleCheckpointError(
            "The AutoDeco config names no base model (`base_model_name_or_path` is empty). "
            "Fix: pass `base_model=` (an already loaded causal LM) or `base_model_name_or_path=`."
        )
    if os.path.isabs(name) and not os.path.exists(name):
        raise IncompatibleCheckpointError(
            f"The AutoDeco config names the base `{name}`, a local path that does not exist here (official "
            "checkpoints record the training machine's path). Fix: pass `base_model=` or "
            "`base_model_name_or_path=<hub id>`."
        )
    logger.info("Loading the AutoDeco base model %s (revision %s)", name, config.base_model_revision)
    try:
        return AutoModelForCausalLM.from_pretrained(name, revision=config.base_model_revision, **base_kwargs)
    except OSError as err:
        raise IncompatibleCheckpointError(
            f"Could not load the AutoDeco base model `{name}`: {err}. Fix: pass `base_model=` or "
            "`base_model_name_or_path=`."
        ) from err


def _load_lora(base: Any, path: str, subfolder: str, hub: dict[str, Any]) -> Any:
    try:
        from peft import PeftModel
    except ImportError as err:  # pragma: no cover - peft is an optional extra
        raise ImportError(
            "This AutoDeco checkpoint holds a LoRA adapter of the base; loading it needs peft: "
            'pip install "hf-decoding[train]"'
        ) from err
    hub = dict(hub)
    prefix = hub.pop("subfolder", "") or ""
    sub = f"{prefix}/{subfolder}" if prefix else subfolder
    if os.path.isdir(path):  # peft ignores `subfolder` for local directories
        return PeftModel.from_pretrained(base, os.path.join(path, sub))
    return PeftModel.from_pretrained(base, path, subfolder=sub, **{k: v for k, v in hub.items() if v is not None})


def _resolve(path: str, filename: str, hub: dict[str, Any]) -> str | None:
    if os.path.isdir(path):
        candidate = os.path.join(path, hub.get("subfolder") or "", filename)
        return candidate if os.path.isfile(candidate) else None
    try:
        return cached_file(
            path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub,
        )
    except OSError:
        return None


def _load_head_tensors(path: str, hub: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Head tensors from `model.safetensors` / `autodeco_heads.safetensors`, or the shard of a merged checkpoint
    that holds them. Only safetensors are read."""
    heads_prefixes = ("temp_head.", "top_p_head.")
    for name in HEADS_WEIGHTS_NAMES:
        resolved = _resolve(path, name, hub)
        if resolved is None:
            continue
        state = _read_keys(resolved, lambda key: key.startswith(heads_prefixes))
        if state:
            return state
    index = _resolve(path, _INDEX_NAME, hub)
    if index is not None:
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map", {})
        shards = sorted({file for key, file in weight_map.items() if key.startswith(heads_prefixes)})
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            resolved = _resolve(path, shard, hub)
            if resolved is not None:
                state.update(_read_keys(resolved, lambda key: key.startswith(heads_prefixes)))
        if state:
            return state
    raise IncompatibleCheckpointError(
        f"No AutoDeco head tensors (`temp_head.*`, `top_p_head.*`) found in `{path}` (looked for "
        f"{', '.join(HEADS_WEIGHTS_NAMES)} and {_INDEX_NAME}). Fix: point to a directory written by "
        "`AutoDecoModelForCausalLM.save_pretrained` or an official AutoDeco heads checkpoint."
    )


def _read_keys(filename: str, keep: Any) -> dict[str, torch.Tensor]:
    try:
        with safe_open(filename, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if keep(key)}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise IncompatibleCheckpointError(
            f"`{filename}` is not a readable safetensors file ({err}); it is corrupted or truncated. Fix: save or "
            "download the checkpoint again (`force_download=True` for a Hub repository)."
        ) from err


# A Hub repo id: `name` or `namespace/name` (letters, digits, `-`, `_`, `.`), not starting with `.` or `-`.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def _check_source(path: str) -> None:
    """A path that can only be local (absolute, `./`, `~`, several `/`, ...) must exist as a directory."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise invalid_argument(
            "pretrained_model_name_or_path",
            path,
            "a directory or a Hub repo id",
            "It is a file; pass the directory that holds `config.json` and `model.safetensors`.",
        )
    if not _HUB_ID.fullmatch(path) or path.startswith("~"):
        raise invalid_argument(
            "pretrained_model_name_or_path",
            path,
            "an existing directory or a Hub repo id (`namespace/name`)",
            f"No directory `{os.path.abspath(os.path.expanduser(path))}` exists; check the path (save the heads "
            "there with `save_pretrained` first).",
        )


_REGISTERED = False


def register_auto_classes() -> None:
    """Registers `model_type="autodeco"` with `AutoConfig` and `AutoModelForCausalLM` (idempotent).

    After it, `AutoModelForCausalLM.from_pretrained(<autodeco dir>)` returns an [`AutoDecoModelForCausalLM`] and
    `pipeline("text-generation", model=<autodeco model>)` accepts it.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    AutoConfig.register("autodeco", AutoDecoConfig, exist_ok=True)
    AutoModelForCausalLM.register(AutoDecoConfig, AutoDecoModelForCausalLM, exist_ok=True)
    _REGISTERED = True
