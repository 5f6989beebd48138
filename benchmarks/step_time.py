"""Training-step time of sharpness-aware optimizers versus their inner optimizer.

    python benchmarks/step_time.py                  # full run, all backends (~5 min)
    python benchmarks/step_time.py --quick          # smoke run (< 1 min)
    python benchmarks/step_time.py --backends jax,torch --steps 40
    python benchmarks/step_time.py --variants SAM,XSAM --wait-quiet 300

For every backend (TensorFlow with XLA and in plain graph mode, JAX with jit,
PyTorch eager) it times the compiled train function of a small CIFAR-style CNN
(batch 128, 32×32×3 inputs, 10 classes, ~67k parameters) on one fixed batch:

- `inner`: the inner optimizer alone (SGD, momentum 0.9), through `SAMModel`
  compiled with the plain optimizer — Keras' own train step;
- `SAM`, `ASAM`, `SAM k=2` (and, opt-in, `XSAM`, `XSAM α=1`): the
  sharpness-aware variants in `VARIANTS`.

Timing: every variant gets a model with identical initial weights, is compiled,
built and its `train_function` made; after warm-up (tracing, XLA compilation)
the variants are interleaved in rounds (the order rotated each round) and each
call of the train function is timed up to the moment its results are ready.
Reported: the median ms/step and the ratio to `inner` (in parentheses: the
ratio of the fastest steps, less sensitive to other load); `spread` is the
largest half interquartile range over the row's variants, relative to their
median; `other load` is the CPU that other processes used while the row was
timed (from /proc/stat): on a shared machine, trust rows near 0 cores only, or
use `--wait-quiet`.

Each backend runs in its own subprocess (the Keras backend is fixed per
process), one after the other, with its thread pools sized to the cores given
by `--threads`, so backends never compete for the CPU.

PyTorch on CPU: glibc's malloc returns freed activation buffers to the OS and
page-faults them back in at every step, which costs the SAM step more than the
inner one; `--child-env MALLOC_MMAP_THRESHOLD_=4294967296 --child-env
MALLOC_TRIM_THRESHOLD_=68719476736` (or jemalloc/tcmalloc) measures without it.

To add a method, add an entry to `VARIANTS`: a name and a factory
`factory(inner_optimizer) -> optimizer to compile with`.
"""

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
# The jit settings timed on each backend: one table row each.
JIT_MODES = {"tensorflow": (True, False), "jax": (True,), "torch": (False,)}
JIT_LABELS = {
    ("tensorflow", True): "XLA",
    ("tensorflow", False): "graph",
    ("jax", True): "jit",
    ("torch", False): "eager",
}
BASELINE = "inner"
MARKER = "@@STEP_TIME_JSON@@"

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)


# ----------------------------------------------------------------------------
# The variants: name -> factory(inner optimizer) -> optimizer to compile with.
# Factories import keras_sam lazily: the parent process never imports Keras.
# ----------------------------------------------------------------------------
def inner_optimizer():
    import keras

    return keras.optimizers.SGD(0.05, momentum=0.9)


def _method(class_name, **kwargs):
    """`keras_sam.<class_name>(inner, **kwargs)`, looked up when the row runs."""

    def factory(inner):
        import keras_sam

        return getattr(keras_sam, class_name)(inner, **kwargs)

    return factory


VARIANTS = {
    BASELINE: lambda inner: inner,
    "SAM": _method("SAM", rho=0.05),
    "ASAM": _method("ASAM", rho=0.5),
    "SAM k=2": _method("SAM", rho=0.05, steps=2),
    # Opt-in (--variants); a variant whose step alternates between compiled
    # functions (XSAM's α search on the first batch of an epoch) is timed in
    # its steady state: the timed calls never start an epoch.
    "XSAM": _method("XSAM"),
    "XSAM α=1": _method("XSAM", alpha=1.0),
}

# What runs by default (in this order); --variants selects any subset.
DEFAULT_VARIANTS = (BASELINE, "SAM", "ASAM", "SAM k=2")
# --quick: compilation dominates, so only the pair the target is about.
QUICK_VARIANTS = (BASELINE, "SAM")


# ----------------------------------------------------------------------------
# Child: one backend, fixed by KERAS_BACKEND before Keras is imported.
# ----------------------------------------------------------------------------
def build_cnn(keras):
    """Conv32-BN-ReLU, Conv32-BN-ReLU, pool, Conv64-BN-ReLU, pool,
    Conv64-BN-ReLU, global average pool, Dense 10: ~67k parameters."""
    layers = keras.layers

    def conv_bn_relu(filters):
        return [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
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
            layers.Dense(NUM_CLASSES),
        ],
        name="cnn",
    )


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


def _scalar(value):
    try:
        return float(value)
    except Exception:  # pragma: no cover
        return float("nan")


def time_row(backend, jit, args, keras, batch, init_weights):
    runners, errors = {}, {}
    for name in args.variants:
        try:
            model_core = build_cnn(keras)
            model_core.set_weights(init_weights)
            import keras_sam

            model = keras_sam.SAMModel(model_core)
            model.compile(
                optimizer=VARIANTS[name](inner_optimizer()),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
                jit_compile=jit,
            )
            runners[name] = Runner(backend, model, batch)
        except Exception as e:  # a broken variant must not hide the others
            errors[name] = f"{type(e).__name__}: {e}"

    compile_s, logs = {}, {}
    for name, runner in list(runners.items()):
        try:
            start = time.perf_counter()
            runner.step()  # traces / compiles
            compile_s[name] = time.perf_counter() - start
            for _ in range(args.warmup - 1):
                runner.step()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            del runners[name]

    times = {name: [] for name in runners}
    names = list(runners)
    gc.collect()
    gc.disable()
    try:
        with ForeignLoad() as foreign:
            for round_ in range(args.steps):
                gc.collect()
                shift = round_ % max(len(names), 1)  # rotate the order
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    logs[name] = runners[name].step()
                    times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()

    results = {}
    for name in runners:
        ms = sorted(1000.0 * t for t in times[name])
        if len(ms) >= 2:
            quartiles = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            quartiles = ms * 3
        last = logs.get(name, {})
        results[name] = {
            "median_ms": statistics.median(ms),
            "min_ms": ms[0],
            "p25_ms": quartiles[0],
            "p75_ms": quartiles[2],
            "n": len(ms),
            "first_call_s": compile_s[name],
            "loss": _scalar(last.get("loss", float("nan"))),
            "skipped_steps": _scalar(last.get("skipped_steps", 0)),
        }
    for name, message in errors.items():
        results[name] = {"error": message}
    return {
        "backend": backend,
        "jit": JIT_LABELS[(backend, jit)],
        "variants": results,
        "foreign_load": foreign.cores,
    }


def child_main(args):
    backend = os.environ["KERAS_BACKEND"]
    configure_threads(backend, args.threads)
    import numpy as np
    import keras

    assert keras.backend.backend() == backend, keras.backend.backend()
    reference = build_cnn(keras)
    params = reference.count_params()
    rng = np.random.default_rng(0)
    # The same initial weights for every variant and every backend (and no
    # `keras.utils.set_random_seed`, which imports TensorFlow everywhere).
    init_weights = [
        he_uniform(rng, w.shape) if w.ndim >= 2 else w
        for w in reference.get_weights()
    ]
    x = rng.standard_normal((args.batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(args.batch_size,)).astype("int32")
    # Device tensors once, outside the timed calls.
    batch = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))

    rows = []
    for jit in JIT_MODES[backend]:
        start = time.perf_counter()
        row = time_row(backend, jit, args, keras, batch, init_weights)
        row["params"] = params
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    print(
        MARKER
        + json.dumps({"backend": backend, "version": backend_version(backend), "rows": rows}),
        flush=True,
    )


# ----------------------------------------------------------------------------
# Parent: one subprocess per backend, then the table.
# ----------------------------------------------------------------------------
def _version(*distributions):
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "n/a"


def _cpu_model():
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


def run_child(backend, args):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        f"--variants={','.join(args.variants)}",
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            env=child_env(backend, args.threads, args.child_env),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"backend": backend, "error": f"timed out after {args.timeout} s"}
    elapsed = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
            result["seconds"] = elapsed
            if args.verbose:
                sys.stderr.write(proc.stderr)
            return result
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    return {"backend": backend, "error": f"exit code {proc.returncode}\n{tail}"}


def format_table(results, variants):
    others = [name for name in variants if name != BASELINE]
    header = ["backend", "jit", f"{BASELINE} ms/step"]
    for name in others:
        header += [f"{name} ms/step", f"{name}/{BASELINE}"]
    header += ["spread", "other load"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    notes = []
    for result in results:
        if "error" in result:
            cells = [result["backend"], "—"] + ["error"] * (len(header) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            notes.append(f"{result['backend']}: {result['error']}")
            continue
        for row in result["rows"]:
            stats = row["variants"]
            base = stats.get(BASELINE, {})
            cells = [f"{row['backend']} {result['version']}", row["jit"]]
            cells.append(_ms_cell(base))
            for name in others:
                cells.append(_ms_cell(stats.get(name)))
                variant = stats.get(name, {})
                if "median_ms" in variant and "median_ms" in base:
                    cells.append(
                        f"{variant['median_ms'] / base['median_ms']:.2f}× "
                        f"({variant['min_ms'] / base['min_ms']:.2f}×)"
                    )
                else:
                    cells.append("—")
            spreads = [
                (s["p75_ms"] - s["p25_ms"]) / s["median_ms"]
                for s in stats.values()
                if "median_ms" in s
            ]
            cells.append(f"±{100 * max(spreads) / 2:.0f}%" if spreads else "—")
            load = row.get("foreign_load")
            cells.append("n/a" if load is None else f"{load:.2f} cores")
            lines.append("| " + " | ".join(cells) + " |")
            for name, s in stats.items():
                if "error" in s:
                    notes.append(f"{row['backend']}/{row['jit']} {name}: {s['error']}")
                elif s.get("skipped_steps"):
                    notes.append(
                        f"{row['backend']}/{row['jit']} {name}: "
                        f"{s['skipped_steps']:.0f} skipped steps (non-finite)"
                    )
    return "\n".join(lines), notes


def _ms_cell(stats):
    if not stats:
        return "—"
    if "error" in stats:
        return "error"
    return f"{stats['median_ms']:.1f}"


def _load():
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


def parent_main(args):
    start = time.perf_counter()
    load_before = _load()
    results = []
    for backend in args.backends:
        if args.wait_quiet > 0:
            print(f"[{backend}] waiting for a quiet machine ...", file=sys.stderr, flush=True)
            wait_until_quiet(args.wait_quiet)
        print(f"[{backend}] running ...", file=sys.stderr, flush=True)
        result = run_child(backend, args)
        results.append(result)
        if "error" not in result:
            detail = ", ".join(
                f"{row['jit']} {row['seconds']:.0f} s" for row in result["rows"]
            )
            print(
                f"[{backend}] done in {result['seconds']:.0f} s ({detail})",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"[{backend}] FAILED", file=sys.stderr, flush=True)
    total = time.perf_counter() - start

    params = next(
        (row["params"] for r in results if "rows" in r for row in r["rows"]), None
    )
    versions = (
        f"keras {_version('keras')}, tensorflow {_version('tensorflow', 'tensorflow-cpu')}, "
        f"jax {_version('jax')} (jaxlib {_version('jaxlib')}), torch {_version('torch')}, "
        f"keras_sam {_version('keras-sam', 'keras_sam')}, Python {platform.python_version()}"
    )
    print(f"## keras_sam step time{' (quick)' if args.quick else ''}")
    print()
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- versions: {versions}")
    print(
        f"- machine: {os.cpu_count()} cores ({_cpu_model()}), {args.threads} thread(s) "
        "per backend, backends run one after another; load average (1/5/15 min) "
        f"{load_before} before, {_load()} after"
    )
    print(
        f"- model: CIFAR-style CNN, {params} params, batch {args.batch_size}, "
        f"inputs {'×'.join(map(str, IMAGE_SHAPE))}, {NUM_CLASSES} classes; "
        f"inner = SGD(0.05, momentum=0.9) through SAMModel"
    )
    print(
        f"- timing: compiled train function on a fixed batch, {args.warmup} warm-up "
        f"call(s), then {args.steps} interleaved rounds; medians; "
        "ratios of medians (of minima); spread = largest half-IQR / median in the "
        "row; other load = CPU used by other processes while timing the row"
    )
    if args.child_env:
        print(f"- extra environment: {' '.join(args.child_env)}")
    print()
    table, notes = format_table(results, args.variants)
    print(table)
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    print()
    print(f"total {total:.0f} s")
    return 0 if all("error" not in r for r in results) else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1 minute")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated subset of "
        + ",".join(BACKENDS)
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset of: {', '.join(VARIANTS)} ({BASELINE} is "
        f"always run); default {','.join(DEFAULT_VARIANTS)}, with --quick "
        f"{','.join(QUICK_VARIANTS)}",
    )
    parser.add_argument("--steps", type=int, help="timed steps per variant (rounds)")
    parser.add_argument("--warmup", type=int, help="untimed calls per variant")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, help="threads per backend")
    parser.add_argument("--timeout", type=float, help="seconds per backend")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each backend, wait up to SECONDS until other processes use "
        "< 0.25 cores (shared machines)",
    )
    parser.add_argument(
        "--child-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for the backend processes (repeatable), "
        "e.g. MALLOC_TRIM_THRESHOLD_=68719476736; shown in the header",
    )
    parser.add_argument("--verbose", action="store_true", help="show child stderr")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    quick = args.quick
    defaults = {
        "steps": 3 if quick else 20,
        # >= 2: a step alternating between compiled functions (XSAM) compiles
        # its steady-state function on the second call.
        "warmup": 2 if quick else 3,
        "batch_size": 32 if quick else 128,
        "threads": 1 if quick else (os.cpu_count() or 1),
        "timeout": 120 if quick else 600,
        "variants": ",".join(QUICK_VARIANTS if quick else DEFAULT_VARIANTS),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")

    for item in args.child_env:
        if "=" not in item or not item.partition("=")[0]:
            parser.error(f"--child-env takes KEY=VALUE, received {item!r}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in args.backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    args.variants = [BASELINE] + [v for v in variants if v != BASELINE]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
