# Shared by the check scripts in this folder (sourced, not run).

# The engine tests: the private Keras members, the training step and the
# state it carries, SAM's math through it, the backends' gradients and HVPs,
# mixed precision (Keras' LossScaleOptimizer). The other methods' math does
# not touch Keras beyond the step (it runs in the main pass); neither do the
# diagnostics, examples, benchmarks, conformance zoo or multi-device runs
# (to keep .ci/run's second pass short).
ENGINE_AND_METHOD_TESTS=(
    tests/test_keras_private.py
    tests/training/test_models.py
    tests/test_stateless.py
    tests/optimizers/test_sam.py
    tests/backend
    tests/test_mixed_precision.py
)

# fresh_venv DIR: a new, empty virtual environment at DIR, activated.
fresh_venv() {
    python3 -m venv --clear "$1"
    # shellcheck disable=SC1091
    . "$1/bin/activate"
}

# print_versions: the versions that matter, one line.
print_versions() {
    python - <<'PY'
from importlib import metadata
names = ["keras", "keras-nightly", "tensorflow-cpu", "tf-nightly-cpu", "jax", "torch", "numpy"]
found = []
for name in names:
    try:
        found.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
print("versions: " + " ".join(found))
PY
}
