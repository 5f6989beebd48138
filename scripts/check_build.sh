#!/usr/bin/env bash
# `python -m build` gives an sdist and a wheel; each installs into a fresh
# virtual environment (with the tensorflow and jax extras and torch==2.13.0)
# and passes scripts/smoke_test.py on the three backends.
# Usage: bash scripts/check_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
root="$PWD"
work="${TMPDIR:-/tmp}/keras_sam_build_check"
rm -rf "$work" && mkdir -p "$work/dist"
fresh_venv "$work/build_venv"
pip install -q build
python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
deactivate
ls -l "$work/dist"
status=0
for artifact in "$work"/dist/*.tar.gz "$work"/dist/*.whl; do
    echo "== $(basename "$artifact")"
    fresh_venv "$work/venv"
    pip install -q "torch==2.13.0" "keras-sam[tensorflow,jax] @ file://$artifact"
    print_versions
    # From an empty folder: keras_sam must come from the installation.
    for backend in tensorflow jax torch; do
        (cd "$work" && KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=3 \
            python "$root/scripts/smoke_test.py" 2>&1 | grep -E "^smoke|Error|error" ) \
            || status=1
    done
    deactivate
done
[ "$status" = 0 ] && echo "build check: ok" || echo "build check: FAILED"
exit "$status"
