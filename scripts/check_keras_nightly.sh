#!/usr/bin/env bash
# keras-nightly with tf-nightly-cpu, jax and torch 2.13 (CPU), in a fresh
# virtual environment: runs the tests on the three backends and prints a
# summary per backend. For maintainers, by hand: NOT part of .ci/run (a change
# in nightly must not block work).
#
# Usage: bash scripts/check_keras_nightly.sh [--engine] [--parallel] [pytest args]
#   --engine:   only the engine and method tests (scripts/common.sh), not the
#               whole suite;
#   --parallel: the three backends' pytest processes side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
tests=()
runner_options=()
if [ "${1:-}" = "--engine" ]; then
    tests=("${ENGINE_AND_METHOD_TESTS[@]}")
    shift
fi
if [ "${1:-}" = "--parallel" ]; then
    runner_options=(--parallel)
    shift
fi
start=$(date +%s)
fresh_venv "${TMPDIR:-/tmp}/keras_sam_nightly_venv"
pip install -q --pre keras-nightly tf-nightly-cpu jax "torch==2.13.0" pytest scikit-learn
# --no-deps: keras_sam requires the `keras` distribution, which would install
# over keras-nightly's files.
pip install -q --no-deps -e .
print_versions
echo "nightly install: $(( $(date +%s) - start )) s"
status=0
python tests/run_all_backends.py "${runner_options[@]}" "${tests[@]}" "$@" | tee "${TMPDIR:-/tmp}/keras_sam_nightly.log" \
    || status=$?
echo
echo "summary (keras-nightly, $(date -u +%Y-%m-%d)):"
grep -E "^=== [a-z]+: exit|^(all backends|[a-z,]+): [0-9]+ passed" "${TMPDIR:-/tmp}/keras_sam_nightly.log"
grep -E "^(FAILED|ERROR) " "${TMPDIR:-/tmp}/keras_sam_nightly.log" || true
exit "$status"
