#!/usr/bin/env bash
# Set up a CPU-only environment in ./.venv: torch's CPU build first (a plain `pip install torch`
# would pull a multi-GB CUDA build), then this package (editable) with the dev extra, every
# version taken from constraints.txt: the exact environment CI tests. The package itself only
# requires ranges (pyproject.toml).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "csmoe-megatron environment ready in $(pwd)/.venv"
