#!/usr/bin/env bash
# Creates .venv-low with the lowest declared transformers and huggingface-hub (read from pyproject.toml) installed
# exactly, beside the CPU torch and the test extra; prints the versions it resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
read -r transformers_min hub_min < <("$python_bin" - <<'PY'
import re
text = open("pyproject.toml", encoding="utf-8").read()
deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
def lowest(name):
    match = re.search(rf'"{name}\s*>=\s*([\w.]+)', deps.replace("-", "_"))
    if match is None:
        raise SystemExit(f"no lower bound declared for {name}")
    return match.group(1)
print(lowest("transformers"), lowest("huggingface_hub"))
PY
)
if [ ! -x .venv-low/bin/python ]; then
  "$python_bin" -m venv .venv-low
fi
py=.venv-low/bin/python
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==2.13.0" \
    || "$py" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu \
    || "$py" -m pip install --quiet torch
fi
"$py" -m pip install --quiet -e ".[test]" "transformers==${transformers_min}" "huggingface_hub==${hub_min}"
"$py" scripts/print_versions.py "lower bound"
