#!/usr/bin/env bash
# CI, after the test suite: the package as a user installs it. Build the wheel, install it (not
# editable) into a fresh venv beside the CPU torch, with constraints.txt, and from an empty
# directory run its entry points: --version, --list-configs, csmoe-tokenizer --help and a short
# 2-rank cpu_tiny run. The run goes through the installed venv's `torchrun -m
# csmoe_megatron.train` (csmoe-train starts one process; cpu_tiny's EP=2 needs two ranks), on
# the default corpus prepared afresh into a temporary cache (tokenizer workers included).
# Needs the project's .venv (launch/setup_cpu.sh) to build the wheel.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src" "$tmp/empty"

# A copy of the sources, so that no stale build/ of an earlier layout slips into the wheel.
tar -C "$repo" -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=./runs --exclude=__pycache__ . | tar -C "$tmp/src" -xf -
"$repo/.venv/bin/python" -m pip wheel --quiet --no-deps -w "$tmp/dist" "$tmp/src"
wheel=$(echo "$tmp"/dist/csmoe_megatron-*.whl)

"$repo/.venv/bin/python" - "$wheel" <<'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names}
problems = [f"top-level {top}/ in the wheel" for top in ("tokenizer", "tests", "configs") if top in tops]
problems += [f"missing {n}" for n in ("csmoe_tokenizer/cli.py", "csmoe_megatron/configs/cpu_tiny.yaml")
             if n not in names]
if problems:
    sys.exit(f"wheel_install: {sys.argv[1]}: " + "; ".join(problems))
print(f"wheel_install: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, top level {sorted(tops)}")
EOF

"$PYTHON" -m venv "$tmp/venv"
venv=$tmp/venv/bin
"$venv/python" -m pip install --quiet -c "$repo/constraints.txt" "torch==2.13.0"
"$venv/python" -m pip install --quiet -c "$repo/constraints.txt" "$wheel"

cd "$tmp/empty"
"$venv/csmoe-train" --version
"$venv/csmoe-train" --list-configs
"$venv/csmoe-tokenizer" --help >/dev/null
CSMOE_CACHE_DIR="$tmp/cache" OMP_NUM_THREADS=1 "$venv/torchrun" --standalone --nproc-per-node 2 \
    -m csmoe_megatron.train --config cpu_tiny train.steps=4 train.lr_warmup_steps=1 \
    train.eval_interval=2 logging.interval=1 logging.tensorboard=false \
    logging.routing_images_interval=0 checkpoint.save_interval=0 "run.dir=$tmp/run"
test -s "$tmp/run/metrics.jsonl"
test -z "$(ls -A "$tmp/empty")"  # nothing written to the working directory
echo "wheel_install: OK"
