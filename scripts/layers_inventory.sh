#!/usr/bin/env bash
# docs/layers.md: every Keras layer's status under keras_sam on each backend,
# recorded by tests/conformance/test_every_layer.py (one backend after the
# other; a failing layer is recorded, and listed, as a difference).
# Usage: bash scripts/layers_inventory.sh
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for backend in tensorflow jax torch; do
    KERAS_BACKEND=$backend KERAS_SAM_LAYERS_RECORD="$work/$backend.jsonl" \
        python -m pytest tests/conformance/test_every_layer.py -q -p no:cacheprovider \
        -W ignore | tail -1
done
python -m tests.conformance.every_layer "$work"/*.jsonl > docs/layers.md
echo "docs/layers.md written"
