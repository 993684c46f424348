#!/usr/bin/env bash
# Create .venv with the tested stack pinned in constraints.txt and otxlite installed (editable) in it.
# Re-running is cheap: it reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.otxlite-installed
if [ -f "$stamp" ] && [ "$stamp" -nt constraints.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "Setting up .venv with $($python --version) (torch with CUDA libraries: a few minutes the first time)..."
"$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
PIP_CONSTRAINT=constraints.txt .venv/bin/python -m pip install -q -e ".[test]"
touch "$stamp"
