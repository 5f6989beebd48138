#!/usr/bin/env bash
# The engine and method tests on the oldest Keras keras_sam supports (3.10.0)
# with the TensorFlow its extra then resolves to (2.20, the first that requires
# keras>=3.10), on JAX and TensorFlow, in a virtual environment of its own.
# Part of .ci/run. Usage: bash scripts/check_oldest_keras.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
start=$(date +%s)
fresh_venv "${TMPDIR:-/tmp}/keras_sam_oldest_keras_venv"
pip install -q "keras==3.10.0" -e ".[tensorflow,jax]" pytest
print_versions
echo "oldest-Keras install: $(( $(date +%s) - start )) s"
status=0
python tests/run_all_backends.py --backends=jax,tensorflow --parallel \
    "${ENGINE_AND_METHOD_TESTS[@]}" "$@" || status=$?
echo "oldest-Keras pass (install + tests): $(( $(date +%s) - start )) s"
exit "$status"
