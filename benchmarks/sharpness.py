"""Sharpness during training: λ_max under SGD, SAM and X-SAM, SAM's gradient–eigenvector
angle, XSAM's α* (PNG plots and the numbers behind them).

    python -m benchmarks.sharpness > sharpness.md          # full run (~25 min, one thread)
    python -m benchmarks.sharpness --quick                  # smoke run (< 60 s), PNGs in a temp dir
    python -m benchmarks.sharpness --out-dir docs/figures --methods sgd,sam --epochs 30
    python -m benchmarks.sharpness --replot benchmarks/results/sharpness.json   # PNGs only

Training: the protocol of `benchmarks/generalization.py` (`common.SUBSET_PROTOCOL`):
`common.build_vgg_style_cnn` on the fixed class-balanced CIFAR-10 subset of
`--train-size` (2,000) images, no augmentation, 16 epochs of batch 32,
SGD(momentum 0.9) with a cosine learning rate from `--lr` (0.05) to 0, L2
weight decay 5e-4, seed `--seed` (the same initial weights and batch order
for every method); one run per method of `--methods`: SGD, SAM(ρ=0.05), X-SAM
= EigenCorrectedSAM(ρ=0.05, α=0.2, p=5, q=5) and dynamic XSAM(ρ=0.15,
ρ_m=0.3) (`common.METHODS`), one after the other in this one process, on one
thread (OMP/TF/XLA thread pools set to 1 unless the environment sets them),
TensorFlow graph mode unless `--backend` / $KERAS_BACKEND says otherwise.
Cost: the training runs take ~10 min (X-SAM's half of it); λ_max ~3-4 min
per run (one Hessian-vector product on 256 images ≈ 3 gradients, ~1 s, up
to 20 per measurement); the angles ~2-3 min.

Measured and plotted (`--out-dir`, default benchmarks/results; `--quick`: a
new temporary folder):

(a) `sharpness_lambda_max.png` — before training and after every
    `--measure-every` epochs of every run: λ_max, the Hessian eigenvalue of
    largest magnitude of the training loss (cross-entropy + L2) on a FIXED
    probe batch (`--probe-size` training images), inference mode (BatchNorm
    moving statistics), by the power iteration of
    `keras_sam.hessian.top_eigenvalue` (through `hessian.Curvature`, to count
    its products; at most `--max-iterations`, relative tolerance `--tol`,
    warm-started from the run's previous eigenvector); and the training loss
    at the same weights (cross-entropy without the L2 term, inference mode,
    the whole training subset). Left: λ_max against epochs; right: λ_max
    against the training loss (dynamic XSAM's run is measured and drawn
    too). The claim tested: at equal training loss, λ_max is lower under SAM
    and X-SAM than under SGD; the table "at equal training loss" interpolates each run's λ_max (linearly in log loss
    between its two measurements around the level) at loss levels that every
    run passed through.
(b) `sharpness_angle_histogram.png` — under SAM, every `--angle-every`
    training steps, on the mini-batch just trained on, at the weights after
    that step: the top eigenvector of that mini-batch's Hessian (inference
    mode, power iteration warm-started from the previous sample's, at most
    `--angle-iterations`) and the angle between it and the (clean)
    mini-batch gradient, signed (arccos of the cosine, in [0°, 180°], as the
    X-SAM paper's Fig. 1, which finds 80–100° under SAM). The share within
    80–100° and the distribution by 10° bins are printed.
(c) `sharpness_xsam_alpha.png` — α* of dynamic XSAM over epochs, from
    `History.history["alpha"]` (XSAM searches α on the first batch of each
    epoch and uses it for the whole epoch, so the epoch's mean of the logged
    `alpha` is that epoch's α*), with ψ, the angle between v0 and v1
    (`History.history["psi"]`, epoch mean), as the XSAM paper's Fig. 2.

Printed (markdown on stdout; progress on stderr): the numbers behind every
plot. `--quick`: SAM and XSAM only, 250 images, 2 epochs of batch 32, probe
batch 32, 3 power iterations, an angle every 2 steps — checks that
everything runs and the PNGs are written, says nothing about sharpness. Without matplotlib (`pip install -e ".[benchmarks]"`) the tables are
still printed and the plots skipped.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

from benchmarks import common

RUNS = ("sgd", "sam", "x-sam", "xsam")
LAMBDA_METHODS = ("sgd", "sam", "x-sam", "xsam")  # XSAM's λ_max is measured too
ANGLE_METHOD = "sam"
ALPHA_METHOD = "xsam"
DEFAULT_OUT_DIR = os.path.join(common.REPO, "benchmarks", "results")
JIT_AUTO = {"jax": True, "tensorflow": False, "torch": False}

FULL = dict(common.SUBSET_PROTOCOL, probe_size=256, measure_every=1, max_iterations=20,
            tol=1e-3, angle_every=8, angle_iterations=20, methods=",".join(RUNS))
# The probe batch is one training batch, so that one compiled Hessian-vector
# product serves λ_max and the angles (compilation dominates this mode).
QUICK = dict(train_size=256, test_size=10_000, epochs=2, batch_size=32, lr=0.05, momentum=0.9,
             weight_decay=5e-4, probe_size=32, measure_every=1, max_iterations=3, tol=1e-3,
             angle_every=2, angle_iterations=3, methods="sam,xsam")


log = common.log


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 60 s): SAM and XSAM only, 250 images, batch 32, 2 "
                             "epochs, 3 power iterations; PNGs into a new temporary folder")
    parser.add_argument("--backend", choices=common.BACKENDS, default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow, the fastest "
                             "here on one thread)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                        help="Keras' jit_compile (auto: XLA on JAX, graph on TF, eager on torch)")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR,
                        help="folder with cifar10_train_part1.npz and cifar10_test.npz")
    parser.add_argument("--out-dir", default=None,
                        help="folder of the PNGs (default benchmarks/results; --quick: a new "
                             "temporary folder)")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only redraw the PNGs from the --json file of an earlier run")
    for name, help_text in (
        ("train_size", "training images, balanced over classes"),
        ("epochs", "epochs per run"),
        ("batch_size", "batch size"),
        ("probe_size", "images of the fixed probe batch of λ_max (from the training subset)"),
        ("measure_every", "epochs between λ_max measurements"),
        ("max_iterations", "power iterations of a λ_max measurement at most"),
        ("angle_every", "SAM steps between angle samples"),
        ("angle_iterations", "power iterations of an angle sample at most"),
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help=f"{help_text} (default {FULL[name]}, quick {QUICK[name]})")
    parser.add_argument("--methods", default=None,
                        help=f"runs, comma-separated, of {','.join(RUNS)} (default: all; "
                             f"quick: {QUICK['methods']})")
    parser.add_argument("--lr", type=float, default=None, help=f"default {FULL['lr']}")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"L2 weight decay (default {FULL['weight_decay']})")
    parser.add_argument("--tol", type=float, default=None,
                        help=f"power iteration's relative tolerance (default {FULL['tol']})")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or any(m not in RUNS for m in args.methods):
        parser.error(f"--methods: a comma-separated subset of {','.join(RUNS)}")
    args.methods = [m for m in RUNS if m in args.methods]
    for name in ("epochs", "batch_size", "probe_size", "measure_every", "max_iterations",
                 "angle_every", "angle_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.backend is None:
        args.backend = os.environ.get("KERAS_BACKEND") or "tensorflow"
    args.jit_compile = (JIT_AUTO[args.backend] if args.jit_compile == "auto"
                        else args.jit_compile == "true")
    return args


# -- training with measurements ----------------------------------------------------------
def angle_sampler_class():
    import keras

    from keras_sam import hessian

    class AngleSampler(keras.callbacks.Callback):
        """Every `every` steps: the angle between the mini-batch gradient and the
        top eigenvector of the mini-batch Hessian, at the weights after the step."""

        def __init__(self, args, x, y, orders):
            super().__init__()
            self.args, self.x, self.y, self.orders = args, x, y, orders
            self.epoch, self.step = 0, 0
            self.eigenvector = None
            self.samples = []
            self.seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % self.args.angle_every:
                return
            start = time.perf_counter()
            b = self.args.batch_size
            rows = self.orders[self.epoch][batch * b:(batch + 1) * b]
            # `self.model` syncs the JAX trainer's state into the variables first.
            curvature = hessian.Curvature(self.model, self.x[rows], self.y[rows])
            eigenvalue, v = curvature.top_eigenvalue(
                self.args.angle_iterations, self.args.tol, initial_vector=self.eigenvector,
                seed=self.args.seed,
            )
            iterations = curvature.iterations
            self.eigenvector = v
            angle = curvature.gradient_eigenvector_angle(eigenvector=v)
            self.samples.append({"step": self.step, "epoch": self.epoch, "angle": angle,
                                 "eigenvalue": eigenvalue, "iterations": iterations})
            self.seconds += time.perf_counter() - start

    return AngleSampler


def train_run(method, args, data, keras):
    """Trains one method; returns its measurements."""
    import keras_sam
    from keras_sam import hessian

    x, y, x_probe, y_probe, orders = data
    steps_per_epoch = len(orders[0]) // args.batch_size
    model = keras_sam.SAMModel(
        common.build_vgg_style_cnn(keras, l2=args.weight_decay / 2, seed=args.seed)
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr, decay_steps=steps_per_epoch * args.epochs, alpha=0.0
    )
    inner = keras.optimizers.SGD(schedule, momentum=args.momentum)
    model.compile(
        optimizer=common.make_optimizer(method, inner, 1, args.seed),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy",
                 keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent")],
        jit_compile=args.jit_compile,
    )
    sampler = angle_sampler_class()(args, x, y, orders) if method == ANGLE_METHOD else None
    measurements, epochs = [], []
    state = {"eigenvector": None, "seconds": 0.0}

    def measure(epoch):
        start = time.perf_counter()
        evaluated = model.evaluate(x, y, batch_size=500, verbose=0, return_dict=True)
        curvature = hessian.Curvature(model, x_probe, y_probe)
        eigenvalue, v = curvature.top_eigenvalue(
            args.max_iterations, args.tol, initial_vector=state["eigenvector"], seed=args.seed
        )
        state["eigenvector"] = v
        seconds = time.perf_counter() - start
        state["seconds"] += seconds
        measurements.append({"epoch": epoch, "train_loss": float(evaluated["xent"]),
                             "train_accuracy": float(evaluated["accuracy"]),
                             "lambda_max": float(eigenvalue),
                             "iterations": curvature.iterations})
        log(f"  {common.method_label(method)} epoch {epoch}: train loss "
            f"{measurements[-1]['train_loss']:.4f}, acc {measurements[-1]['train_accuracy']:.3f}, "
            f"λ_max {eigenvalue:.3g} ({curvature.iterations} it, {seconds:.1f} s)")

    start = time.perf_counter()
    measure(0)
    for epoch, order in enumerate(orders):
        h = model.fit(x[order], y[order], batch_size=args.batch_size, epochs=epoch + 1,
                      initial_epoch=epoch, shuffle=False, verbose=0,
                      callbacks=[sampler] if sampler else [])
        epochs.append({k: float(v[-1]) for k, v in h.history.items()})
        if (epoch + 1) % args.measure_every == 0 or epoch + 1 == len(orders):
            measure(epoch + 1)
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "label": common.method_label(method),
        "optimizer": common.method_description(method),
        "measurements": measurements,
        "epochs": epochs,  # per epoch: History (running means of the step's logs)
        "angles": sampler.samples if sampler else [],
        "seconds": seconds,
        "measure_seconds": state["seconds"] + (sampler.seconds if sampler else 0.0),
    }


# -- tables ---------------------------------------------------------------------------------
def fmt(value, digits=3):
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def lambda_table(runs):
    shown = [r for r in runs if r["method"] in LAMBDA_METHODS]
    head = " | ".join(f"{r['label']} train loss | {r['label']} λ_max" for r in shown)
    lines = [f"| epoch | {head} |", "| ---: | " + " | ".join("---: | ---:" for _ in shown) + " |"]
    epochs = sorted({m["epoch"] for r in shown for m in r["measurements"]})
    for e in epochs:
        cells = []
        for r in shown:
            m = next((m for m in r["measurements"] if m["epoch"] == e), None)
            cells.append("— | —" if m is None else
                         f"{m['train_loss']:.4f} | {fmt(m['lambda_max'], 4)}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lambda_at_loss(measurements, level):
    """λ_max where the run's training loss first reaches `level` (linear in log loss
    between the two measurements around it), or None."""
    previous = None
    for m in measurements:
        if m["train_loss"] <= level:
            if previous is None:
                return m["lambda_max"] if m["train_loss"] == level else None
            l0, l1 = math.log(previous["train_loss"]), math.log(m["train_loss"])
            t = 0.0 if l0 == l1 else (math.log(level) - l0) / (l1 - l0)
            return previous["lambda_max"] + t * (m["lambda_max"] - previous["lambda_max"])
        previous = m
    return None


def loss_levels(runs, count=6):
    """Training-loss levels (log-spaced) that every run passed through."""
    highest = min(r["measurements"][0]["train_loss"] for r in runs)
    lowest = max(min(m["train_loss"] for m in r["measurements"]) for r in runs)
    if not (0 < lowest < highest):
        return []
    return [math.exp(math.log(highest) + (math.log(lowest) - math.log(highest)) * (i + 1) / count)
            for i in range(count)]


def equal_loss_table(runs):
    shown = [r for r in runs if r["method"] in LAMBDA_METHODS]
    levels = loss_levels(shown)
    if not levels:
        return "(the runs share no range of training loss)"
    head = " | ".join(f"λ_max {r['label']}" for r in shown)
    ratios = [r for r in shown if r["method"] != "sgd"]
    lines = [f"| train loss | {head} | " + " | ".join(f"{r['label']}/SGD" for r in ratios) + " |",
             "| ---: | " + " | ".join("---:" for _ in shown + ratios) + " |"]
    for level in levels:
        values = {r["method"]: lambda_at_loss(r["measurements"], level) for r in shown}
        cells = [fmt(values[r["method"]], 4) for r in shown]
        sgd = values.get("sgd")
        for r in ratios:
            v = values[r["method"]]
            cells.append(f"{v / sgd:.2f}" if v is not None and sgd not in (None, 0) else "—")
        lines.append(f"| {level:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def angle_table(samples):
    if not samples:
        return "(no samples)", []
    angles = [s["angle"] for s in samples]
    ordered = sorted(angles)

    def quantile(q):
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    within = sum(80.0 <= a <= 100.0 for a in angles) / len(angles)
    lines = [
        "| samples | mean ° | median ° | 10 % ° | 90 % ° | share in 80–100° | "
        "mean \\|90° − angle\\| | median power iterations |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(angles)} | {statistics.fmean(angles):.1f} | {statistics.median(angles):.1f} | "
        f"{quantile(0.1):.1f} | {quantile(0.9):.1f} | {within:.2f} | "
        f"{statistics.fmean(abs(90 - a) for a in angles):.1f} | "
        f"{statistics.median(s['iterations'] for s in samples):.0f} |",
        "",
        "| angle bin | samples |",
        "| --- | ---: |",
    ]
    bins = [0] * 18
    for a in angles:
        bins[min(17, int(a // 10))] += 1
    for i, count in enumerate(bins):
        if count:
            lines.append(f"| {10 * i}–{10 * (i + 1)}° | {count} |")
    return "\n".join(lines), angles


def alpha_table(run):
    lines = ["| epoch | α* | ψ (°, epoch mean) | train loss (epoch mean) |",
             "| ---: | ---: | ---: | ---: |"]
    for i, e in enumerate(run["epochs"], 1):
        lines.append(f"| {i} | {e.get('alpha', math.nan):.2f} | {e.get('psi', math.nan):.1f} | "
                     f"{e.get('loss', math.nan):.4f} |")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------
def make_plots(runs, angles, out_dir):
    """Writes the three PNGs; returns their paths (empty without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed (pip install -e \".[benchmarks]\"): no plots")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    by_method = {r["method"]: r for r in runs}

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in LAMBDA_METHODS:
        r = by_method.get(method)
        if r is None:
            continue
        ms = r["measurements"]
        left.plot([m["epoch"] for m in ms], [m["lambda_max"] for m in ms], marker="o", ms=3,
                  label=r["label"])
        right.plot([m["train_loss"] for m in ms], [m["lambda_max"] for m in ms], marker="o",
                   ms=3, label=r["label"])
    left.set_xlabel("epoch")
    left.set_ylabel("λ_max (probe batch, inference mode)")
    left.set_title("Top Hessian eigenvalue during training")
    right.set_xscale("log")
    # Plain numbers at a few losses; log-scale minor labels would overlap.
    right.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.1, 0.2, 0.5, 1, 2, 5]))
    right.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.invert_xaxis()
    right.set_xlabel("training loss (cross-entropy, log scale, decreasing →)")
    right.set_ylabel("λ_max")
    right.set_title("λ_max at equal training loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "sharpness_lambda_max.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if angles:
        paths.append(angle_histogram(plt, angles, out_dir))
    r = by_method.get(ALPHA_METHOD)
    if r is not None:
        paths.append(alpha_plot(plt, r, out_dir))
    return paths


def angle_histogram(plt, angles, out_dir):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(angles, bins=[2.5 * i for i in range(73)], color="tab:blue")
    for edge in (80, 100):
        ax.axvline(edge, color="gray", ls="--", lw=1)
    ax.set_xlim(0, 180)
    ax.set_xlabel("angle between mini-batch gradient and top eigenvector (°)")
    ax.set_ylabel("samples")
    ax.set_title(f"SAM: gradient vs dominant eigenvector ({len(angles)} samples)")
    fig.tight_layout()
    path = os.path.join(out_dir, "sharpness_angle_histogram.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def alpha_plot(plt, run, out_dir):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = list(range(1, len(run["epochs"]) + 1))
    ax.plot(epochs, [e.get("alpha", math.nan) for e in run["epochs"]], marker="o", ms=3,
            color="tab:red", label="α*")
    ax.set_xlabel("epoch")
    ax.set_ylabel("α* (searched on the epoch's first batch)")
    ax.set_ylim(0, 2.05)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(epochs, [e.get("psi", math.nan) for e in run["epochs"]], color="tab:gray",
              ls="--", label="ψ (v0, v1)")
    twin.set_ylabel("ψ (°, epoch mean)")
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    ax.legend(handles + twin_handles, labels + twin_labels, loc="best")
    ax.set_title("Dynamic XSAM: α* over training")
    fig.tight_layout()
    path = os.path.join(out_dir, "sharpness_xsam_alpha.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replot(path, out_dir):
    """Redraws the PNGs from a `--json` file of an earlier run (no training)."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    by_method = {r["method"]: r for r in runs}
    angles = (angle_table(by_method[ANGLE_METHOD]["angles"])[1]
              if ANGLE_METHOD in by_method else [])
    for p in make_plots(runs, angles, out_dir):
        print(p)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot, args.out_dir or DEFAULT_OUT_DIR)
    common.require_files(args.data_dir, (common.TRAIN_FILES[0], common.TEST_FILE))
    command = common.command_line(argv)
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="sharpness_quick_") if args.quick
                               else DEFAULT_OUT_DIR)
    os.environ["KERAS_BACKEND"] = args.backend
    for key, value in common.single_thread_env({}).items():  # one thread unless set otherwise
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    common.limit_threads(args.backend)
    import keras
    import numpy as np

    import keras_sam

    if keras.backend.backend() != args.backend:
        sys.exit(f"error: Keras runs {keras.backend.backend()}, not {args.backend} "
                 "(was keras imported before KERAS_BACKEND was set?)")
    common.limit_threads(args.backend)
    x, y, _, _ = common.load_cifar10_subset(args.data_dir, args.train_size, 10)
    orders = common.epoch_orders(args.seed, len(x), args.batch_size, args.epochs)
    probe = np.sort(np.random.default_rng([args.seed, 2]).choice(
        len(x), size=min(args.probe_size, len(x)), replace=False))
    data = (x, y, x[probe], y[probe], orders)

    runs = []
    for method in args.methods:
        log(f"{common.method_label(method)}: {common.method_description(method)}")
        runs.append(train_run(method, args, data, keras))
        log(f"  {runs[-1]['seconds']:.0f} s ({runs[-1]['measure_seconds']:.0f} s measuring)")
    by_method = {r["method"]: r for r in runs}
    angle_text, angles = angle_table(by_method[ANGLE_METHOD]["angles"]) \
        if ANGLE_METHOD in by_method else (f"({ANGLE_METHOD} not run)", [])
    paths = make_plots(runs, angles, out_dir)

    backend_module = __import__(args.backend)
    steps = len(orders[0]) // args.batch_size
    print(f"# Sharpness during training ({'quick' if args.quick else 'full'} mode)")
    print()
    print(f"- command: `{command}`")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- versions: {args.backend} {backend_module.__version__} "
          f"(jit_compile={args.jit_compile}), keras {keras.__version__}, keras_sam "
          f"{keras_sam.__version__}, numpy {np.__version__}, python {platform.python_version()}")
    print(f"- machine: {os.cpu_count()} cores ({platform.machine()}), one process")
    print(f"- protocol: {len(x)} CIFAR-10 training images (first {len(x) // 10} of each class), "
          f"no augmentation; `common.build_vgg_style_cnn`; {args.epochs} epochs × {steps} steps of "
          f"batch {args.batch_size}; SGD(lr {args.lr:g} cosine to 0, momentum {args.momentum:g}), "
          f"L2 weight decay {args.weight_decay:g}; seed {args.seed}")
    print(f"- λ_max: probe batch of {len(probe)} training images, inference mode, power "
          f"iteration ≤ {args.max_iterations} products, tol {args.tol:g}, warm-started; every "
          f"{args.measure_every} epoch(s)")
    print(f"- angle: SAM, every {args.angle_every} steps, mini-batch Hessian, ≤ "
          f"{args.angle_iterations} products, warm-started")
    print("- runs: " + "; ".join(
        f"{r['label']} `{r['optimizer']}` {r['seconds']:.0f} s ({r['measure_seconds']:.0f} s "
        "measuring)" for r in runs))
    print(f"- run time: {time.perf_counter() - started:.0f} s")
    print(f"- plots: {', '.join(paths) if paths else 'none (matplotlib missing)'}")
    print()
    print("## (a) λ_max and training loss over epochs")
    print()
    print(lambda_table(runs))
    print()
    print("### λ_max at equal training loss")
    print()
    print(equal_loss_table(runs))
    print()
    print("## (b) SAM: angle between the mini-batch gradient and the dominant eigenvector")
    print()
    print(angle_text)
    print()
    print("## (c) Dynamic XSAM: α* per epoch")
    print()
    print(alpha_table(by_method[ALPHA_METHOD]) if ALPHA_METHOD in by_method
          else f"({ALPHA_METHOD} not run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "args": vars(args), "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
