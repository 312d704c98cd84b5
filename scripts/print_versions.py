"""Prints the versions a test run resolved: `python scripts/print_versions.py <label>`."""

import importlib.metadata
import platform
import sys

label = sys.argv[1] if len(sys.argv) > 1 else "resolved"
versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "huggingface-hub")}
print(f"== {label}: python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
