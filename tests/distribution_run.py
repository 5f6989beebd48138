"""Data-parallel sharpness-aware training against one device, in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/distribution_run.py
    KERAS_BACKEND=tensorflow python tests/distribution_run.py

Run by tests/test_distribution.py in a subprocess (the device count must be
fixed before the backend starts). Two devices: JAX's
`keras.distribution.DataParallel`, TensorFlow's `MirroredStrategy` over two
logical CPUs. Every case trains the same model from the same weights on the
same batches twice — on one device, then data-parallel — and prints one JSON
line per case: the largest absolute difference of the weights, of the
BatchNorm moving statistics, and the optimizer counters of both runs.

- global: `perturbation_groups=1` data-parallel equals one device on the same
  global batch (on TF with `BatchNormalization(synchronized=True)`, so that
  batch statistics are the global batch's there too);
- per-replica: `perturbation_groups="replica"` data-parallel equals
  `perturbation_groups=2` on one device (plain BatchNormalization: each replica
  normalises its own share, as each group does on one device).
"""

import json
import os
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
REPLICAS = 2

if BACKEND == "tensorflow":
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_sam  # noqa: E402

BATCH = 16
STEPS = 4


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, 6)).astype("float32")
    y = rng.integers(0, 3, size=BATCH * STEPS).astype("int32")
    return x, y


def build(synchronized_bn):
    keras.utils.set_random_seed(7)
    kwargs = {"synchronized": True} if synchronized_bn else {}
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.8, **kwargs)(h)
    h = keras.layers.Activation("relu")(h)
    return keras_sam.SAMModel(keras.Model(inputs, keras.layers.Dense(3)(h)))


METHODS = {
    "SAM": lambda groups: keras_sam.SAM(
        keras.optimizers.SGD(0.1, momentum=0.9), rho=0.2, perturbation_groups=groups),
    "SAM k=2 adaptive": lambda groups: keras_sam.SAM(
        keras.optimizers.SGD(0.1), rho=0.5, steps=2, adaptive=True, perturbation_groups=groups),
    "XSAM α=0.5": lambda groups: keras_sam.XSAM(
        keras.optimizers.SGD(0.1), alpha=0.5, perturbation_groups=groups),
    "XSAM search": lambda groups: keras_sam.XSAM(
        keras.optimizers.SGD(0.1), search_every=2, perturbation_groups=groups),
    "X-SAM": lambda groups: keras_sam.EigenCorrectedSAM(
        keras.optimizers.SGD(0.1), refresh_every=2, power_iterations=3,
        perturbation_groups=groups),
    "GSAM": lambda groups: keras_sam.GSAM(
        keras.optimizers.SGD(0.1), perturbation_groups=groups),
    "WSAM decoupled": lambda groups: keras_sam.WSAM(
        keras.optimizers.SGD(0.1, momentum=0.9), perturbation_groups=groups),
    "SAM gated": lambda groups: keras_sam.SAM(
        keras.optimizers.SGD(0.1, momentum=0.9), rho=0.2, perturbation_groups=groups,
        when=keras_sam.when.GradientNormGate()),
}
# The α search updates state from the step's own gradients, and AE-SAM's
# gate keeps one running mean for the whole batch: global only.
GLOBAL_ONLY = {"XSAM search", "SAM gated"}


def train(method, groups, synchronized_bn, distributed):
    x, y = data()
    scope = None
    if distributed and BACKEND == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    elif distributed:
        scope = mirrored_strategy().scope()
    try:
        if scope is not None:
            scope.__enter__()
        model = build(synchronized_bn)
        initial = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        model.compile(optimizer=METHODS[method](groups),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    finally:
        if scope is not None:
            scope.__exit__(None, None, None)
        keras.distribution.set_distribution(None)
    optimizer = model.optimizer
    counters = {"iterations": int(keras.ops.convert_to_numpy(optimizer.iterations)),
                "skipped_steps": int(keras.ops.convert_to_numpy(optimizer.skipped_steps))}
    if hasattr(optimizer, "searches"):
        counters["searches"] = int(keras.ops.convert_to_numpy(optimizer.searches))
        counters["alpha"] = float(keras.ops.convert_to_numpy(optimizer.alpha_value))
    if optimizer.eigen_correction is not None:
        counters["refreshes"] = int(keras.ops.convert_to_numpy(optimizer.eigen_correction.refreshes))
    devices = _devices(model.trainable_weights[0])
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    statistics = [keras.ops.convert_to_numpy(w) for w in model.non_trainable_weights]
    return weights, statistics, counters, history.history["loss"][-1], initial, devices


def _devices(variable):
    """How many devices hold the variable: proof that a run was distributed."""
    if BACKEND == "jax":
        return len(variable.value.sharding.device_set)
    return len(getattr(variable.value, "values", [variable.value]))


_STRATEGY = []


def mirrored_strategy():
    # One strategy per process: a second one's collectives can collide with
    # the first's (TF pairs them by instance keys).
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _STRATEGY[0]


def max_difference(a, b):
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))


def main():
    if BACKEND == "jax":
        import jax

        assert len(jax.devices()) == REPLICAS, jax.devices()
    for method in METHODS:
        modes = [("global", 1, 1)]
        if method not in GLOBAL_ONLY:
            modes.append(("per-replica", "replica", REPLICAS))
        for mode, groups, single_groups in modes:
            synchronized = mode == "global" and BACKEND == "tensorflow"
            one = train(method, single_groups, synchronized, distributed=False)
            many = train(method, groups, synchronized, distributed=True)
            print(json.dumps({
                "method": method,
                "mode": mode,
                "weights": max_difference(one[0], many[0]),
                # How far training moved the weights: a difference of 0
                # between runs means something only if this is not.
                "moved": max_difference(one[0], one[4]),
                "statistics": max_difference(one[1], many[1]),
                "devices": [one[5], many[5]],
                "single": one[2],
                "distributed": many[2],
                "loss": [one[3], many[3]],
            }), flush=True)


if __name__ == "__main__":
    main()
