"""Test accuracy of SGD, SAM, XSAM, X-SAM, GSAM, WSAM and ASAM on a CIFAR-10 subset.

    python -m benchmarks.generalization > generalization.md        # full run (~60-70 min, 2 workers)
    python -m benchmarks.generalization --quick                     # smoke run (< 60 s)
    python -m benchmarks.generalization --report benchmarks/results/generalization.jsonl
    python -m benchmarks.generalization --seeds 5                   # more seeds: only the new runs run

What is measured. Every method trains `common.build_vgg_style_cnn` (four
Conv-BN-ReLU stages of 32, 64, 128, 256 channels with max-pooling, global
average pool, Dense 10: 392,426 parameters) from scratch on the same fixed,
class-balanced subset of the CIFAR-10 training set (`--train-size` images,
default 2,000: the first `train-size / 10` of each class in official order,
from the local copy in `--data-dir`; normalised with the CIFAR-10 mean/std; no
augmentation), with the same budget: `--epochs` (16) epochs of batch
`--batch-size` (32; the remainder of each epoch dropped), inner optimizer
SGD(momentum 0.9) with the learning rate `--lr` (0.05) decayed to 0 by a
cosine over all steps, L2 weight decay `--weight-decay` (5e-4: regularizers of
wd/2 on the kernels, gradient wd·θ, inside every ascent and descent gradient
as in Foret et al.'s code). For a seed s, every method starts from the same
initial weights (Glorot uniform drawn with NumPy from s:
`common.numpy_glorot_uniform`) and sees the same batches in the same order
(one NumPy permutation per epoch from s), so differences between methods are
paired by seed.

Why this protocol. Sharpness-aware methods are expected to help once SGD fits
its training set: in an earlier calibration on this machine a 73k-parameter
CNN on 10,000 augmented images for 10 epochs underfit (train accuracy ~66 %)
and SAM was 1.2 points below SGD there. With `common.build_cnn` (66,794
parameters) SGD reached only ~90 % training accuracy on 1,000 images in 28
epochs; this wider, cheaper-per-image CNN reached 100 % (SAM 99.7 %) on 2,000 images in 20 epochs, and the budget then
fixed the epochs at 16. When the protocol was chosen (TensorFlow graph mode,
one thread, another process busy on the second core) a 20-epoch run took
~80 s of training for SGD and ~155 s for SAM, plus ~13 s of start-up and
evaluation; TensorFlow's graph mode was ~1.7× faster per SGD step than JAX on
one thread, hence the default backend.

Methods (`common.METHODS`, the papers' / official code's defaults, as in
examples/cifar10.py):

    SGD     the inner SGD alone (through SAMModel, which then trains as Keras does)
    SAM     keras_sam.SAM(sgd, rho=0.05)
    XSAM    keras_sam.XSAM(sgd, rho=0.15, rho_max=0.3)       dynamic α, searched every epoch
    X-SAM   keras_sam.EigenCorrectedSAM(sgd, rho=0.05, alpha=0.2, refresh_every=5, power_iterations=5)
    GSAM    keras_sam.GSAM(sgd, rho=0.05, alpha=0.4)
    WSAM    keras_sam.WSAM(sgd, rho=0.05, gamma=0.9)
    ASAM    keras_sam.ASAM(sgd, rho=0.5, eta=0.01)

and the XSAM paper's multi-step ablation at this scale: SAM and XSAM with
`steps=k` ascent steps (ρ the total path length) for k in `--steps` (1, 2, 5).

Reported (markdown on stdout; progress on stderr): per method, the mean ±
sample standard deviation over seeds of the test accuracy (on the whole 10,000-
image test set, `--test-size`) and test cross-entropy, and of the final
training accuracy and cross-entropy (evaluated after training on the whole
training subset, inference mode, without the L2 term), and the seconds per run;
the multi-step table; then, for each comparison the project's issue asks
about (SGD < SAM, SAM < XSAM, SAM < X-SAM; SAM degrading with k while XSAM
does not), whether it held (the sign of the mean difference), the difference
with its two-sample standard error sqrt(s_a²/n_a + s_b²/n_b) (and the paired
one, from the per-seed differences), whether |difference| > 2 standard errors,
and how many seeds per method a difference of that size would need for
|d| = 2 SE with the observed standard deviations: n = 4 (s_a² + s_b²) / d².

How it runs. Every (method, k, seed) is a separate subprocess on one thread
(OMP/TF/XLA/torch thread pools set to 1), `--workers` of them at a time (default
2, one per core of the CI machine); the parent never imports Keras. Each
finished run is appended as one JSON line to `--results` (default
benchmarks/results/generalization.jsonl; `--quick`: a new temporary file) with
the protocol it ran under; a rerun with the same protocol skips the runs
already in the file (resume after an interruption, or add seeds), and
`--report FILE` rebuilds the tables from a file without training. Runs are
ordered seed by seed, the most expensive first within a seed.

`--quick`: 250 training images, 500 test images, batch 32, 1 epoch, 1 seed,
SGD and SAM only, k = 1: checks that everything runs, says nothing about
generalization.
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import common

MARKER = "@@GENERALIZATION_JSON@@"
MAIN_METHODS = ("sgd", "sam", "xsam", "x-sam", "gsam", "wsam", "asam")
MULTI_STEP_METHODS = ("sam", "xsam")
DEFAULT_RESULTS = os.path.join(common.REPO, "benchmarks", "results", "generalization.jsonl")

# Protocol (the arguments that change the result of a run); quick values for --quick.
FULL = dict({k: v for k, v in common.SUBSET_PROTOCOL.items() if k != "momentum"},
            seeds=3, methods=",".join(MAIN_METHODS), steps="1,2,5")
QUICK = dict(train_size=256, test_size=500, epochs=1, batch_size=32, lr=0.05,
             weight_decay=5e-4, seeds=1, methods="sgd,sam", steps="1")
PROTOCOL_KEYS = ("backend", "jit_compile", "train_size", "test_size", "epochs", "batch_size",
                 "lr", "momentum", "weight_decay")
JIT_AUTO = {"jax": True, "tensorflow": False, "torch": False}

# Relative cost of a run (forward-backward passes per step, X-SAM's refresh
# included): orders the runs (expensive first) and gives the remaining time.
COST = {"sgd": 1.0, "sam": 2.0, "asam": 2.1, "gsam": 2.0, "wsam": 2.0, "xsam": 2.1, "x-sam": 3.8}


def run_cost(method, steps):
    return COST[method] + (steps - 1)


log = common.log


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 60 s): 250 images, 1 epoch, 1 seed, SGD and SAM")
    parser.add_argument("--backend", choices=common.BACKENDS, default=None,
                        help="Keras backend of the runs (default: $KERAS_BACKEND, else tensorflow, "
                             "the fastest here on one thread)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                        help="Keras' jit_compile (auto: XLA on JAX, graph on TF, eager on torch)")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR,
                        help="folder with cifar10_train_part1.npz and cifar10_test.npz")
    parser.add_argument("--train-size", type=int, default=None,
                        help=f"training images, balanced over classes (default {FULL['train_size']})")
    parser.add_argument("--test-size", type=int, default=None,
                        help=f"test images (default {FULL['test_size']}: all)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {FULL['batch_size']}")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate, cosine decay to 0 (default {FULL['lr']})")
    parser.add_argument("--momentum", type=float, default=common.SUBSET_PROTOCOL["momentum"])
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"L2 weight decay wd (default {FULL['weight_decay']})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 per method (default {FULL['seeds']})")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, of {','.join(MAIN_METHODS)} (default: all)")
    parser.add_argument("--steps", default=None,
                        help="ascent steps k of the multi-step table, SAM and XSAM "
                             f"(default {FULL['steps']}; 1 alone: no extra runs)")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs at a time, each a single-threaded subprocess")
    parser.add_argument("--results", default=None,
                        help="JSON-lines file of finished runs, appended to and resumed from "
                             "(default benchmarks/results/generalization.jsonl; --quick: a new "
                             "temporary file)")
    parser.add_argument("--report", metavar="FILE", default=None,
                        help="print the tables of a results file and exit (no training)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in MAIN_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(MAIN_METHODS)}")
    args.steps = sorted({int(k) for k in args.steps.split(",") if k.strip()} | {1})
    if args.steps[0] < 1:
        parser.error("--steps must be >= 1")
    for name in ("epochs", "batch_size", "seeds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.train_size < args.batch_size:
        parser.error("--train-size must be at least --batch-size")
    if args.backend is None:
        args.backend = os.environ.get("KERAS_BACKEND") or "tensorflow"
    if args.backend not in common.BACKENDS:
        parser.error(f"unknown backend {args.backend!r}")
    args.jit_compile = (JIT_AUTO[args.backend] if args.jit_compile == "auto"
                        else args.jit_compile == "true")
    return args


def protocol_of(args):
    return {key: getattr(args, key) for key in PROTOCOL_KEYS}


def jobs_of(args):
    """[(method, steps, seed)]: seed by seed, the most expensive run first."""
    runs = [(m, 1) for m in args.methods]
    runs += [(m, k) for m in MULTI_STEP_METHODS for k in args.steps if k > 1]
    runs.sort(key=lambda r: -run_cost(*r))
    return [(m, k, seed) for seed in range(args.seeds) for m, k in runs]


# -- one run (child process) ---------------------------------------------------------------
def run_one(job):
    """Trains one (method, steps, seed) under `job["protocol"]`; returns its record."""
    started = time.perf_counter()
    p = job["protocol"]
    backend = os.environ["KERAS_BACKEND"]
    common.limit_threads(backend)
    import keras
    import numpy as np

    import keras_sam

    if keras.backend.backend() != p["backend"]:
        raise SystemExit(f"Keras runs {keras.backend.backend()}, not {p['backend']}")
    common.limit_threads(backend)  # TensorFlow, if Keras imported it
    x, y, x_test, y_test = common.load_cifar10_subset(
        job["data_dir"], p["train_size"], p["test_size"]
    )
    method, steps, seed = job["method"], job["steps"], job["seed"]
    orders = common.epoch_orders(seed, len(x), p["batch_size"], p["epochs"])
    steps_per_epoch = len(orders[0]) // p["batch_size"]
    total_steps = steps_per_epoch * p["epochs"]

    model = keras_sam.SAMModel(
        common.build_vgg_style_cnn(keras, l2=p["weight_decay"] / 2, seed=seed)
    )
    schedule = keras.optimizers.schedules.CosineDecay(p["lr"], decay_steps=total_steps, alpha=0.0)
    inner = keras.optimizers.SGD(schedule, momentum=p["momentum"])
    model.compile(
        optimizer=common.make_optimizer(method, inner, steps, seed),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy",
                 keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent")],
        jit_compile=p["jit_compile"],
    )
    setup_seconds = time.perf_counter() - started
    history = []
    train_start = time.perf_counter()
    for epoch, order in enumerate(orders):
        h = model.fit(x[order], y[order], batch_size=p["batch_size"], epochs=epoch + 1,
                      initial_epoch=epoch, shuffle=False, verbose=0)
        history.append({k: float(v[-1]) for k, v in h.history.items()})
        if not math.isfinite(history[-1]["loss"]):
            break
    train_seconds = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    train_eval = model.evaluate(x, y, batch_size=500, verbose=0, return_dict=True)
    test_eval = model.evaluate(x_test, y_test, batch_size=500, verbose=0, return_dict=True)
    eval_seconds = time.perf_counter() - eval_start
    return {
        "protocol": p,
        "method": method,
        "steps": steps,
        "seed": seed,
        "optimizer": common.method_description(method, steps),
        "test_accuracy": float(test_eval["accuracy"]),
        "test_loss": float(test_eval["xent"]),
        "train_accuracy": float(train_eval["accuracy"]),
        "train_loss": float(train_eval["xent"]),
        "history": history,  # per epoch: running means of the training step's logs
        "parameters": int(model.count_params()),
        "steps_per_epoch": steps_per_epoch,
        "setup_seconds": setup_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "seconds": time.perf_counter() - started,
        "versions": {"keras": keras.__version__, "keras_sam": keras_sam.__version__,
                     backend: __import__(backend).__version__, "numpy": np.__version__},
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def child_main(job_json):
    record = run_one(json.loads(job_json))
    print(MARKER + json.dumps(record), flush=True)


# -- the parent: schedule runs, collect records -----------------------------------------
def read_records(path):
    records = []
    if path and os.path.isfile(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by an interruption
                    log(f"warning: {path}:{number} is not JSON, ignored")
    return records


def run_key(record):
    return record["method"], record["steps"], record["seed"]


def launch(job, env):
    """Runs one job in a subprocess; returns (record or None, stderr tail)."""
    command = [sys.executable, "-m", __spec__.name, "--child", json.dumps(job)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        return None, (proc.stderr or proc.stdout)[-3000:]
    return json.loads(line[len(MARKER):]), ""


def run_all(args, protocol, results_path):
    done = {run_key(r) for r in read_records(results_path) if r.get("protocol") == protocol}
    jobs = [j for j in jobs_of(args) if j not in done]
    if done:
        log(f"{len(done)} runs of this protocol already in {results_path}; {len(jobs)} to do")
    if not jobs:
        return 0
    env = common.single_thread_env()
    env["KERAS_BACKEND"] = args.backend
    env["PYTHONPATH"] = os.pathsep.join(
        [common.REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    lock = threading.Lock()
    total_cost = sum(run_cost(m, k) for m, k, _ in jobs)
    progress = {"cost": 0.0, "seconds": 0.0, "done": 0, "failed": 0}
    start = time.perf_counter()

    def work(job):
        method, steps, seed = job
        spec = {"protocol": protocol, "method": method, "steps": steps, "seed": seed,
                "data_dir": args.data_dir}
        record, error = launch(spec, env)
        with lock:
            label = f"{common.method_label(method, steps)} seed {seed}"
            if record is None:
                progress["failed"] += 1
                log(f"FAILED {label}:\n{error}")
                return
            with open(results_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            progress["done"] += 1
            progress["cost"] += run_cost(method, steps)
            progress["seconds"] += record["seconds"]
            elapsed = time.perf_counter() - start
            remaining = (total_cost - progress["cost"]) * progress["seconds"] / progress["cost"]
            log(f"[{progress['done']}/{len(jobs)}] {label}: test acc "
                f"{100 * record['test_accuracy']:.2f} %, train acc "
                f"{100 * record['train_accuracy']:.2f} %, {record['seconds']:.0f} s "
                f"(train {record['train_seconds']:.0f} s); elapsed {elapsed / 60:.1f} min, "
                f"about {remaining / args.workers / 60:.0f} min left")

    log(f"{len(jobs)} runs, {args.workers} at a time, {args.backend} "
        f"(jit_compile={args.jit_compile}), results -> {results_path}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(work, jobs))
    return progress["failed"]


# -- statistics and report ----------------------------------------------------------------
def mean_std(values):
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def pct(value, digits=2):
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def num(value, digits=3):
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def pm(mean, std, scale=100.0, digits=2):
    if not math.isfinite(mean):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if math.isfinite(std) else "")


def signed_pp(difference, stderr):
    """A difference of accuracies in percentage points, ± its standard error if known."""
    text = f"{100 * difference:+.2f}"
    return text + (f" ± {100 * stderr:.2f}" if math.isfinite(stderr) else "")


def group(records):
    """{(method, steps): [records sorted by seed]}"""
    out = {}
    for r in records:
        out.setdefault((r["method"], r["steps"]), []).append(r)
    for runs in out.values():
        runs.sort(key=lambda r: r["seed"])
    return out


def comparison(groups, a, b, claim_holds_if):
    """Compares test accuracy of run group b minus a.

    claim_holds_if: "greater" (b > a claimed) or "not_less" (b >= a claimed).
    Returns a dict of the statistics (differences in accuracy units).
    """
    ra, rb = groups.get(a, []), groups.get(b, [])
    # Accuracies are multiples of 1/test_size, logged as float32: round off the residue.
    xa = [round(r["test_accuracy"], 6) for r in ra]
    xb = [round(r["test_accuracy"], 6) for r in rb]
    if not xa or not xb:
        return None
    ma, sa = mean_std(xa)
    mb, sb = mean_std(xb)
    d = round(mb - ma, 9)
    se = math.sqrt(sa ** 2 / len(xa) + sb ** 2 / len(xb)) if len(xa) > 1 and len(xb) > 1 \
        else math.nan
    by_seed_a = {r["seed"]: round(r["test_accuracy"], 6) for r in ra}
    paired = [round(r["test_accuracy"], 6) - by_seed_a[r["seed"]] for r in rb
              if r["seed"] in by_seed_a]
    paired_se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else math.nan
    if math.isfinite(se) and d != 0:
        needed = math.ceil(4.0 * (sa ** 2 + sb ** 2) / d ** 2)
    else:
        needed = math.inf if d == 0 else math.nan
    held = d > 0 if claim_holds_if == "greater" else d >= 0
    return {"d": d, "se": se, "paired_se": paired_se, "n": (len(xa), len(xb)),
            "held": held, "resolved": math.isfinite(se) and abs(d) > 2 * se, "needed": needed}


def claims(groups, steps):
    """[(claim text, a, b, rule)] the issue asks about."""
    rows = [
        ("SGD < SAM", ("sgd", 1), ("sam", 1), "greater"),
        ("SAM < XSAM", ("sam", 1), ("xsam", 1), "greater"),
        ("SAM < X-SAM", ("sam", 1), ("x-sam", 1), "greater"),
    ]
    for k in steps:
        if k > 1:
            rows.append((f"SAM degrades with k: SAM k={k} < SAM k=1", ("sam", k), ("sam", 1),
                         "greater"))
    for k in steps:
        if k > 1:
            rows.append((f"XSAM does not degrade: XSAM k=1 ≤ XSAM k={k}", ("xsam", 1),
                         ("xsam", k), "not_less"))
    return rows


def report(records, command=None, wall_seconds=None):
    protocol = records[0]["protocol"]
    groups = group(records)
    first = records[0]
    steps = sorted({r["steps"] for r in records})
    lines = [f"# Generalization: SGD and sharpness-aware methods on a CIFAR-10 subset", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [
        f"- date: {max(r['finished'] for r in records)} (last run finished)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
        + f", python {platform.python_version()}",
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), each run one single-threaded "
        "process",
        f"- protocol: {protocol['train_size']} CIFAR-10 training images (first "
        f"{protocol['train_size'] // 10} of each class), no augmentation; test on "
        f"{protocol['test_size']} test images; `common.build_vgg_style_cnn` "
        f"({first['parameters']} parameters); {protocol['epochs']} epochs × "
        f"{first['steps_per_epoch']} steps of batch {protocol['batch_size']}; "
        f"SGD(lr {protocol['lr']:g} cosine to 0, momentum {protocol['momentum']:g}), "
        f"L2 weight decay {protocol['weight_decay']:g}; backend {protocol['backend']} "
        f"(jit_compile={protocol['jit_compile']}); seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in records}))} "
        "(seed s: same initial weights and batch order for every method)",
        "- final train accuracy / loss: evaluated after training on the whole training subset "
        "(inference mode, cross-entropy without the L2 term); ± is the sample standard "
        "deviation over seeds",
    ]
    if wall_seconds is not None:
        lines.append(f"- wall time of this invocation: {wall_seconds / 60:.1f} min")
    lines.append("")

    def row(key):
        runs = groups[key]
        cells = [mean_std([r[name] for r in runs]) for name in
                 ("test_accuracy", "test_loss", "train_accuracy", "train_loss")]
        seconds = statistics.fmean(r["seconds"] for r in runs)
        return (f"| {common.method_label(*key)} | `{runs[0]['optimizer']}` | {len(runs)} | "
                f"{pm(*cells[0])} | {pm(*cells[1], scale=1, digits=3)} | {pm(*cells[2])} | "
                f"{pm(*cells[3], scale=1, digits=4)} | {seconds:.0f} |")

    header = ("| method | optimizer | seeds | test acc % | test loss | final train acc % | "
              "final train loss | s/run |")
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    lines += ["## Single-step methods", "", header, rule]
    for m in MAIN_METHODS:
        if (m, 1) in groups:
            lines.append(row((m, 1)))
    if any(k > 1 for k in steps):
        lines += ["", "## Multi-step ascent (XSAM paper's ablation, ρ = total path)", "",
                  "| k | SAM test acc % | XSAM test acc % | XSAM − SAM (pp) | "
                  "SAM train acc % | XSAM train acc % | SAM s/run | XSAM s/run |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k in steps:
            s, x = groups.get(("sam", k), []), groups.get(("xsam", k), [])

            def cell(runs, name):
                return pm(*mean_std([r[name] for r in runs]))

            gap = comparison(groups, ("sam", k), ("xsam", k), "greater")
            gap_text = "—" if gap is None else signed_pp(gap["d"], gap["se"])
            secs = [f"{statistics.fmean(r['seconds'] for r in runs):.0f}" if runs else "—"
                    for runs in (s, x)]
            lines.append(f"| {k} | {cell(s, 'test_accuracy')} | {cell(x, 'test_accuracy')} | "
                         f"{gap_text} | {cell(s, 'train_accuracy')} | {cell(x, 'train_accuracy')} | "
                         f"{secs[0]} | {secs[1]} |")
    lines += ["", "## The issue's comparisons (test accuracy)", "",
              "difference: mean test accuracy of the claim's right side minus its left side; "
              "held: the sign of the mean difference; ± two-sample standard error "
              "sqrt(s_a²/n_a + s_b²/n_b); paired SE from the per-seed differences (same "
              "initial weights and batch order); resolved: |d| > 2 SE (two-sample); seeds "
              "needed: per method, for |d| = 2 SE at the observed standard deviations, "
              "4(s_a² + s_b²)/d².", "",
              "| claim | held | difference (pp) | paired SE (pp) | resolved at 2 SE | "
              "seeds needed | n |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for text, a, b, rule_ in claims(groups, steps):
        c = comparison(groups, a, b, rule_)
        if c is None:
            lines.append(f"| {text} | not measured | — | — | — | — | — |")
            continue
        diff = signed_pp(c["d"], c["se"])
        needed = ("—" if isinstance(c["needed"], float) and math.isnan(c["needed"])
                  else "∞" if c["needed"] == math.inf
                  else "> 10000" if c["needed"] > 10_000 else str(c["needed"]))
        resolved = "—" if not math.isfinite(c["se"]) else ("yes" if c["resolved"] else "no")
        lines.append(f"| {text} | {'yes' if c['held'] else 'no'} | {diff} | "
                     f"{pct(c['paired_se'])} | {resolved} | {needed} | {c['n'][0]}+{c['n'][1]} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    command = common.command_line(argv)
    if args.report:
        records = read_records(args.report)
        if not records:
            sys.exit(f"error: no records in {args.report}")
        protocols = []
        for r in records:
            if r["protocol"] not in protocols:
                protocols.append(r["protocol"])
        sections = [report([r for r in records if r["protocol"] == p], command) for p in protocols]
        print("\n\n".join(sections))
        return 0
    common.require_files(args.data_dir, (common.TRAIN_FILES[0], common.TEST_FILE))
    results_path = args.results
    if results_path is None:
        if args.quick:
            handle, results_path = tempfile.mkstemp(prefix="generalization_quick_", suffix=".jsonl")
            os.close(handle)
        else:
            results_path = DEFAULT_RESULTS
    protocol = protocol_of(args)
    start = time.perf_counter()
    failed = run_all(args, protocol, results_path)
    wanted = set(jobs_of(args))
    records = [r for r in read_records(results_path)
               if r.get("protocol") == protocol and run_key(r) in wanted]
    if not records:
        sys.exit("error: no run finished")
    print(report(records, command, time.perf_counter() - start))
    print()
    print(f"- results: {results_path} ({len(records)} runs of this protocol shown"
          + (f"; {failed} runs FAILED" if failed else "") + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
