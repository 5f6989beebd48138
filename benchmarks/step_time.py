"""Training-step time of sharpness-aware optimizers versus their inner optimizer.

    python -m benchmarks.step_time                  # full run, all backends, both suites
    python -m benchmarks.step_time --quick          # smoke run (< 1.5 min)
    python -m benchmarks.step_time --suite core --backends jax,torch --steps 40
    python -m benchmarks.step_time --suite periodic --wait-quiet 180
    python -m benchmarks.step_time --variants SAM,XSAM --wait-quiet 300

For every backend (TensorFlow with XLA and in plain graph mode, JAX with jit,
PyTorch eager) it times the compiled train function of a small CIFAR-style CNN
(batch 128, 32×32×3 inputs, 10 classes, ~67k parameters) on one fixed batch.
Two suites (`--suite core|periodic|all`, default all), one table each:

**core** — methods whose every step costs the same:

- `inner`: the inner optimizer alone (SGD, momentum 0.9), through `SAMModel`
  compiled with the plain optimizer — Keras' own train step;
- `SAM`, `ASAM`, `SAM k=2`, `SAM f=0.25` (the ascent on a quarter of the
  batch, `ascent_fraction`) (and, opt-in, `GSAM`, `WSAM`, `XSAM`, `XSAM α=1`): the
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

**periodic** — methods that do extra work on one step in p (`PERIODIC`: the
cycle length p, the baseline of the ratio and its target): XSAM's α search
(`search_every=100`, 21 forward passes on one step in 100, standing for an
epoch of 100 steps), X-SAM's eigenvector refresh (q Hessian-vector products
every p steps; official p = q = 5, amortized q = 1 with p = 5, 10),
`every=k` (the SAM step on one step in k, the inner step otherwise) and
LookSAM (k = 5: one look step of two passes, four reuse steps of one). A median
would hide the one expensive step of a cycle, so these are timed by the MEAN
over whole cycles. Each variant's warm-up runs every compiled step variant of
its cycle at least once (the models' host-side clocks just count up outside
`fit`) and, for cycles of < 50 steps, continues to a cycle boundary (the next
step is the expensive one). Then it is timed over an integer number of
consecutive cycles: max(2, `--periodic-steps` // p) cycles of p steps (or
`--cycles`), `--long-cycles` for cycles of ≥ 50 steps — whose window starts
where the compiling warm-up stopped, rather than spend up to a cycle of
untimed steps on aligning it: any 100 consecutive steps still hold exactly one
search. The window is cut into one block of consecutive steps per round,
interleaved with the other variants as above (order rotated); `inner` and
`SAM` (cycle 1) are timed in the same interleaving (`--baseline-steps` each).
Reported for every variant of this suite, the baselines included: total time
/ timed steps (mean ms/step) and ratios of these means, with the target met
(✓) or missed (✗); `spread` is the largest half-IQR of the per-cycle means
(per-step times for `inner` and `SAM`) relative to the mean. Under the
tables, the periodic work that actually ran while timing: the steps the clock
chose for it (exactly one per timed cycle, checked) and the increment of the
optimizer's own counter (`searches`, `eigen_correction.refreshes`, on JAX read
from the carried state; the clock's `sam_steps` for `every=k`) — a refresh
that never ran would make the timing a lie: such a cell is flagged MISMATCH
and the exit code is 1.

Each backend runs in its own subprocess (the Keras backend is fixed per
process), one after the other, with its thread pools sized to the cores given
by `--threads`, so backends never compete for the CPU.

PyTorch on CPU: glibc's malloc returns freed activation buffers to the OS and
page-faults them back in at every step, which costs the SAM step more than the
inner one (SAM/inner 2.24× rather than ~1.98×); `--child-env
MALLOC_MMAP_THRESHOLD_=4294967296 --child-env
MALLOC_TRIM_THRESHOLD_=68719476736` (or jemalloc/tcmalloc) measures without
it, and `--torch-malloc-row` adds one more torch process run with these two
settings, core suite only (its row labelled `eager, malloc env`), after the
default one.

To add a method, add an entry to `VARIANTS`: a name and a factory
`factory(inner_optimizer) -> optimizer to compile with`; a periodic one also
gets an entry in `PERIODIC`.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchmarks.common import (
    IMAGE_SHAPE,
    JIT_LABELS,
    JIT_MODES,
    NUM_CLASSES,
    Runner,
    backend_version,
    build_cnn,
    call_stats,
    child_env,
    configure_threads,
    cpu_model,
    he_uniform,
    load_average,
    package_version,
    quartiles,
    time_interleaved,
    wait_until_quiet,
)

BACKENDS = ("tensorflow", "jax", "torch")
BASELINE = "inner"
MARKER = "@@STEP_TIME_JSON@@"



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


def _amortized_x_sam(every, iterations=1, refresh_batch_size=None):
    """SAM with X-SAM's correction, `iterations` warm-started power iterations
    per refresh after `amortized()`'s warm-up (one extra first refresh)."""

    def factory(inner):
        import keras_sam

        # = EigenCorrection.amortized(every=every) when iterations == 1.
        correction = keras_sam.EigenCorrection(
            every=every, power_iterations=iterations, warmup_iterations=10,
            refresh_batch_size=refresh_batch_size,
        )
        return keras_sam.SAM(inner, rho=0.05, eigen_correction=correction)

    return factory


VARIANTS = {
    BASELINE: lambda inner: inner,
    "SAM": _method("SAM", rho=0.05),
    "ASAM": _method("ASAM", rho=0.5),
    "SAM k=2": _method("SAM", rho=0.05, steps=2),
    "GSAM": _method("GSAM", rho=0.05, alpha=0.4),
    "WSAM": _method("WSAM", rho=0.05, gamma=0.9),
    # The ascent on the first quarter of the batch: about 1.25 passes.
    "SAM f=0.25": _method("SAM", rho=0.05, ascent_fraction=0.25),
    # Opt-in in the core suite (--variants): timed by medians, i.e. XSAM's
    # steady state without its α search (on the first step of an epoch).
    "XSAM": _method("XSAM"),
    "XSAM α=1": _method("XSAM", alpha=1.0),
    # The periodic suite (see PERIODIC).
    "XSAM search/100": _method("XSAM", search_every=100),
    "X-SAM": _method("EigenCorrectedSAM", refresh_every=5, power_iterations=5),
    "X-SAM amortized p=5": _amortized_x_sam(5),
    "X-SAM amortized p=6": _amortized_x_sam(6),
    "X-SAM amortized p=5 b=32": _amortized_x_sam(5, refresh_batch_size=32),
    "X-SAM amortized p=5 b=64": _amortized_x_sam(5, refresh_batch_size=64),
    "X-SAM amortized p=7": _amortized_x_sam(7),
    "X-SAM amortized p=10": _amortized_x_sam(10),
    "X-SAM amortized p=10 q=2": _amortized_x_sam(10, iterations=2),
    "SAM every=2": _method("SAM", rho=0.05, every=2),
    "SAM every=5": _method("SAM", rho=0.05, every=5),
    "LookSAM k=5": _method("LookSAM", rho=0.05, k=5, alpha=0.7),
    # --quick's periodic smoke test: cycles of a few steps.
    "XSAM search/4": _method("XSAM", search_every=4),
    "X-SAM amortized p=2": _amortized_x_sam(2),
}

# What runs by default (in this order); --variants selects any subset.
DEFAULT_VARIANTS = (BASELINE, "SAM", "ASAM", "SAM k=2", "SAM f=0.25")
# --quick: compilation dominates, so only the pair the target is about.
QUICK_VARIANTS = (BASELINE, "SAM")


class Periodic:
    """A variant whose step cost repeats with period `cycle` steps.

    `work`: what its one expensive step in a cycle does (how it is recognised
    among the step variants the clock chooses, and which counter confirms it):
    "search" (XSAM's α search; `optimizer.searches`), "refresh" (X-SAM's
    eigenvector refresh; `optimizer.eigen_correction.refreshes`) or "sam"
    (the sharpness-aware step of `every=k`; the clock's `sam_steps`).
    `baseline`: the variant the mean is compared with; `target`: the largest
    ratio wanted (None: reported only).
    """

    def __init__(self, cycle, work, baseline, target=None):
        self.cycle, self.work, self.baseline, self.target = cycle, work, baseline, target

    def is_work(self, variant):
        """`variant`: a `keras_sam.optimizers.variants.StepVariant`."""
        if self.work == "search":
            return variant.phase == "search"
        if self.work == "refresh":
            return variant.refresh_iterations > 0
        if self.work == "look":
            return variant.phase == "look"
        return not variant.plain


PERIODIC = {
    # 1 search + 99 plain XSAM steps: an epoch of 100 steps.
    "XSAM search/100": Periodic(100, "search", "SAM", 1.03),
    "X-SAM": Periodic(5, "refresh", "SAM"),
    "X-SAM amortized p=5": Periodic(5, "refresh", "SAM", 1.15),
    "X-SAM amortized p=6": Periodic(6, "refresh", "SAM", 1.15),
    "X-SAM amortized p=5 b=32": Periodic(5, "refresh", "SAM", 1.15),
    "X-SAM amortized p=5 b=64": Periodic(5, "refresh", "SAM", 1.15),
    "X-SAM amortized p=7": Periodic(7, "refresh", "SAM", 1.15),
    "X-SAM amortized p=10": Periodic(10, "refresh", "SAM", 1.15),
    "X-SAM amortized p=10 q=2": Periodic(10, "refresh", "SAM", 1.15),
    # One SAM step (2 passes) and k - 1 inner steps: (1 + 1/k) × inner, +5 %.
    "SAM every=2": Periodic(2, "sam", BASELINE, round((1 + 1 / 2) * 1.05, 3)),
    "SAM every=5": Periodic(5, "sam", BASELINE, round((1 + 1 / 5) * 1.05, 3)),
    # One look step (2 passes) and k - 1 reuse steps (1 pass each): issue's target 1.3.
    "LookSAM k=5": Periodic(5, "look", BASELINE, 1.3),
    "XSAM search/4": Periodic(4, "search", "SAM"),
    "X-SAM amortized p=2": Periodic(2, "refresh", "SAM"),
}
# The periodic suite's baselines, timed in the same interleaving (cycle 1).
PERIODIC_BASELINES = (BASELINE, "SAM")
DEFAULT_PERIODIC = (
    "XSAM search/100",
    "X-SAM",
    "X-SAM amortized p=5",
    "X-SAM amortized p=10",
    "SAM every=2",
    "SAM every=5",
    "LookSAM k=5",
)
QUICK_PERIODIC = ("X-SAM amortized p=2", "SAM every=2")
# Cycles of at least this many steps are timed `--long-cycles` times.
LONG_CYCLE = 50
SUITES = ("core", "periodic", "all")
# --torch-malloc-row: glibc malloc keeps freed buffers (no page faults).
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_=4294967296", "MALLOC_TRIM_THRESHOLD_=68719476736")


# ----------------------------------------------------------------------------
# Child: one backend, fixed by KERAS_BACKEND before Keras is imported.
# ----------------------------------------------------------------------------
def _scalar(value):
    try:
        return float(value)
    except Exception:  # pragma: no cover
        return float("nan")


def _int(value):
    import numpy as np

    return int(np.asarray(value))


def read_counters(runner):
    """The counters of the periodic work, read where the step keeps them.

    TensorFlow, torch: the optimizer's variables. JAX: the jitted step carries
    the state and never writes the variables back here, so read the state the
    runner carries (same order as `optimizer.variables`).
    """
    model = runner.model
    optimizer = model.optimizer
    found = {}
    if hasattr(optimizer, "searches"):
        found["searches"] = optimizer.searches
    correction = getattr(optimizer, "eigen_correction", None)
    if correction is not None and hasattr(correction, "refreshes"):
        found["refreshes"] = correction.refreshes
    counters = {}
    for key, variable in found.items():
        if runner.state is not None:
            index = next(i for i, v in enumerate(optimizer.variables) if v is variable)
            counters[key] = _int(runner.state[2][index])
        else:
            from keras import ops

            counters[key] = _int(ops.convert_to_numpy(variable.value))
    clock = model.training_clock
    counters["clock_steps"] = clock.step
    counters["sam_steps"] = clock.sam_steps
    if hasattr(optimizer, "k"):  # LookSAM: the look steps t % k == 0 before this one
        counters["looks"] = -(-clock.step // optimizer.k)
    return counters


def next_variant(runner):
    """The compiled step variant the dispatcher will run on the next call
    (the same host-side choice, made outside the timed call)."""
    from keras_sam.optimizers.variants import DEFAULT

    optimizer = runner.model.optimizer
    if not hasattr(optimizer, "_select_variant"):
        return DEFAULT
    return optimizer._select_variant(runner.model.training_clock)


def cycle_variants(runner, cycle, calls):
    """Step variants the next `calls + 2·cycle` steps use: the index of the
    first use of each, found on a copy of the model's clock."""
    clock = copy.copy(runner.model.training_clock)
    optimizer = runner.model.optimizer
    first = {}
    for i in range(calls + 2 * cycle):
        variant = optimizer._select_variant(clock)
        first.setdefault(variant, i)
        clock.advance(variant, skipped_steps=clock.skipped_steps)  # a finite step
    return first


def warm_up_periodic(runner, spec, minimum, align=True):
    """Untimed calls until (a) `minimum` calls and (b) every step variant of
    the cycle has run (been compiled); with `align`, also (c) until the clock
    is at a cycle boundary: the next step is the cycle's expensive one.

    Without `align` (cycles of >= LONG_CYCLE steps, where aligning would cost
    up to a whole cycle of untimed steps) the timed window starts where the
    warm-up stopped: any `cycle` consecutive steps of the steady state still
    hold exactly one expensive step (checked per cycle after timing).
    Returns the number of calls.
    """
    first = cycle_variants(runner, spec.cycle, minimum)
    needed = max(minimum, max(first.values()) + 1)
    calls = 0
    while calls < needed or (align and not spec.is_work(next_variant(runner))):
        runner.step()
        calls += 1
        if calls > needed + spec.cycle:
            raise RuntimeError("the clock never reached a cycle boundary")
    return calls


def _blocks(total, rounds):
    """`total` consecutive calls cut into `rounds` blocks, as even as possible."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def build_runner(name, backend, jit, keras, batch, init_weights):
    import keras_sam

    model_core = build_cnn(keras)
    model_core.set_weights(init_weights)
    model = keras_sam.SAMModel(model_core)
    model.compile(
        optimizer=VARIANTS[name](inner_optimizer()),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit,
    )
    return Runner(backend, model, batch)


def time_row(backend, jit, args, keras, batch, init_weights):
    core = list(args.variants) if args.suite in ("core", "all") else []
    periodic = list(args.periodic) if args.suite in ("periodic", "all") else []
    if periodic:
        periodic = [n for n in PERIODIC_BASELINES if n not in periodic] + periodic
    wanted = list(dict.fromkeys(core + periodic))
    runners, errors = {}, {}
    for name in wanted:
        try:
            runners[name] = build_runner(name, backend, jit, keras, batch, init_weights)
        except Exception as e:  # a broken variant must not hide the others
            errors[name] = f"{type(e).__name__}: {e}"

    compile_s, logs, warm = {}, {}, {}

    def first_calls(names, count):
        """First call (trace / compile) of each runner, then `count` - 1 more."""
        for name in names:
            if name not in runners or name in warm:
                continue
            runner = runners[name]
            try:
                start = time.perf_counter()
                runner.step()
                compile_s[name] = time.perf_counter() - start
                for _ in range(count - 1):
                    runner.step()
                warm[name] = count
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
                del runners[name]

    row = {"backend": backend, "jit": JIT_LABELS[(backend, jit)]}

    # -- core: per-call times, medians ----------------------------------------
    if core:
        first_calls(core, args.warmup)
        names = [n for n in core if n in runners]
        times, core_logs, foreign_cores = time_interleaved(runners, names, args.steps)
        logs.update(core_logs)
        results = {}
        for name in names:
            last = logs.get(name, {})
            results[name] = {
                **call_stats(times[name]),
                "first_call_s": compile_s[name],
                "loss": _scalar(last.get("loss", float("nan"))),
                "skipped_steps": _scalar(last.get("skipped_steps", 0)),
            }
        for name in core:
            if name in errors:
                results[name] = {"error": errors[name]}
        row["variants"] = results
        row["foreign_load"] = foreign_cores

    # -- periodic: whole cycles, means ------------------------------------------
    if periodic:
        plan = {}  # name -> (cycle, cycles, warm-up calls)
        for name in periodic:
            spec = PERIODIC.get(name)
            if spec is None:  # a baseline: cycle 1
                first_calls([name], args.warmup)
                if name in runners:
                    plan[name] = (1, args.baseline_steps, warm[name])
                continue
            if name not in runners:
                continue
            try:
                start = time.perf_counter()
                long = spec.cycle >= LONG_CYCLE
                calls = warm_up_periodic(runners[name], spec, args.warmup, align=not long)
                compile_s[name] = time.perf_counter() - start  # the whole warm-up
                if long:
                    cycles = args.long_cycles
                elif args.cycles:
                    cycles = args.cycles
                else:
                    cycles = max(2, args.periodic_steps // spec.cycle)
                plan[name] = (spec.cycle, cycles, calls)
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
                del runners[name]
        names = [n for n in periodic if n in plan]
        blocks = {n: _blocks(plan[n][0] * plan[n][1], args.periodic_rounds) for n in names}
        before = {n: read_counters(runners[n]) for n in names if n in PERIODIC}
        chosen = {n: [] for n in names}

        def record_variant(name):  # the dispatcher's own choice, made here untimed
            if name in PERIODIC:
                chosen[name].append(next_variant(runners[name]))

        times, periodic_logs, foreign_cores = time_interleaved(
            runners, names, args.periodic_rounds,
            calls=lambda name, round_: blocks[name][round_], before_call=record_variant,
        )
        logs.update(periodic_logs)
        results = {}
        for name in names:
            cycle, cycles, warmup_calls = plan[name]
            ms = [1000.0 * t for t in times[name]]
            assert len(ms) == cycle * cycles, (name, len(ms))
            per_cycle = [statistics.fmean(ms[i:i + cycle]) for i in range(0, len(ms), cycle)]
            p25, _, p75 = quartiles(per_cycle)
            mean = sum(ms) / len(ms)
            last = logs.get(name, {})
            entry = {
                "mean_ms": mean,
                "median_ms": statistics.median(ms),
                "p25_ms": p25,
                "p75_ms": p75,
                "n": len(ms),
                "cycle": cycle,
                "cycles": cycles,
                "warmup_calls": warmup_calls,
                "first_call_s": compile_s.get(name, float("nan")),
                "loss": _scalar(last.get("loss", float("nan"))),
                "skipped_steps": _scalar(last.get("skipped_steps", 0)),
            }
            spec = PERIODIC.get(name)
            if spec is not None:
                after = read_counters(runners[name])
                work = [spec.is_work(v) for v in chosen[name]]
                per_cycle_work = [sum(work[i:i + cycle]) for i in range(0, len(work), cycle)]
                work_ms = [t for t, w in zip(ms, work) if w]
                rest_ms = [t for t, w in zip(ms, work) if not w]
                labels = [str(v) for v in chosen[name]]
                counter = {"search": "searches", "refresh": "refreshes", "sam": "sam_steps",
                           "look": "looks"}[spec.work]
                entry.update(
                    {
                        "work": spec.work,
                        "expected_work": cycles,
                        "chosen_work": sum(work),
                        "counter": counter,
                        "counter_before": before[name].get(counter),
                        "counter_after": after.get(counter),
                        "variants_chosen": {
                            v: labels.count(v) for v in sorted(set(labels))
                        },
                        "clock_start": before[name]["clock_steps"],
                        "phase": before[name]["clock_steps"] % cycle,
                        "one_per_cycle": all(n == 1 for n in per_cycle_work),
                        "work_step_ms": statistics.median(work_ms) if work_ms else None,
                        "other_step_ms": statistics.median(rest_ms) if rest_ms else None,
                    }
                )
            results[name] = entry
        for name in periodic:
            if name in errors:
                results[name] = {"error": errors[name]}
        row["periodic"] = results
        row["periodic_foreign_load"] = foreign_cores
    return row


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
def run_child(backend, args, extra_env=(), label=None, suite=None):
    """One backend in its own process; `extra_env` (KEY=VALUE) on top of
    `--child-env`, `label` appended to its rows' jit column, `suite` instead
    of `--suite`."""
    command = [
        sys.executable,
        "-m",
        __spec__.name,
        "--child",
        f"--suite={suite or args.suite}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        f"--variants={','.join(args.variants)}",
        f"--periodic={','.join(args.periodic)}",
        f"--cycles={args.cycles}",
        f"--periodic-steps={args.periodic_steps}",
        f"--long-cycles={args.long_cycles}",
        f"--periodic-rounds={args.periodic_rounds}",
        f"--baseline-steps={args.baseline_steps}",
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            env=child_env(backend, args.threads, list(args.child_env) + list(extra_env)),
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
            if label:
                for row in result["rows"]:
                    row["jit"] = f"{row['jit']}, {label}"
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
            if "variants" not in row:
                continue
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


def _ms_cell(stats, key="median_ms"):
    if not stats:
        return "—"
    if "error" in stats:
        return "error"
    return f"{stats[key]:.1f}"


def _work_ok(stats):
    """The periodic work ran exactly once per timed cycle (clock and counter)."""
    if "counter_after" not in stats:
        return True
    before, after = stats["counter_before"], stats["counter_after"]
    return (
        stats["chosen_work"] == stats["expected_work"]
        and stats.get("one_per_cycle", True)
        and before is not None
        and after is not None
        and after - before == stats["expected_work"]
    )


WORK_NAMES = {"search": ("search", "searches"), "refresh": ("refresh", "refreshes"),
              "sam": ("SAM step", "SAM steps"), "look": ("look step", "look steps")}


def format_periodic_tables(results, periodic):
    """The periodic suite: one table per baseline, and the work that ran."""
    names = [n for n in periodic if n in PERIODIC]
    groups = {}
    for name in names:
        groups.setdefault(PERIODIC[name].baseline, []).append(name)
    tables, notes = [], []
    rows = [
        (result, row)
        for result in results
        if "rows" in result
        for row in result["rows"]
        if "periodic" in row
    ]
    for result in results:
        if "error" in result:
            notes.append(f"{result['backend']}: {result['error']}")

    for baseline, members in groups.items():
        shown = [BASELINE] + ([baseline] if baseline != BASELINE else [])
        header = ["backend", "jit"] + [f"{n} ms/step" for n in shown]
        if baseline != BASELINE:
            header.append(f"{baseline}/{BASELINE}")
        for name in members:
            target = PERIODIC[name].target
            header += [
                f"{name} ms/step",
                f"{name}/{baseline}" + (f" (target ≤ {target:g})" if target else ""),
            ]
        header += ["spread", "other load"]
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
        ]
        for result, row in rows:
            stats = row["periodic"]
            cells = [f"{row['backend']} {result['version']}", row["jit"]]
            cells += [_ms_cell(stats.get(n), "mean_ms") for n in shown]
            if baseline != BASELINE:
                cells.append(_ratio_cell(stats.get(baseline), stats.get(BASELINE)))
            for name in members:
                cells.append(_ms_cell(stats.get(name), "mean_ms"))
                cells.append(
                    _ratio_cell(stats.get(name), stats.get(baseline), PERIODIC[name].target)
                )
            spreads = [
                (stats[n]["p75_ms"] - stats[n]["p25_ms"]) / stats[n]["mean_ms"]
                for n in shown + members
                if "mean_ms" in stats.get(n, {})
            ]
            cells.append(f"±{100 * max(spreads) / 2:.0f}%" if spreads else "—")
            load = row.get("periodic_foreign_load")
            cells.append("n/a" if load is None else f"{load:.2f} cores")
            lines.append("| " + " | ".join(cells) + " |")
        tables.append((baseline, "\n".join(lines)))

    # What ran while timing: the clock's choices and the optimizers' counters.
    header = ["backend", "jit"] + names
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for result, row in rows:
        stats = row["periodic"]
        cells = [f"{row['backend']} {result['version']}", row["jit"]]
        for name in names:
            s = stats.get(name)
            if not s or "error" in s:
                cells.append("error" if s else "—")
                continue
            work = WORK_NAMES[s["work"]][s["chosen_work"] != 1]
            counter = s["counter"]
            cell = (
                f"{s['chosen_work']} {work} in {s['n']} steps "
                f"({s['cycles']}×{s['cycle']}"
                + (f", phase {s['phase']}" if s.get("phase") else "")
                + f"); {counter} {s['counter_before']}→{s['counter_after']}"
            )
            if s["work_step_ms"] is not None and s["other_step_ms"] is not None:
                cell += f"; {s['work_step_ms']:.0f} vs {s['other_step_ms']:.0f} ms"
            if not _work_ok(s):
                cell += " **MISMATCH**"
                notes.append(
                    f"{row['backend']}/{row['jit']} {name}: expected {s['expected_work']} "
                    f"{work} while timed, the clock chose {s['chosen_work']} and "
                    f"{counter} went {s['counter_before']}→{s['counter_after']}: "
                    "its timing does not measure the method"
                )
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    for result, row in rows:
        for name, s in row["periodic"].items():
            if "error" in s:
                notes.append(f"{row['backend']}/{row['jit']} {name}: {s['error']}")
            elif s.get("skipped_steps"):
                notes.append(
                    f"{row['backend']}/{row['jit']} {name}: "
                    f"{s['skipped_steps']:.0f} skipped steps (non-finite)"
                )
    return tables, "\n".join(lines), notes


def _ratio_cell(stats, base, target=None):
    if not stats or not base or "mean_ms" not in stats or "mean_ms" not in base:
        return "—"
    ratio = stats["mean_ms"] / base["mean_ms"]
    cell = f"{ratio:.3f}×"
    if target:
        cell += " ✓" if ratio <= target else " ✗"
    if not _work_ok(stats):
        cell += " (!)"
    return cell


def _run_backend(backend, args, extra_env=(), label=None, suite=None):
    name = backend + (f" ({label})" if label else "")
    if args.wait_quiet > 0:
        print(f"[{name}] waiting for a quiet machine ...", file=sys.stderr, flush=True)
        wait_until_quiet(args.wait_quiet)
    print(f"[{name}] running ...", file=sys.stderr, flush=True)
    result = run_child(backend, args, extra_env, label, suite)
    if "error" not in result:
        detail = ", ".join(f"{row['jit']} {row['seconds']:.0f} s" for row in result["rows"])
        print(
            f"[{name}] done in {result['seconds']:.0f} s ({detail})", file=sys.stderr, flush=True
        )
    else:
        print(f"[{name}] FAILED", file=sys.stderr, flush=True)
    return result


def parent_main(args):
    start = time.perf_counter()
    load_before = load_average()
    results = []
    for backend in args.backends:
        results.append(_run_backend(backend, args))
    malloc_row = args.torch_malloc_row and "torch" in args.backends and args.suite != "periodic"
    if malloc_row:
        # The core suite only: the allocator's cost is per pass, what SAM/inner shows.
        results.append(_run_backend("torch", args, MALLOC_ENV, "malloc env", suite="core"))
    total = time.perf_counter() - start

    params = next(
        (row["params"] for r in results if "rows" in r for row in r["rows"]), None
    )
    versions = (
        f"keras {package_version('keras')}, tensorflow {package_version('tensorflow', 'tensorflow-cpu')}, "
        f"jax {package_version('jax')} (jaxlib {package_version('jaxlib')}), torch {package_version('torch')}, "
        f"keras_sam {package_version('keras-sam', 'keras_sam')}, Python {platform.python_version()}"
    )
    print(f"## keras_sam step time{' (quick)' if args.quick else ''}")
    print()
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- versions: {versions}")
    print(
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), {args.threads} thread(s) "
        "per backend, backends run one after another; load average (1/5/15 min) "
        f"{load_before} before, {load_average()} after"
    )
    print(
        f"- model: CIFAR-style CNN, {params} params, batch {args.batch_size}, "
        f"inputs {'×'.join(map(str, IMAGE_SHAPE))}, {NUM_CLASSES} classes; "
        f"inner = SGD(0.05, momentum=0.9) through SAMModel"
    )
    if args.child_env:
        print(f"- extra environment: {' '.join(args.child_env)}")
    if malloc_row:
        print(
            f"- `eager, malloc env` row (core suite only): torch again, its process run "
            f"with {' '.join(MALLOC_ENV)} (glibc malloc keeps freed buffers instead of "
            "returning them to the OS and page-faulting them back at every step)"
        )
    ok = all("error" not in r for r in results)

    if args.suite in ("core", "all"):
        print()
        print("### Per-step cost: median ms/step")
        print()
        print(
            f"Compiled train function on a fixed batch, {args.warmup} warm-up "
            f"call(s), then {args.steps} interleaved rounds; medians; "
            "ratios of medians (of minima); spread = largest half-IQR / median in the "
            "row; other load = CPU used by other processes while timing the row."
        )
        print()
        table, notes = format_table(results, args.variants)
        print(table)
        if notes:
            print()
            for note in notes:
                print(f"- {note}")

    if args.suite in ("periodic", "all"):
        long_names = [n for n in args.periodic if PERIODIC[n].cycle >= LONG_CYCLE]
        short_names = [n for n in args.periodic if PERIODIC[n].cycle < LONG_CYCLE]
        counts = []
        if short_names:
            if args.cycles:
                counts.append(f"{args.cycles} cycles each of {', '.join(short_names)}")
            else:
                counts.append(
                    "; ".join(
                        f"{n} {max(2, args.periodic_steps // PERIODIC[n].cycle)}×"
                        f"{PERIODIC[n].cycle}"
                        for n in short_names
                    )
                )
        if long_names:
            counts.append(
                "; ".join(f"{n} {args.long_cycles}×{PERIODIC[n].cycle}" for n in long_names)
            )
        print()
        print("### Periodic methods: mean ms/step over whole cycles")
        print()
        print(
            "Each variant is warmed up (every compiled step variant run once; for "
            f"cycles < {LONG_CYCLE} steps, on to a cycle boundary, so that the first "
            "timed step is the expensive one), then timed over whole consecutive "
            "cycles (cycles × steps: "
            + "; ".join(counts)
            + f"), {BASELINE} and SAM over {args.baseline_steps} steps each, in "
            f"{args.periodic_rounds} interleaved rounds (one block of consecutive "
            "steps per variant per round, the order rotated). A cycle of "
            f">= {LONG_CYCLE} steps is timed from where its warm-up stopped (phase "
            "below): its window is still whole cycles, each holding exactly one "
            "expensive step (checked). Reported for every variant here, the "
            "baselines included: MEAN ms/step = total time / timed steps, and "
            "ratios of these means (✓/✗: target met or missed); spread = largest "
            "half-IQR of the per-cycle means (per-step for the baselines) / mean; "
            "other load = CPU used by other processes while timing the row."
        )
        tables, work_table, notes = format_periodic_tables(results, args.periodic)
        for baseline, table in tables:
            print()
            title = (
                "Against SAM (periodic extra work on top of the SAM step)"
                if baseline == "SAM"
                else f"Against {baseline} (`every=k`: SAM on one step in k)"
            )
            print(f"**{title}**")
            print()
            print(table)
        print()
        print(
            "**Periodic work that ran while timing** (steps on which the clock chose "
            "it / timed steps (cycles × length); the optimizer's counter before → "
            "after timing, read from the carried state on JAX; median ms of those "
            "steps vs the other steps)"
        )
        print()
        print(work_table)
        if notes:
            print()
            for note in notes:
                print(f"- {note}")
        for result in results:
            for row in result.get("rows", ()):
                for s in row.get("periodic", {}).values():
                    if not _work_ok(s):
                        ok = False
    print()
    print(f"total {total:.0f} s")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1.5 minutes")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated subset of "
        + ",".join(BACKENDS)
    )
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="all",
        help="core: per-step medians (--variants); periodic: mean over whole "
        "cycles (--periodic); all: both (default)",
    )
    parser.add_argument(
        "--variants",
        help="core suite, comma-separated subset of: "
        f"{', '.join(n for n in VARIANTS if n not in PERIODIC)} "
        f"({BASELINE} is always run); default {','.join(DEFAULT_VARIANTS)}, with "
        f"--quick {','.join(QUICK_VARIANTS)}",
    )
    parser.add_argument(
        "--periodic",
        help=f"periodic suite, comma-separated subset of: {', '.join(PERIODIC)} "
        f"({', '.join(PERIODIC_BASELINES)} always run); default "
        f"{','.join(DEFAULT_PERIODIC)}, with --quick {','.join(QUICK_PERIODIC)}",
    )
    parser.add_argument("--steps", type=int, help="core: timed steps per variant (rounds)")
    parser.add_argument("--warmup", type=int, help="untimed calls per variant (at least)")
    parser.add_argument(
        "--periodic-steps",
        type=int,
        help=f"periodic: a variant with a cycle of p < {LONG_CYCLE} steps is timed "
        "over max(2, N // p) cycles",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=0,
        help=f"periodic: timed cycles per variant with a cycle < {LONG_CYCLE} steps "
        "(instead of --periodic-steps)",
    )
    parser.add_argument(
        "--long-cycles", type=int, help=f"periodic: timed cycles of cycles >= {LONG_CYCLE} steps"
    )
    parser.add_argument(
        "--baseline-steps", type=int, help="periodic: timed steps of inner and SAM each"
    )
    parser.add_argument("--periodic-rounds", type=int, help="periodic: interleaved rounds")
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
    parser.add_argument(
        "--torch-malloc-row",
        action="store_true",
        help="one more torch row, its process run with "
        + " ".join(MALLOC_ENV)
        + " on top of --child-env",
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
        "periodic_steps": 4 if quick else 20,
        "long_cycles": 2,
        "baseline_steps": 4 if quick else 40,
        "periodic_rounds": 2 if quick else 10,
        "batch_size": 32 if quick else 128,
        "threads": 1 if quick else (os.cpu_count() or 1),
        "timeout": 180 if quick else 2400,
        "variants": ",".join(QUICK_VARIANTS if quick else DEFAULT_VARIANTS),
        "periodic": ",".join(QUICK_PERIODIC if quick else DEFAULT_PERIODIC),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.cycles < 0:
        parser.error("--cycles must be >= 1 (0: from --periodic-steps)")
    for key in ("steps", "warmup", "periodic_steps", "long_cycles", "baseline_steps", "periodic_rounds"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")

    for item in args.child_env:
        if "=" not in item or not item.partition("=")[0]:
            parser.error(f"--child-env takes KEY=VALUE, received {item!r}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in args.backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    core_names = [n for n in VARIANTS if n not in PERIODIC]
    for name in variants:
        if name in PERIODIC:
            parser.error(
                f"{name!r} is periodic: a median would hide its expensive step; "
                "time it with --periodic"
            )
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(core_names)}")
    args.variants = [BASELINE] + [v for v in variants if v != BASELINE]
    periodic = [v.strip() for v in args.periodic.split(",") if v.strip()]
    for name in periodic:
        if name not in PERIODIC:
            parser.error(f"unknown periodic variant {name!r}; choose from {', '.join(PERIODIC)}")
    args.periodic = list(dict.fromkeys(periodic))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
