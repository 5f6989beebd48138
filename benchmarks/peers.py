"""keras_sam's SAM step against other SAM implementations: same model, batch and run.

    python -m benchmarks.peers                     # full run, all backends (on a quiet machine)
    python -m benchmarks.peers --wait-quiet 300    # ... waiting up to 5 min per backend for quiet
    python -m benchmarks.peers --quick             # smoke run, all backends (see below)
    python -m benchmarks.peers --quick --backends jax --skip-memory
    KERAS_BACKEND=jax python -m pytest tests/test_benchmarks_peers.py   # --quick, one backend

The peers are benchmark-only extras: `pip install "torch==2.13.0" -e
".[benchmarks]"` (optax, pytorch-optimizer 4.1.0; it accepts any torch >= 2.1,
so pinning torch keeps the CPU build). A backend whose peer is not installed
reports an error row. `--quick` (batch 32, 3 timed rounds, one memory row per
backend) starts 12 short processes, ~2 min of CPU time in all (195 s of wall
time measured with other processes using ~1.2 of 2 cores).

**What is compared.** The model is the small CIFAR-style CNN of
`step_time.py` (`common.build_cnn`: 4 Conv-BN-ReLU blocks, global average pool,
Dense 10 logits; 66,794 parameters, BatchNorm), loss
`SparseCategoricalCrossentropy(from_logits=True)`, one fixed batch of random
32×32×3 images and labels (batch 128; 32 with `--quick`), the initial weights
of `step_time.py` (He-uniform from NumPy seed 0). SAM with ρ = 0.05 around
SGD(lr 0.05, momentum 0.9), two forward–backward passes per step, on both sides:

- **keras_sam**: `keras_sam.SAMModel(model)` compiled with
  `keras_sam.SAM(keras.optimizers.SGD(0.05, momentum=0.9), rho=0.05)` (loss
  only, no metrics; the step's default per-step diagnostics `sharpness` and
  `grad_cosine` and its finiteness check included), timed through
  `model.make_train_function()` on the fixed batch exactly as `step_time.py`
  does (its `Runner`; on JAX the carried state).
- **JAX — optax** `optax.contrib.sam(optax.sgd(0.05, momentum=0.9),
  optax.chain(optax.contrib.normalize(), optax.sgd(0.05)), sync_period=2,
  opaque_mode=True)`: its documented opaque use, `update(g_0, state, θ,
  grad_fn=...)` with `grad_fn(θ + e)` the perturbed gradient (one call per
  step), inside one `jax.jit` step written here around the Keras model's
  `stateless_call` (BatchNorm moving statistics from the clean pass passed
  through, as in Keras' JAX trainer; its arguments donated, as Keras does).
  optax's `normalize()` divides by ‖g‖ without an eps (docs/algorithms.md has
  ‖g‖ + 1e-12): immaterial unless ‖g‖ ≈ 0.
- **PyTorch — pytorch-optimizer 4.1.0** `SAM(params, torch.optim.SGD, rho=0.05,
  lr=0.05, momentum=0.9)` on the Keras model's own parameters (on the torch
  backend a Keras model is a `torch.nn.Module`; the trainable variables'
  `.value` are its `requires_grad` Parameters, which the peer updates in place
  — checked: the agreement column compares the Keras model's weights), eager,
  the usual loop: `loss.backward(); first_step(zero_grad=True);
  loss(again).backward(); second_step(zero_grad=True)`. By design this loop
  also updates BatchNorm's moving statistics on the perturbed pass
  (pytorch-optimizer's `disable_running_stats` only knows torch's own
  BatchNorm modules, not Keras'); keras_sam keeps the clean pass's only, so
  the BN-statistics column differs on torch, not the weights.
- **TensorFlow — a hand-written two-tape step** (docs/algorithms.md "SAM"): clean tape
  → g_0; e = ρ g_0 / (‖g_0‖ + 1e-12); `assign_add(e)`; second tape → g_1;
  `assign_sub(e)`; `optimizer.apply(g_1)` with a Keras SGD(0.05, momentum=0.9);
  the BatchNorm moving statistics saved before the perturbed pass and restored
  after it (docs/algorithms.md, "Conventions": the clean pass only updates
  them). In a `tf.function` (graph row) and with `jit_compile=True` (XLA row), against keras_sam compiled with
  `jit_compile=False` / `True` to match.

**Agreement.** Per row, both sides start from the same weights and take one
step on the same batch (their first, compiling call); reported: the max
absolute difference of the trainable weights after it (next to the size of
the update, max |θ_1 − θ_0|), and of the BatchNorm moving statistics. The same
SAM gives ~1e-7 (float32 rounding); a peer that differs by design says so in
the notes under the table.

**Timing** (as `step_time.py`, with the same harness of `common.py`): each backend in
its own subprocess, one after the other, thread pools pinned to `--threads`;
after warm-up (tracing, compilation) the two sides are interleaved in
`--steps` rounds (the order alternating) and each call is timed until its
results are ready. Reported: median ms/step of each, the ratio
keras_sam/peer (in parentheses: the ratio of the fastest steps), `spread`
(largest half-IQR / median of the two) and `other load` (CPU used by other
processes while the row was timed, from /proc/stat: trust rows near 0 cores,
or use `--wait-quiet`).

**Peak memory**: per backend (and jit mode; `--quick`: one row per backend,
TensorFlow's graph row), a fresh subprocess per variant — `inner` (SGD alone, through
`SAMModel` compiled with the plain optimizer), `keras_sam SAM`, the peer —
builds the model and the batch, reads its RSS, resets the peak
(/proc/self/clear_refs, which `ru_maxrss` follows), builds the
optimizer/step, warms up and runs `--memory-steps` steps; reported: peak RSS
(`resource.getrusage(...).ru_maxrss`) minus the RSS after building, in MiB,
and the ratios SAM/inner and SAM/peer. Process-level: it includes compiled
code and the allocator's caches, not only tensors.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.common import IMAGE_SHAPE, NUM_CLASSES, build_cnn

BACKENDS = ("tensorflow", "jax", "torch")
JIT_MODES = common.JIT_MODES  # tensorflow: XLA, graph; jax: jit; torch: eager
PEERS = {
    "jax": ("optax", "optax.contrib.sam"),
    "torch": ("pytorch-optimizer", "pytorch_optimizer.SAM"),
    "tensorflow": (None, "two-tape tf.function"),
}
PEER_MODULES = {"jax": "optax", "torch": "pytorch_optimizer", "tensorflow": None}
PEER_NOTES = {
    "jax": "optax.contrib.sam (opaque mode, grad_fn on θ + e): normalize() divides by ‖g‖ "
    "with no eps (keras_sam: ‖g‖ + 1e-12), otherwise the same SAM; BN statistics from "
    "the clean pass (passed through by the step written here).",
    "torch": "pytorch_optimizer.SAM (perturb_eps 1e-12, global norm: the same SAM). Its usual "
    "loop also updates BatchNorm's moving statistics on the perturbed pass (by design; its "
    "disable_running_stats helper does not apply to Keras layers), keras_sam on the clean "
    "pass only: the BN-statistics column differs, the weights do not.",
    "tensorflow": "hand-written SAM step of docs/algorithms.md (BN statistics of the perturbed "
    "pass discarded, as its Conventions say): the same SAM.",
}
RHO, LR, MOMENTUM, EPS = 0.05, 0.05, 0.9, 1e-12
MARKER = "@@PEERS_JSON@@"
AGREE_ATOL = 1e-5  # the same SAM variant, float32: weights after one step


# ----------------------------------------------------------------------------
# Child: the peers' steps, on the Keras model.
# ----------------------------------------------------------------------------
def _loss_fn():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _numpy(values):
    import keras

    return [keras.ops.convert_to_numpy(v) for v in values]


class KerasSAMRunner:
    """keras_sam's compiled train function (common.Runner, as step_time.py) on the fixed batch."""

    def __init__(self, backend, jit, keras, batch, init_weights, sam=True):
        import keras_sam

        self.inner_model = build_cnn(keras)
        self.inner_model.set_weights(init_weights)
        model = keras_sam.SAMModel(self.inner_model)
        inner = keras.optimizers.SGD(LR, momentum=MOMENTUM)
        model.compile(
            optimizer=keras_sam.SAM(inner, rho=RHO) if sam else inner,
            loss=_loss_fn(),
            jit_compile=jit,
        )
        self.model = model
        self.runner = common.Runner(backend, model, batch)

    def step(self):
        return self.runner.step()["loss"]

    def _values(self, variables, slot):
        state = self.runner.state
        if state is None:  # tensorflow, torch: the variables hold the weights
            return _numpy([v.value for v in variables])
        # JAX: the step carries the state; order of the SAMModel's variables.
        own = self.model.trainable_variables if slot == 0 else self.model.non_trainable_variables
        index = {id(v): i for i, v in enumerate(own)}
        return _numpy([state[slot][index[id(v)]] for v in variables])

    def trainable(self):
        return self._values(self.inner_model.trainable_variables, 0)

    def non_trainable(self):
        return self._values(self.inner_model.non_trainable_variables, 1)


class OptaxSAMRunner:
    """JAX: optax.contrib.sam in a jitted step around `model.stateless_call`."""

    def __init__(self, keras, batch, init_weights):
        import jax
        import jax.numpy as jnp
        import optax

        model = build_cnn(keras)
        model.set_weights(init_weights)
        self.model = model
        loss_object = _loss_fn()

        def loss_fn(trainable, non_trainable, x, y):
            logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_object(y, logits), non_trainable

        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
        optimizer = optax.contrib.sam(
            optax.sgd(LR, momentum=MOMENTUM),
            optax.chain(optax.contrib.normalize(), optax.sgd(RHO)),
            sync_period=2,
            opaque_mode=True,
        )

        def step(trainable, non_trainable, opt_state, x, y):
            (loss, new_non_trainable), grads = value_and_grad(trainable, non_trainable, x, y)

            def perturbed_grad(params, _):
                # The perturbed pass: batch statistics, its state updates discarded.
                return value_and_grad(params, non_trainable, x, y)[1]

            updates, opt_state = optimizer.update(
                grads, opt_state, trainable, grad_fn=perturbed_grad
            )
            return optax.apply_updates(trainable, updates), new_non_trainable, opt_state, loss

        # Donated state, as Keras' JAX trainer.
        self.function = jax.jit(step, donate_argnums=(0, 1, 2))
        trainable = [jnp.copy(v.value) for v in model.trainable_variables]
        non_trainable = [jnp.copy(v.value) for v in model.non_trainable_variables]
        self.state = (trainable, non_trainable, optimizer.init(trainable))
        self.batch = batch

    def step(self):
        import jax

        *state, loss = self.function(*self.state, *self.batch)
        self.state = tuple(state)
        jax.block_until_ready((self.state, loss))
        return loss

    def trainable(self):
        return _numpy(self.state[0])

    def non_trainable(self):
        return _numpy(self.state[1])


class TorchOptimizerSAMRunner:
    """torch: pytorch_optimizer.SAM on the Keras model's Parameters, the usual loop."""

    def __init__(self, keras, batch, init_weights):
        import pytorch_optimizer
        import torch

        model = build_cnn(keras)
        model.set_weights(init_weights)
        self.model = model
        params = [v.value for v in model.trainable_variables]
        module_params = [p for p in model.parameters() if p.requires_grad]
        # The Keras variables are the module's trainable Parameters, updated in place.
        assert all(isinstance(p, torch.nn.Parameter) for p in params)
        assert {id(p) for p in params} == {id(p) for p in module_params}, (
            "Keras trainable variables are not the module's trainable parameters"
        )
        self.optimizer = pytorch_optimizer.SAM(
            params, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM
        )
        self.loss_fn = _loss_fn()
        self.x, self.y = batch

    def step(self):
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        loss = loss_fn(self.y, model(self.x, training=True))
        loss.backward()
        optimizer.first_step(zero_grad=True)
        loss_fn(self.y, model(self.x, training=True)).backward()
        optimizer.second_step(zero_grad=True)
        return float(loss)

    def trainable(self):
        return _numpy([v.value for v in self.model.trainable_variables])

    def non_trainable(self):
        return _numpy([v.value for v in self.model.non_trainable_variables])


class TwoTapeSAMRunner:
    """TensorFlow: docs/algorithms.md "SAM" written by hand, two tapes, in a tf.function."""

    def __init__(self, keras, batch, init_weights, jit):
        import tensorflow as tf

        model = build_cnn(keras)
        model.set_weights(init_weights)
        self.model = model
        optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM)
        variables = model.trainable_variables
        statistics_ = model.non_trainable_variables
        optimizer.build(variables)
        loss_fn = _loss_fn()

        @tf.function(jit_compile=jit)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, variables)
            scale = RHO / (tf.linalg.global_norm(grads) + EPS)
            perturbation = [g * scale for g in grads]
            # BN statistics: the clean pass's; the perturbed pass's are discarded
            # (docs/algorithms.md, "Conventions").
            saved = [tf.identity(v.value) for v in statistics_]
            for v, e in zip(variables, perturbation):
                v.assign_add(e)
            with tf.GradientTape() as tape:
                perturbed_loss = loss_fn(y, model(x, training=True))
            perturbed_grads = tape.gradient(perturbed_loss, variables)
            for v, e in zip(variables, perturbation):
                v.assign_sub(e)
            for v, s in zip(statistics_, saved):
                v.assign(s)
            optimizer.apply(perturbed_grads, variables)
            return loss

        self.function = train_step
        self.x, self.y = batch

    def step(self):
        loss = self.function(self.x, self.y)
        return loss.numpy()  # also waits for the variable updates

    def trainable(self):
        return _numpy([v.value for v in self.model.trainable_variables])

    def non_trainable(self):
        return _numpy([v.value for v in self.model.non_trainable_variables])


def build_peer(backend, jit, keras, batch, init_weights):
    if backend == "jax":
        return OptaxSAMRunner(keras, batch, init_weights)
    if backend == "torch":
        return TorchOptimizerSAMRunner(keras, batch, init_weights)
    return TwoTapeSAMRunner(keras, batch, init_weights, jit)


def _max_abs_diff(a, b):
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


def make_data(keras, batch_size):
    """The initial weights, batch and parameter count of step_time.py."""
    import numpy as np

    reference = build_cnn(keras)
    rng = np.random.default_rng(0)
    init_weights = [
        common.he_uniform(rng, w.shape) if w.ndim >= 2 else w for w in reference.get_weights()
    ]
    x = rng.standard_normal((batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(batch_size,)).astype("int32")
    batch = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    return init_weights, batch, reference.count_params()


def time_row(backend, jit, args, keras, batch, init_weights):
    row = {"backend": backend, "jit": common.JIT_LABELS[(backend, jit)]}
    runners = {
        "keras_sam": KerasSAMRunner(backend, jit, keras, batch, init_weights),
        "peer": build_peer(backend, jit, keras, batch, init_weights),
    }
    # Both sides' first (compiling) step from init_weights, compared in the
    # order of each Keras model's own variables.
    first = {}
    compile_s = {}
    for name, runner in runners.items():
        start = time.perf_counter()
        loss = runner.step()
        compile_s[name] = time.perf_counter() - start
        first[name] = (runner.trainable(), runner.non_trainable(), float(loss))
    reference = build_cnn(keras)
    reference.set_weights(init_weights)
    theta0 = _numpy([v.value for v in reference.trainable_variables])
    row["agreement"] = {
        "weights_max_abs_diff": _max_abs_diff(first["keras_sam"][0], first["peer"][0]),
        "bn_stats_max_abs_diff": _max_abs_diff(first["keras_sam"][1], first["peer"][1]),
        "update_max_abs": _max_abs_diff(first["keras_sam"][0], theta0),
        "peer_update_max_abs": _max_abs_diff(first["peer"][0], theta0),
        "loss": first["keras_sam"][2],
        "peer_loss": first["peer"][2],
    }
    for runner in runners.values():
        for _ in range(args.warmup - 1):
            runner.step()

    names = list(runners)
    times, _, foreign_cores = common.time_interleaved(runners, names, args.steps)
    row["stats"] = {
        name: {**common.call_stats(times[name]), "first_call_s": compile_s[name]}
        for name in names
    }
    row["foreign_load"] = foreign_cores
    return row


def child_timing(args):
    backend = os.environ["KERAS_BACKEND"]
    common.configure_threads(backend, args.threads)
    import keras

    assert keras.backend.backend() == backend, keras.backend.backend()
    init_weights, batch, params = make_data(keras, args.batch_size)
    rows = []
    for jit in JIT_MODES[backend]:
        start = time.perf_counter()
        row = time_row(backend, jit, args, keras, batch, init_weights)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    print(
        MARKER
        + json.dumps(
            {"backend": backend, "version": common.backend_version(backend), "params": params,
             "rows": rows}
        ),
        flush=True,
    )


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError("no VmRSS")  # pragma: no cover


def _reset_peak():
    """Resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args):
    backend = os.environ["KERAS_BACKEND"]
    common.configure_threads(backend, args.threads)
    import keras

    init_weights, batch, _ = make_data(keras, args.batch_size)
    gc.collect()
    rss_built = _rss_kib()
    reset = _reset_peak()
    jit = args.jit == "1"
    if args.variant == "peer":
        runner = build_peer(backend, jit, keras, batch, init_weights)
    else:
        runner = KerasSAMRunner(backend, jit, keras, batch, init_weights,
                                sam=args.variant == "sam")
    start = time.perf_counter()
    for _ in range(args.warmup + args.memory_steps):
        runner.step()
    steps_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        MARKER
        + json.dumps({"variant": args.variant, "rss_built_kib": rss_built, "peak_kib": peak,
                      "peak_reset": reset, "extra_mib": (peak - rss_built) / 1024.0,
                      "steps_s": steps_s}),
        flush=True,
    )


# ----------------------------------------------------------------------------
# Parent: subprocesses, then the tables.
# ----------------------------------------------------------------------------
def _run(command, backend, args):
    try:
        proc = subprocess.run(
            command,
            env=common.child_env(backend, args.threads),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if args.verbose:
        sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    return {"error": f"exit code {proc.returncode}\n{tail}"}


def _peer_missing(backend):
    module = PEER_MODULES[backend]
    if module is None:
        return None
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {PEERS[backend][0]})"
    return None


def _common_args(args):
    return [
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        f"--memory-steps={args.memory_steps}",
    ]


def run_timing(backend, args):
    missing = _peer_missing(backend)
    if missing:
        return {"backend": backend, "error": missing}
    if args.wait_quiet > 0:
        print(f"[{backend}] waiting for a quiet machine ...", file=sys.stderr, flush=True)
        common.wait_until_quiet(args.wait_quiet)
    print(f"[{backend}] timing ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = _run(
        [sys.executable, "-m", __spec__.name, "--child=timing", *_common_args(args)],
        backend,
        args,
    )
    result.setdefault("backend", backend)
    detail = "; ".join(
        f"{row['jit']}: first calls keras_sam {row['stats']['keras_sam']['first_call_s']:.1f} s, "
        f"peer {row['stats']['peer']['first_call_s']:.1f} s"
        for row in result.get("rows", ())
    )
    print(
        f"[{backend}] timing {'FAILED' if 'error' in result else 'done'} in "
        f"{time.perf_counter() - start:.0f} s" + (f" ({detail})" if detail else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


MEMORY_VARIANTS = ("inner", "sam", "peer")


def run_memory(backend, args):
    """{jit label: {variant: result}} — a fresh process per variant."""
    missing = _peer_missing(backend)
    # --quick: one row per backend, the cheapest to compile (TensorFlow: graph).
    modes = JIT_MODES[backend][-1:] if args.quick else JIT_MODES[backend]
    out = {}
    for jit in modes:
        label = common.JIT_LABELS[(backend, jit)]
        out[label] = {}
        for variant in MEMORY_VARIANTS:
            if variant == "peer" and missing:
                out[label][variant] = {"error": missing}
                continue
            start = time.perf_counter()
            out[label][variant] = _run(
                [sys.executable, "-m", __spec__.name, "--child=memory",
                 f"--variant={variant}", f"--jit={int(jit)}", *_common_args(args)],
                backend,
                args,
            )
            steps_s = out[label][variant].get("steps_s")
            print(
                f"[{backend}] memory {label} {variant} in {time.perf_counter() - start:.0f} s"
                + (f" (steps {steps_s:.1f} s)" if steps_s is not None else ""),
                file=sys.stderr,
                flush=True,
            )
    return out


def _fmt_sci(value):
    return f"{value:.1e}"


def _peer_label(backend, jit_label=None):
    package, name = PEERS[backend]
    if package is None:
        return name + (" (jit_compile)" if jit_label == "XLA" else "")
    return f"{name} {common.package_version(package)}"


def format_timing(results):
    header = [
        "backend", "jit", "peer", "keras_sam SAM ms/step", "peer ms/step", "keras_sam/peer",
        "spread", "other load", "weights Δ after 1 step (update)",
        "BN stats Δ",
    ]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    notes = []
    for result in results:
        backend = result["backend"]
        if "error" in result:
            lines.append("| " + " | ".join([backend, "—", PEERS[backend][1]]
                                           + ["error"] * (len(header) - 3)) + " |")
            notes.append(f"{backend}: {result['error']}")
            continue
        for row in result["rows"]:
            ours, peer = row["stats"]["keras_sam"], row["stats"]["peer"]
            spreads = [(s["p75_ms"] - s["p25_ms"]) / s["median_ms"] for s in (ours, peer)]
            agreement = row["agreement"]
            diff = agreement["weights_max_abs_diff"]
            verdict = "✓" if diff <= AGREE_ATOL else "✗"
            load = row["foreign_load"]
            cells = [
                f"{backend} {result['version']}",
                row["jit"],
                _peer_label(backend, row["jit"]),
                f"{ours['median_ms']:.1f}",
                f"{peer['median_ms']:.1f}",
                f"{ours['median_ms'] / peer['median_ms']:.2f}× "
                f"({ours['min_ms'] / peer['min_ms']:.2f}×)",
                f"±{100 * max(spreads) / 2:.0f}%",
                "n/a" if load is None else f"{load:.2f} cores",
                f"{_fmt_sci(diff)} {verdict} ({_fmt_sci(agreement['update_max_abs'])})",
                _fmt_sci(agreement["bn_stats_max_abs_diff"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), notes


def format_memory(memory):
    header = ["backend", "jit", "inner MiB", "keras_sam SAM MiB", "peer MiB", "SAM/inner",
              "SAM/peer"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    notes = []
    for backend, per_jit in memory.items():
        for label, variants in per_jit.items():
            cells = [backend, label]
            values = {}
            for variant in MEMORY_VARIANTS:
                r = variants.get(variant, {})
                if "error" in r:
                    cells.append("error")
                    notes.append(f"{backend}/{label} {variant}: {r['error']}")
                else:
                    values[variant] = r["extra_mib"]
                    cells.append(f"{r['extra_mib']:.1f}")
                    if not r.get("peak_reset", True):
                        notes.append(f"{backend}/{label} {variant}: peak RSS could not be "
                                     "reset after building; includes import-time peaks")
            for other in ("inner", "peer"):
                if "sam" in values and values.get(other, 0) > 0:
                    cells.append(f"{values['sam'] / values[other]:.2f}×")
                else:
                    cells.append("—")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), notes


def parent_main(args):
    start = time.perf_counter()
    load_before = common.load_average()
    results, memory = [], {}
    for backend in args.backends:
        results.append(run_timing(backend, args))
        if not args.skip_memory:
            memory[backend] = run_memory(backend, args)
    total = time.perf_counter() - start
    params = next((r["params"] for r in results if "params" in r), None)
    versions = (
        f"keras {common.package_version('keras')}, tensorflow {common.package_version('tensorflow', 'tensorflow-cpu')}, "
        f"jax {common.package_version('jax')} (jaxlib {common.package_version('jaxlib')}), torch {common.package_version('torch')}, "
        f"optax {common.package_version('optax')}, "
        f"pytorch-optimizer {common.package_version('pytorch-optimizer', 'pytorch_optimizer')}, "
        f"keras_sam {common.package_version('keras-sam', 'keras_sam')}, Python {platform.python_version()}"
    )
    print(f"## keras_sam SAM vs peers{' (quick)' if args.quick else ''}")
    print()
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- versions: {versions}")
    print(
        f"- machine: {os.cpu_count()} cores ({common.cpu_model()}), {args.threads} thread(s) per "
        f"backend, backends run one after another; load average (1/5/15 min) {load_before} "
        f"before, {common.load_average()} after"
    )
    print(
        f"- model: CIFAR-style CNN, {params} params, batch {args.batch_size}, inputs "
        f"{'×'.join(map(str, IMAGE_SHAPE))}, {NUM_CLASSES} classes; SAM ρ = {RHO} around "
        f"SGD({LR}, momentum={MOMENTUM}) on both sides"
    )
    print()
    print("### Step time: median ms/step")
    print()
    print(
        f"Each side's compiled step on the fixed batch, {args.warmup} warm-up call(s), then "
        f"{args.steps} interleaved rounds; ratio of medians (of minima); spread = larger "
        "half-IQR / median; other load = CPU used by other processes while timing the row. "
        "Agreement — weights Δ: max abs difference between the two sides' trainable weights "
        f"after one step from the same weights (✓ ≤ {AGREE_ATOL:g}), in parentheses the "
        "update's own size max abs(θ₁ − θ₀); BN stats Δ: the same for the BatchNorm moving "
        "statistics."
    )
    print()
    table, notes = format_timing(results)
    print(table)
    print()
    for backend in args.backends:
        print(f"- {backend}: {PEER_NOTES[backend]}")
    for note in notes:
        print(f"- {note}")
    ok = all("error" not in r for r in results)
    if memory:
        print()
        print("### Peak memory: MiB above the built model and data")
        print()
        print(
            f"A fresh process per cell: build model and batch, reset the peak RSS, build the "
            f"optimizer/step, {args.warmup} warm-up + {args.memory_steps} steps; peak RSS "
            "(ru_maxrss) minus the RSS after building. inner = SGD alone through SAMModel."
        )
        print()
        table, notes = format_memory(memory)
        print(table)
        if notes:
            print()
            for note in notes:
                print(f"- {note}")
    print()
    print(f"total {total:.0f} s")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: batch 32, 3 rounds, one memory row per backend",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of " + ",".join(BACKENDS))
    parser.add_argument("--steps", type=int, help="timed steps per side (rounds)")
    parser.add_argument("--warmup", type=int, help="untimed calls per side, the first included")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, help="threads per backend")
    parser.add_argument("--memory-steps", type=int, help="steps after warm-up, memory runs")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory table")
    parser.add_argument("--timeout", type=float, help="seconds per subprocess")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="before timing each backend, wait up to SECONDS until other processes use "
        "< 0.25 cores (shared machines)",
    )
    parser.add_argument("--verbose", action="store_true", help="show child stderr")
    parser.add_argument("--child", choices=("timing", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--jit", choices=("0", "1"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "steps": 3 if quick else 20,
        "warmup": 2 if quick else 3,
        "batch_size": 32 if quick else 128,
        "threads": 1 if quick else (os.cpu_count() or 1),
        "memory_steps": 1 if quick else 10,
        "timeout": 180 if quick else 2400,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "warmup", "batch_size", "threads", "memory_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in args.backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child == "timing":
        child_timing(args)
        return 0
    if args.child == "memory":
        child_memory(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
