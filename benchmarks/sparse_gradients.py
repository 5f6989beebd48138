"""Sparse embedding gradients on TensorFlow: densified (keras_sam) versus a sparse path.

    python -m benchmarks.sparse_gradients                 # 50k × 128 table, batch 64 × 128 ids
    python -m benchmarks.sparse_gradients --quick         # smoke run (small table, few steps)
    python -m benchmarks.sparse_gradients --vocab 200000 --steps 40

TensorFlow hands the gradient of an `Embedding` table as `IndexedSlices`: one
row per looked-up id, repeats included. keras_sam converts it to a dense
tensor at the backend boundary (`keras_sam/backend/tensorflow.py`), so every
method sums repeated rows once. The alternative is a sparse path that keeps
the rows: deduplicate them (`tf.unique` + segment sum) before every norm and
inner product, perturb the table by a scatter, and hand the inner optimizer
`IndexedSlices`. This script measures both, on a text classifier
(Embedding(vocab, dim) → mean over the sequence → Dense(2); token ids drawn
from a Zipf law, so a batch repeats ids as real text does), TF graph mode
(`tf.function`), SGD with momentum 0.9 as the inner optimizer:

- `inner`: Keras' own train step (through `SAMModel` with the plain SGD);
- `SAM (keras_sam)`: `keras_sam.SAM`, the shipped densified path;
- `SAM dense (by hand)` / `SAM sparse (by hand)`: the same SAM step written
  directly with a `GradientTape`, differing only in the gradient's form, so
  that their ratio is the cost of the representation alone.

Each row runs in its own process (one thread) so that its peak resident
memory (`ru_maxrss`) is its own; `Δ peak` is that peak minus the resident
memory after building the model and the data, before the first step (the
tracing of the step is included in both). Step time: the median over
`--steps` timed calls of the compiled step after 3 warm-up calls.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import common


def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def make_data(args):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.2, size=(args.batch, args.length)), args.vocab) - 1
    labels = (np.arange(args.batch) % 2).astype("int32")
    return ids.astype("int32"), labels


def build_model(keras, args):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((args.length,), dtype="int32"),
        keras.layers.Embedding(args.vocab, args.dim),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(2),
    ])


def keras_step(args, method):
    """`fit`'s compiled train function, plain SGD (`inner`) or keras_sam.SAM."""
    import keras

    import keras_sam

    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    model = keras_sam.SAMModel(build_model(keras, args))
    optimizer = keras_sam.SAM(sgd, diagnostics=False) if method == "SAM" else sgd
    model.compile(optimizer=optimizer, jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids, labels = make_data(args)
    data = (keras.ops.convert_to_tensor(ids), keras.ops.convert_to_tensor(labels))
    model.make_train_function()
    train_function = model.train_function
    return lambda: train_function(iter([data]))


def _dedup(slices):
    """The rows of `IndexedSlices` with repeated ids summed: (unique ids, rows)."""
    import tensorflow as tf

    unique, position = tf.unique(slices.indices)
    rows = tf.math.unsorted_segment_sum(slices.values, position, tf.shape(unique)[0])
    return unique, rows


def hand_step(args, sparse):
    """One SAM step (ρ = 0.05) written with a GradientTape, inner SGD(0.1, 0.9)."""
    import keras
    import tensorflow as tf

    model = build_model(keras, args)
    model.build((None, args.length))
    variables = model.trainable_variables
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    ids, labels = (tf.constant(a) for a in make_data(args))
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def gradients(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            logits = model.stateless_call(values, [], ids)[0]
            loss = loss_object(labels, logits)
        return tape.gradient(loss, values)

    def as_rows(grads):
        # Sparse: (ids, summed rows) for the table; dense tensors otherwise.
        return [_dedup(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def squared_norm(grads):
        return tf.add_n([tf.reduce_sum(tf.square(g[1] if isinstance(g, tuple) else g))
                         for g in grads])

    @tf.function(jit_compile=False)
    def step():
        values = [tf.convert_to_tensor(v) for v in variables]
        grads = gradients(values)
        if sparse:
            grads = as_rows(grads)
        else:
            grads = [tf.convert_to_tensor(g) for g in grads]
        scale = 0.05 / (tf.sqrt(squared_norm(grads)) + 1e-12)
        perturbed = []
        for value, g in zip(values, grads):
            if isinstance(g, tuple):
                perturbed.append(tf.tensor_scatter_nd_add(value, g[0][:, None], g[1] * scale))
            else:
                perturbed.append(value + g * scale)
        direction = gradients(perturbed)
        if not sparse:
            direction = [tf.convert_to_tensor(g) for g in direction]
        optimizer.apply(direction, variables)
        return scale

    return step


def worker(args):
    common.limit_threads("tensorflow")
    import tensorflow as tf

    if args.worker in ("inner", "SAM (keras_sam)"):
        step = keras_step(args, "inner" if args.worker == "inner" else "SAM")
    else:
        step = hand_step(args, sparse=args.worker.startswith("SAM sparse"))
    before = rss_mb()
    for _ in range(3):
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, step())
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, step())
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"ms": 1000 * times[len(times) // 2], "peak": peak_rss_mb(),
                      "delta": peak_rss_mb() - before}))


ROWS = ("inner", "SAM (keras_sam)", "SAM dense (by hand)", "SAM sparse (by hand)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small table, 5 steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.dim, args.length, args.steps = 2000, 16, 16, 5
    if args.worker:
        return worker(args)
    forwarded = ["--vocab", str(args.vocab), "--dim", str(args.dim), "--batch", str(args.batch),
                 "--length", str(args.length), "--steps", str(args.steps)]
    env = common.single_thread_env(dict(os.environ, KERAS_BACKEND="tensorflow"))
    env["PYTHONPATH"] = os.pathsep.join([common.REPO, env.get("PYTHONPATH", "")])
    results = {}
    for row in ROWS:
        common.log(f"{row} ...")
        out = subprocess.run([sys.executable, "-m", __spec__.name, *forwarded, "--worker", row],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{row} failed:\n{out.stderr[-3000:]}")
        results[row] = json.loads(out.stdout.strip().splitlines()[-1])
    ids, _ = make_data(args)
    distinct = len(set(ids.ravel().tolist()))
    print(f"TensorFlow graph mode, Embedding({args.vocab}, {args.dim}), batch {args.batch} × "
          f"{args.length} ids ({distinct} distinct), one thread, {args.steps} timed steps\n")
    print("| step | ms/step | × inner | peak RSS (MB) | Δ peak (MB) |")
    print("|---|---:|---:|---:|---:|")
    inner = results["inner"]["ms"]
    for row in ROWS:
        r = results[row]
        print(f"| {row} | {r['ms']:.1f} | {r['ms'] / inner:.2f} | {r['peak']:.0f} | {r['delta']:.0f} |")
    dense, sparse = results["SAM dense (by hand)"], results["SAM sparse (by hand)"]
    print(f"\nsparse / dense (by hand): time {sparse['ms'] / dense['ms']:.2f}, "
          f"Δ peak {sparse['delta'] / max(dense['delta'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
