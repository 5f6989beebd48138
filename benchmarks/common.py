"""What the benchmark scripts share: the small CIFAR CNNs, CIFAR-10 subsets, the methods,
thread limits.

Imported by the benchmark modules as `benchmarks.common`. Nothing here imports
Keras or a backend at import time: a benchmark's parent process can use it
before choosing its backend.

- `build_cnn(keras)`: Conv32-BN-ReLU ×2, max-pool, Conv64-BN-ReLU, max-pool,
  Conv64-BN-ReLU, global average pool, Dense 10 logits (66,794 parameters,
  66,410 of them trainable; 32×32×3 inputs) — the model of `step_time.py`,
  `hvp_time.py` and `eigenvector_quality.py`.
- `build_vgg_style_cnn(keras)`: Conv-BN-ReLU stages of 32, 64, 128, 256
  channels with max-pooling (392,426 parameters) — the model of
  `generalization.py` and `sharpness.py`, which fits a few thousand images
  quickly; `numpy_glorot_uniform`: its seeded NumPy initializer.
- `load_cifar10_train`, `load_cifar10_test`, `balanced_subset`, `normalize`,
  `load_cifar10_subset`, `epoch_orders`: the local CIFAR-10 copy
  (`cifar10_train_part{1,2}.npz`, `cifar10_test.npz`, official order; the format
  is in benchmarks/README.md) as NumPy arrays, and per-seed batch orders.
- `SUBSET_PROTOCOL`: the training protocol of `generalization.py` and
  `sharpness.py`; `METHODS`, `make_optimizer`, `method_label`,
  `method_description`: the methods they compare, with their defaults.
- `single_thread_env()`, `limit_threads(backend)`: one thread per process
  (environment for a child process; the backend's own pools in-process).
- `command_line(argv)`: how a run started, for its report.
- The timing harness of `step_time.py`, `peers.py` and `profile_peers.py`:
  `Runner` (one compiled train function on a fixed batch, as `fit` calls it),
  `time_interleaved` (the variants' calls in rotating order, round after
  round, garbage collection paused) and `call_stats`; `ForeignLoad` and
  `wait_until_quiet` (the CPU time other processes use); `JIT_MODES`,
  `JIT_LABELS`, `configure_threads`, `child_env`, `he_uniform` and the
  version and machine strings of the reports.
"""

import gc
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(REPO), "shared", "data")
TRAIN_FILES = ("cifar10_train_part1.npz", "cifar10_train_part2.npz")
TEST_FILE = "cifar10_test.npz"
TRAIN_PART_SIZE = 25_000  # images per train part file

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
BACKENDS = ("jax", "tensorflow", "torch")

# The CIFAR-10 subset protocol of generalization.py and sharpness.py: small
# enough that SGD fits its training set within the budget (sharpness-aware
# methods are expected to help only then), measured in generalization.py.
SUBSET_PROTOCOL = dict(train_size=2000, test_size=10_000, epochs=16, batch_size=32, lr=0.05,
                       momentum=0.9, weight_decay=5e-4)


# -- model ------------------------------------------------------------------------------
def log(message):
    """Progress on stderr (stdout carries the markdown report)."""
    print(message, file=sys.stderr, flush=True)


def build_cnn(keras, l2=0.0, name="cnn"):
    """Conv32-BN-ReLU, Conv32-BN-ReLU, pool, Conv64-BN-ReLU, pool,
    Conv64-BN-ReLU, global average pool, Dense 10 (logits): 66,794
    parameters (66,410 trainable, 384 BatchNorm moving statistics). Keras'
    default initializers (Glorot uniform kernels), so the initial weights
    follow `keras.utils.set_random_seed`.

    `l2` > 0 puts `keras.regularizers.L2(l2)` on the convolution and dense
    kernels (gradient 2·l2·θ, added to the loss; BatchNorm and the bias are not
    regularized).
    """
    layers = keras.layers
    reg = keras.regularizers.L2(l2) if l2 > 0 else None

    def conv_bn_relu(filters):
        return [
            layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg),
            layers.BatchNormalization(),
            layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            *conv_bn_relu(32),
            *conv_bn_relu(32),
            layers.MaxPooling2D(),
            *conv_bn_relu(64),
            layers.MaxPooling2D(),
            *conv_bn_relu(64),
            layers.GlobalAveragePooling2D(),
            layers.Dense(NUM_CLASSES, kernel_regularizer=reg),
        ],
        name=name,
    )


def numpy_glorot_uniform(keras, seed):
    """A Glorot-uniform kernel initializer (Keras' default: U(±sqrt(6 / (fan_in +
    fan_out))), fans × the receptive field) drawing from ONE NumPy generator
    seeded with `seed`, kernel after kernel: the same initial weights on every
    backend, without Keras' global RNG — so no TensorFlow import (which
    `keras.utils.set_random_seed` does) and, on JAX, no compilation of the
    random-number generator per kernel shape (~4 s of a run's start-up here)."""
    import math

    import numpy as np

    rng = np.random.default_rng(seed)

    class NumpyGlorotUniform(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
            fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, size=tuple(shape))
            return keras.ops.convert_to_tensor(value, dtype=dtype or "float32")

    return NumpyGlorotUniform()


def build_vgg_style_cnn(keras, filters=(32, 64, 128, 256), l2=0.0, seed=None,
                        name="vgg_style_cnn"):
    """Conv-BN-ReLU stages of `filters` channels (3×3, no bias), a 2×2 max-pool
    after each but the last (32→16→8→4 pixels), global average pool, Dense 10
    (logits): 392,426 parameters with the default filters (391,466 trainable).

    The model of `generalization.py` and `sharpness.py`: it fits a few thousand
    CIFAR-10 images in ~20 epochs (`build_cnn` reached only ~90 % training
    accuracy on 1,000 images in 28 epochs) at ~0.75× `build_cnn`'s cost per
    image (TensorFlow graph, one thread), since only its first convolution
    runs at 32×32. `l2` as in `build_cnn`. `seed`: the kernels are drawn by
    `numpy_glorot_uniform(keras, seed)` (None: Keras' own Glorot uniform,
    from its global RNG).
    """
    layers = keras.layers
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    init = "glorot_uniform" if seed is None else numpy_glorot_uniform(keras, seed)
    stack = [keras.Input(IMAGE_SHAPE)]
    for i, f in enumerate(filters):
        stack += [
            layers.Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer=init,
                          kernel_regularizer=reg),
            layers.BatchNormalization(),
            layers.ReLU(),
        ]
        if i < len(filters) - 1:
            stack.append(layers.MaxPooling2D())
    stack += [layers.GlobalAveragePooling2D(),
              layers.Dense(NUM_CLASSES, kernel_initializer=init, kernel_regularizer=reg)]
    return keras.Sequential(stack, name=name)


# -- data -------------------------------------------------------------------------------
def require_files(data_dir, names):
    """The paths of `names` in `data_dir`; exits with a message naming what is missing."""
    paths = [os.path.join(data_dir, name) for name in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        sys.exit(
            f"error: CIFAR-10 not found: {', '.join(missing)} does not exist.\n"
            f"Pass --data-dir DIR, a folder holding {', '.join(names)} "
            "(uint8 NHWC images, int64 labels, official order; see benchmarks/README.md)."
        )
    return paths


def _load(path, x_key, y_key):
    import numpy as np

    with np.load(path) as archive:
        if x_key not in archive or y_key not in archive:
            sys.exit(f"error: {path} lacks the arrays {x_key} / {y_key}.")
        return archive[x_key], archive[y_key]


def load_cifar10_train(data_dir, first=None):
    """(x uint8 (N,32,32,3), y int64 (N,)): the training images in official order.

    `first`: only the first `first` images are needed (reads part 2 only if
    more than 25,000 are).
    """
    import numpy as np

    names = TRAIN_FILES[:1] if first is not None and first <= TRAIN_PART_SIZE else TRAIN_FILES
    parts = [_load(p, "x_train", "y_train") for p in require_files(data_dir, names)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return (x, y) if first is None else (x[:first], y[:first])


def load_cifar10_test(data_dir):
    """(x uint8 (10000,32,32,3), y int64 (10000,)): the test set in official order."""
    (path,) = require_files(data_dir, (TEST_FILE,))
    return _load(path, "x_test", "y_test")


def balanced_subset(y, size):
    """Indices of the first `size // 10` images of each class (official order),
    sorted: a fixed, class-balanced subset that depends on nothing random."""
    import numpy as np

    per_class = size // NUM_CLASSES
    if per_class < 1:
        raise ValueError(f"a balanced subset needs at least {NUM_CLASSES} images, got {size}")
    chosen = []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(y == c)[:per_class]
        if len(rows) < per_class:
            raise ValueError(f"only {len(rows)} images of class {c}, {per_class} wanted")
        chosen.append(rows)
    return np.sort(np.concatenate(chosen))


def normalize(x):
    """uint8 images -> float32, scaled to [0, 1] and standardised per channel
    with the CIFAR-10 train mean and std."""
    import numpy as np

    return (x.astype("float32") / 255.0 - np.asarray(CIFAR10_MEAN, "float32")) / np.asarray(
        CIFAR10_STD, "float32"
    )


# -- threads ----------------------------------------------------------------------------
def command_line(argv=None):
    """How this run started, for its report: `python -m benchmarks.<name> ...`,
    or `main([...])` when `main` was called with `argv`."""
    if argv is not None:
        return f"main({argv!r})"
    return shlex.join(["python", "-m", sys.modules["__main__"].__spec__.name, *sys.argv[1:]])


def single_thread_env(base=None):
    """A copy of the environment (`base`, default os.environ) that keeps every
    backend of a child process on one thread."""
    env = dict(os.environ if base is None else base)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


def limit_threads(backend, threads=1):
    """Sizes the thread pools of `backend` in this process (call before it runs anything).

    JAX reads XLA_FLAGS when it starts: use `single_thread_env` for the process.
    TensorFlow is also limited when it is only imported (e.g. for tf.data).
    """
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started
            pass
    if backend == "tensorflow" or "tensorflow" in sys.modules:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialised
            pass


def load_cifar10_subset(data_dir, train_size, test_size=10_000):
    """(x_train, y_train, x_test, y_test): normalised float32 images, int32 labels.

    Train: `balanced_subset` of the official training set, `train_size // 10`
    images per class (at most 25,000 images, from `cifar10_train_part1.npz`);
    test: the whole test set, or its `balanced_subset` of `test_size` images.
    Fixed: the same images for every seed and method.
    """
    if not NUM_CLASSES <= train_size <= TRAIN_PART_SIZE:
        raise ValueError(
            f"train_size must be in {NUM_CLASSES}..{TRAIN_PART_SIZE}, got {train_size}"
        )
    x, y = load_cifar10_train(data_dir, first=TRAIN_PART_SIZE)
    rows = balanced_subset(y, train_size)
    x_test, y_test = load_cifar10_test(data_dir)
    if test_size < len(y_test):
        test_rows = balanced_subset(y_test, test_size)
        x_test, y_test = x_test[test_rows], y_test[test_rows]
    return (normalize(x[rows]), y[rows].astype("int32"),
            normalize(x_test), y_test.astype("int32"))


def epoch_orders(seed, n, batch_size, epochs):
    """One permutation of range(n) per epoch, cut to whole batches (the
    remainder of each epoch is dropped), drawn from NumPy with `seed`: the
    same data order for every method trained with this seed."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    usable = (n // batch_size) * batch_size
    return [rng.permutation(n)[:usable] for _ in range(epochs)]


# -- methods ----------------------------------------------------------------------------
# name -> (label, keras_sam class, its arguments). The defaults of the papers /
# official code, as in examples/cifar10.py; `steps=k` is multi-step ascent (ρ
# the total path length).
METHODS = {
    "sgd": ("SGD", None, {}),
    "sam": ("SAM", "SAM", {"rho": 0.05}),
    "asam": ("ASAM", "ASAM", {"rho": 0.5, "eta": 0.01}),
    "gsam": ("GSAM", "GSAM", {"rho": 0.05, "alpha": 0.4}),
    "wsam": ("WSAM", "WSAM", {"rho": 0.05, "gamma": 0.9}),
    "xsam": ("XSAM", "XSAM", {"rho": 0.15, "rho_max": 0.3}),
    "x-sam": ("X-SAM", "EigenCorrectedSAM",
              {"rho": 0.05, "alpha": 0.2, "refresh_every": 5, "power_iterations": 5}),
}


def method_label(method, steps=1):
    """"SAM", "SAM k=2", ..."""
    label = METHODS[method][0]
    return label if steps == 1 else f"{label} k={steps}"


def method_arguments(method, steps=1, seed=0):
    """The keyword arguments of the method's keras_sam class (besides the inner optimizer)."""
    label, class_name, kwargs = METHODS[method]
    if class_name is None:
        if steps != 1:
            raise ValueError(f"{label} has no ascent steps")
        return {}
    kwargs = dict(kwargs)
    if steps != 1:
        kwargs["steps"] = steps
    if class_name == "EigenCorrectedSAM":
        kwargs["seed"] = seed  # its power iteration's starting vector
    return kwargs


def method_description(method, steps=1):
    """E.g. `SAM(sgd, rho=0.05, steps=2)`."""
    class_name = METHODS[method][1]
    if class_name is None:
        return "sgd"
    kwargs = method_arguments(method, steps)
    kwargs.pop("seed", None)
    arguments = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in kwargs.items())
    return f"{class_name}(sgd, {arguments})"


def make_optimizer(method, inner, steps=1, seed=0):
    """The method's optimizer around `inner` (`inner` itself for "sgd")."""
    class_name = METHODS[method][1]
    if class_name is None:
        method_arguments(method, steps)  # checks steps
        return inner
    import keras_sam

    return getattr(keras_sam, class_name)(inner, **method_arguments(method, steps, seed))


# -- timing harness -------------------------------------------------------------------
# The jit settings timed on each backend: one table row each.
JIT_MODES = {"tensorflow": (True, False), "jax": (True,), "torch": (False,)}
JIT_LABELS = {
    ("tensorflow", True): "XLA",
    ("tensorflow", False): "graph",
    ("jax", True): "jit",
    ("torch", False): "eager",
}
def he_uniform(rng, shape):
    fan_in = 1
    for size in shape[:-1]:
        fan_in *= size
    limit = (6.0 / fan_in) ** 0.5
    return rng.uniform(-limit, limit, size=shape).astype("float32")


def configure_threads(backend, threads):
    """Size the backend's thread pools (before it runs anything)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set: harmless
            pass
    # JAX: XLA_FLAGS set by the parent in the child's environment.


def backend_version(backend):
    module = __import__(backend)
    return module.__version__


class Runner:
    """Calls one compiled model's train function on a fixed batch, as `fit` does."""

    def __init__(self, backend, model, batch):
        self.backend = backend
        self.model = model
        self.batch = batch
        if hasattr(model, "_symbolic_build"):  # what fit/train_on_batch do first
            model._symbolic_build(data_batch=batch)
        else:  # pragma: no cover - older Keras
            model.optimizer.build(model.trainable_variables)
        model.make_train_function()
        self.function = model.train_function
        self.state = None
        if backend == "jax":
            import jax
            import jax.numpy as jnp

            state = model._get_jax_state(
                trainable_variables=True,
                non_trainable_variables=True,
                optimizer_variables=True,
                metrics_variables=True,
                purge_model_variables=False,
            )
            # The jitted step donates its state: hand it copies, so that the
            # model's own variables stay valid.
            self.state = jax.tree.map(jnp.copy, state)

    def step(self):
        """One training step; returns once its results exist. Returns the logs."""
        if self.backend == "jax":
            import jax

            logs, self.state = self.function(self.state, iter((self.batch,)))
            jax.block_until_ready((logs, self.state))
        elif self.backend == "tensorflow":
            # A Python iterable takes the `one_step_on_data` path (no tf.data).
            logs = self.function(iter((self.batch,)))
            logs["loss"].numpy()  # also waits for the step's variable updates
        else:
            logs = self.function([self.batch])
            float(logs["loss"])
        return logs


class ForeignLoad:
    """CPU time used by other processes while timing, in cores (Linux only).

    System-wide busy time from /proc/stat minus this process's CPU time, over
    the wall time: ~0 on a quiet machine; > 0.2 cores makes timings suspect.
    """

    @staticmethod
    def _busy_seconds():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        try:
            self.start = (self._busy_seconds(), sum(os.times()[:2]), time.perf_counter())
        except (OSError, ValueError, AttributeError):
            self.start = None
        self.cores = None
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            busy, own, wall = self._busy_seconds(), sum(os.times()[:2]), time.perf_counter()
            elapsed = wall - self.start[2]
            if elapsed > 0:
                other = (busy - self.start[0]) - (own - self.start[1])
                self.cores = max(other, 0.0) / elapsed
        return False


def quartiles(values):
    values = sorted(values)
    if len(values) >= 2:
        return statistics.quantiles(values, n=4, method="inclusive")
    return values * 3


def package_version(*distributions):
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "n/a"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def child_env(backend, threads, extra=()):
    env = dict(os.environ)
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    env["KERAS_BACKEND"] = backend
    env["PYTHONHASHSEED"] = "0"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["JAX_PLATFORMS"] = "cpu"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    if backend == "jax":
        flags = env.get("XLA_FLAGS", "")
        if threads == 1:
            flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = flags.strip()
    return env


def load_average():
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "n/a"


def wait_until_quiet(max_seconds, threshold=0.25, window=3.0):
    """Waits (up to `max_seconds`) until other processes use < `threshold` cores."""
    deadline = time.perf_counter() + max_seconds
    while True:
        with ForeignLoad() as load:
            time.sleep(window)
        if load.cores is None or load.cores < threshold:
            return load.cores
        if time.perf_counter() >= deadline:
            print(
                f"  machine still busy ({load.cores:.2f} cores used by others); "
                "running anyway",
                file=sys.stderr,
                flush=True,
            )
            return load.cores


def call_stats(seconds):
    """Per-call times (seconds) as the tables report them, in ms."""
    ms = sorted(1000.0 * t for t in seconds)
    p25, _, p75 = quartiles(ms)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "p25_ms": p25,
            "p75_ms": p75, "n": len(ms)}


def time_interleaved(runners, names, rounds, calls=None, before_call=None):
    """Times `runners[name].step()` for every name, interleaved.

    In each round every name runs `calls(name, round)` consecutive calls (one
    by default); the order of the names rotates from round to round, so that
    slow drifts of the machine spread over all of them. Garbage collection runs
    between rounds only. `before_call(name)` runs untimed before each call.
    Returns `(seconds per name, last logs per name, cores used by other
    processes meanwhile)`.
    """
    times = {name: [] for name in names}
    logs = {}
    gc.collect()
    gc.disable()
    try:
        with ForeignLoad() as foreign:
            for round_ in range(rounds):
                gc.collect()
                shift = round_ % max(len(names), 1)  # rotate the order
                for name in names[shift:] + names[:shift]:
                    for _ in range(calls(name, round_) if calls else 1):
                        if before_call is not None:
                            before_call(name)
                        start = time.perf_counter()
                        logs[name] = runners[name].step()
                        times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times, logs, foreign.cores
