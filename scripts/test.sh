#!/usr/bin/env bash
# One command: install everything into .venv and run the whole test suite (unit tests and `real` SmolLM2 tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "test"
.venv/bin/ruff check hf_decoding tests benchmarks examples
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
