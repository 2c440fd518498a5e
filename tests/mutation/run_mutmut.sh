#!/usr/bin/env bash
# Mutation testing of the CompeteSMoE maths (not part of CI; see docs/testing.md).
#
#   bash tests/mutation/run_mutmut.sh                                # all four files
#   bash tests/mutation/run_mutmut.sh 'csmoe_megatron.moe.losses*'   # one file's mutants
#
# mutmut (pip install -e ".[mutation]") mutates moe/affinity.py, moe/losses.py,
# moe/schedule.py and moe/winners_combine.py and runs only the fast single-process unit tests
# against each mutant. It works in a scratch copy ($MUTMUT_WORKDIR, default
# ${TMPDIR:-/tmp}/csmoe-mutmut) so that its config and its mutants/ folder never touch the
# checkout; `cd` there and run `mutmut show NAME` to see a mutant.
set -euo pipefail
repo=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
python=${PYTHON:-$repo/.venv/bin/python}
work=${MUTMUT_WORKDIR:-${TMPDIR:-/tmp}/csmoe-mutmut}
rm -rf "$work"
mkdir -p "$work"
cp -r "$repo/csmoe_megatron" "$repo/tests" "$repo/pyproject.toml" "$work/"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
# test_subprocess_agrees imports the unmutated package in a child process: it would "kill"
# every schedule mutant by disagreement alone, so it is left out.
# forkserver: workers are forked from a process that has not run the tests (plain fork would
# inherit torch's threads and the gloo group of the single-rank layer tests, and hang).
cat > "$work/setup.cfg" <<'CFG'
[mutmut]
source_paths = csmoe_megatron
process_isolation = forkserver
only_mutate =
    csmoe_megatron/moe/affinity.py
    csmoe_megatron/moe/losses.py
    csmoe_megatron/moe/schedule.py
    csmoe_megatron/moe/winners_combine.py
pytest_add_cli_args_test_selection =
    tests/moe/test_affinity.py
    tests/moe/test_moe_losses.py
    tests/moe/test_competition_schedule.py
    tests/moe/test_competition_edge_cases.py
    tests/moe/test_winners_combine_single_rank.py
pytest_add_cli_args =
    -p
    no:cacheprovider
    --deselect
    tests/moe/test_competition_schedule.py::test_subprocess_agrees
CFG
cd "$work"
export OMP_NUM_THREADS=1
"$python" -m mutmut run "$@"
"$python" -m mutmut results
echo "mutmut work folder: $work"
