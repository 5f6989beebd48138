"""Time of one Hessian-vector product versus one gradient, per backend.

    python -m benchmarks.hvp_time                    # all backends (~2 min)
    python -m benchmarks.hvp_time --backends jax --repeats 30

The model is the small CIFAR-style CNN of `common.py` (Conv-BN-ReLU ×4,
~67k parameters), batch 128 of 32×32×3 inputs, inference mode (as
`keras_sam.hessian` uses by default). Timed on one fixed batch, after warm-up,
the variants interleaved in rounds; reported: median ms per call and the ratio
to the gradient.

- `grad`: the loss and gradient, compiled as `keras_sam.hessian` compiles it
  (`jax.jit`; `tf.function`; torch eager);
- `hvp`: `backend.hvp` (forward-over-reverse), compiled the same way (what a
  power iteration or Hutchinson sample costs);
- `hvp` is forward-over-reverse on JAX and TF, double backward on torch
  (eager); the alternatives, to justify these choices: reverse-over-reverse
  (`rev-rev`: `grad` of `<grad, v>` on JAX, nested tapes on TF),
  forward-over-reverse on torch (`fwd-rev`: `torch.func.jvp` of
  `torch.func.grad`, what `backend.hvp` uses under `torch.compile`), and the
  uncompiled HVP on JAX/TF (`hvp eager`);
- `power iter`: one power-iteration step through `hessian.Curvature`
  (product + Rayleigh quotient + normalisation, host sync included);
- `first call`: the first `Curvature.hvp` (trace + compile), once.

Each backend runs in its own subprocess with `--threads` threads.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import build_cnn

BACKENDS = ("tensorflow", "jax", "torch")
MARKER = "@@HVP_TIME_JSON@@"


def _ready(tree_of_tensors):
    """Blocks until the result is computed (JAX dispatches asynchronously)."""
    import keras

    for t in keras.tree.flatten(tree_of_tensors):
        keras.ops.convert_to_numpy(t)


def child(args):
    import keras
    import numpy as np
    from keras import ops

    from keras_sam import backend, hessian
    from keras_sam import vectors as vec

    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif name == "torch":
        import torch

        torch.set_num_threads(args.threads)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.batch_size)
    model = build_cnn(keras)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    num_params = model.count_params()

    start = time.perf_counter()
    curvature = hessian.Curvature(model, x, y)
    v = curvature._random_vectors(rng, "gaussian")
    _ready(curvature.hvp(v))
    first_call = time.perf_counter() - start

    (bx, by, bw), = curvature.batches
    params, nt, mv = curvature.params, curvature._non_trainable, curvature._metrics_values
    loss_fn = hessian.make_loss_fn(model, x, y)

    variants = {
        "grad": lambda: curvature._grad(params, nt, mv, bx, by, bw),
        "hvp": lambda: curvature._hvp(params, nt, mv, v, bx, by, bw),
    }

    if name == "jax":
        import jax

        def rev_rev(p, vs):
            g = lambda q: jax.grad(loss_fn)(q)  # noqa: E731
            return jax.grad(lambda q: vec.dot(g(q), vs))(p)

        rev_rev = jax.jit(rev_rev)
        variants["rev-rev"] = lambda: rev_rev(params, v)
        variants["hvp eager"] = lambda: backend.hvp(loss_fn, params, v)
    elif name == "tensorflow":
        import tensorflow as tf

        @tf.function
        def rev_rev(p, vs):
            with tf.GradientTape(watch_accessed_variables=False) as outer:
                outer.watch(p)
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(p)
                    loss = loss_fn(p)
                g = inner.gradient(loss, p)
                gv = vec.dot(g, vs)
            return outer.gradient(gv, p)

        variants["rev-rev"] = lambda: rev_rev(params, v)
        variants["hvp eager"] = lambda: backend.hvp(loss_fn, params, v)
    else:
        from keras_sam.backend import torch as torch_backend

        # `backend.hvp` is double backward in eager mode; the alternative:
        variants["fwd-rev"] = lambda: torch_backend._forward_over_reverse(loss_fn, params, v)

    def power_step():
        hv = curvature.hvp(v)
        float(ops.convert_to_numpy(vec.dot(hv, v)))
        n = float(ops.convert_to_numpy(vec.norm(hv)))
        return vec.scale(hv, 1.0 / n)

    variants["power iter"] = power_step

    for fn in variants.values():  # warm-up (tracing, compilation)
        for _ in range(2):
            _ready(fn())
    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            _ready(variants[k]())
            times[k].append(time.perf_counter() - start)
    result = {
        "backend": name,
        "params": num_params,
        "first_call_s": first_call,
        "median_ms": {k: 1e3 * statistics.median(t) for k, t in times.items()},
    }
    print(MARKER + json.dumps(result))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(args)
    for name in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=name, TF_CPP_MIN_LOG_LEVEL="3",
                   JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[var] = str(args.threads)
        command = [sys.executable, "-m", __spec__.name, "--child",
                   f"--repeats={args.repeats}", f"--batch-size={args.batch_size}",
                   f"--threads={args.threads}"]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith(MARKER)), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[len(MARKER):])
        ms = r["median_ms"]
        print(f"{name} ({r['params']} params, batch {args.batch_size}, first HVP call "
              f"{r['first_call_s']:.2f} s incl. trace/compile):")
        for k, t in ms.items():
            print(f"  {k:<11} {t:8.1f} ms   {t / ms['grad']:.2f}x grad")


if __name__ == "__main__":
    main()
