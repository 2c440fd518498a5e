#!/usr/bin/env bash
# Set up a CPU-only environment in ./.venv: torch's CPU build first, then this package
# (editable) with the dev extra, every version taken from constraints.txt: the exact
# environment CI tests. The package itself only requires ranges (pyproject.toml).
# torch comes from PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu) as
# torch==<version>+cpu: a plain `pip install torch` on Linux resolves to the CUDA build with
# multi-GB nvidia-* packages. Where that index is unreachable (offline machines with a local
# mirror), the configured package index is used instead, with a note.
# Idempotent: a second run only checks that everything is installed.
# Environment: PYTHON (default python3), CSMOE_TORCH_INDEX (default: PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
index=${CSMOE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
torch_pin=$(sed -n 's/^torch==//p' constraints.txt)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if .venv/bin/python - "$index/torch/" <<'PY'
import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception:
    sys.exit(1)
PY
then
  # The +cpu build sorts above the plain version, and the configured index still serves the
  # dependencies at constraints.txt's versions.
  .venv/bin/python -m pip install --quiet -c constraints.txt --extra-index-url "$index" \
    "torch==$torch_pin+cpu"
else
  echo "setup_cpu.sh: note: $index is unreachable; installing torch==$torch_pin from the" \
       "configured package index (on Linux without a local mirror that may be the CUDA build)" >&2
  .venv/bin/python -m pip install --quiet -c constraints.txt "torch==$torch_pin"
fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "csmoe-megatron environment ready in $(pwd)/.venv"
