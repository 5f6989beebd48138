"""How good is X-SAM's eigenvector estimate during a real training run?

    python -m benchmarks.eigenvector_quality                       # full run, JAX (~1 h)
    python -m benchmarks.eigenvector_quality --quick --backend torch   # smoke run (~1 min)
    python -m benchmarks.eigenvector_quality --periods 1,2,5:2 --epochs 6

X-SAM (`keras_sam.EigenCorrection`) keeps an estimate v of the Hessian's
dominant eigenvector, refreshed every p sharpness-aware steps of an epoch by q
warm-started power iterations on the current mini-batch (inference mode).
The official setting is p = q = 5 (`EigenCorrectedSAM`);
`EigenCorrection.amortized(every=p)` keeps q = 1 after a first refresh of 10
iterations and relies on the warm start to converge across refreshes while
the eigenvector drifts. This script measures how close each estimate stays to
a converged eigenvector.

Setup: CIFAR-10 (a subset of `cifar10_train_part1.npz` from `--data-dir`,
scaled to [0, 1] and normalised with the usual mean/std), the small
Conv-BN-ReLU CNN of `benchmarks/common.py` (~67k parameters), batch 128
(`--quick`: 32), SGD(0.05, momentum 0.9) inside every sharpness-aware
optimizer. Every
configuration starts from the same initial weights and sees the same data in
the same order (a fixed permutation per epoch, the remainder dropped):

- `X-SAM official p=5 q=5`: `EigenCorrectedSAM(sgd, rho=0.05, alpha=0.2,
  refresh_every=5, power_iterations=5)`;
- `amortized p=P q=Q`: `SAM(sgd, rho=0.05, eigen_correction=EigenCorrection(
  alpha=0.2, every=P, power_iterations=Q, warmup_iterations=W))` for each
  P:Q of `--periods` (Q = 1 is `EigenCorrection.amortized(every=P)`; W =
  `--warmup-iterations`, 10, as `amortized()`).

Measurement (a Keras callback, every `--measure-every` training steps once the
optimizer has refreshed at least once): at the current weights, a converged
top eigenvector v* of the Hessian of the loss on a FIXED probe batch
(`--probe-size` training images, inference mode, as the optimizer's own power
iteration) by `keras_sam.hessian` power iteration (`--max-iterations`,
`--tol`, warm-started from this run's previous v*), and |cos(v, v*)| with the
optimizer's current estimate v (`optimizer.eigen_correction.eigenvector`; on
JAX the callback's `self.model` syncs the trainer's state first, and the
optimizer's refresh counter is checked against the refresh schedule at every
measurement). With the defaults (16 steps per epoch, `--measure-every 5`),
the measurements fall at every position of the refresh cycles (epoch steps 4,
9, 14, 3, 8, 13, 2, ...), so stale estimates are measured as well as fresh
ones.

Reported per configuration (first table): refreshes done, Hessian-vector
products per training step spent on them (the warm-up included), mean / median / min |cos(v, v*)|
and the share of measurements with |cos| >= 0.9.

Second table (reference): the same |cos| split by the number of weight
updates since the estimate was last refreshed (1 = refreshed on the step just
taken); the mean share of the top curvature that v captures, vᵀHv / λ* on
the probe batch (robust to near-degenerate top eigenvalues, where |cos| with
one eigenvector says little); the batch noise floor |cos(v_b, v*)|, where v_b is a converged
eigenvector on the refresh-size mini-batch just trained on (power iteration
from a seeded Gaussian; what a perfect refresh on one mini-batch could reach; `--noise-floor-every` measurements,
0 = off); |cos(v, v_b)|; the median power iterations and the median relative
residual ||H v* - λ v*|| / |λ| of v* (how converged the reference is; a
small eigengap makes a residual r compatible with an angle up to about
r·|λ|/gap), and the median top eigenvalue λ.

A random direction would give |cos| ~ 1/sqrt(#parameters) ~ 0.004.
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

from benchmarks.common import (
    BACKENDS, DEFAULT_DATA_DIR, IMAGE_SHAPE, build_cnn, command_line, log, normalize,
)

DATA_FILE = "cifar10_train_part1.npz"

FULL = dict(train_size=2048, batch_size=128, epochs=8, probe_size=256, measure_every=5,
            noise_floor_every=4, periods="5,10,10:2", max_iterations=100)
QUICK = dict(train_size=192, batch_size=32, epochs=1, probe_size=32, measure_every=3,
             noise_floor_every=2, periods="5", max_iterations=20)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="jax", choices=BACKENDS)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 1 min on an idle machine): 192 images, batch 32, "
                             "1 epoch, probe 32, p=5 only, v* in at most 20 iterations")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"folder with {DATA_FILE} (default: ../shared/data "
                             "relative to the repository root)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images (rounded down to a multiple of the batch size)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="128 (quick: 32)")
    parser.add_argument("--probe-size", type=int, default=None,
                        help="images of the fixed probe batch (taken from the training subset)")
    parser.add_argument("--measure-every", type=int, default=None,
                        help="training steps between measurements")
    parser.add_argument("--noise-floor-every", type=int, default=None,
                        help="compute the batch noise floor at every k-th measurement (0: never)")
    parser.add_argument("--periods", default=None,
                        help="amortized rows: refresh period p, or p:q for q power iterations "
                             "per refresh, or p:q:b to refresh on the first b examples of "
                             "the batch (default 5,10,10:2; quick: 5)")
    parser.add_argument("--no-official", action="store_true",
                        help="leave out the official p=5 q=5 row (e.g. to add rows to a run)")
    parser.add_argument("--warmup-iterations", type=int, default=10,
                        help="power iterations of the amortized rows' first refresh (default 10)")
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="power iterations for v* and v_b at most (default 100; quick: 20)")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.periods = [
            (tuple(int(n) for n in p.split(":")) + (1, 0))[:3] if ":" in p else (int(p), 1, 0)
            for p in args.periods.split(",") if p.strip()
        ]
    except ValueError:
        parser.error(f"--periods: expected p, p:q or p:q:b entries, received {args.periods!r}")
    if any(min(p[:2]) < 1 or p[2] < 0 for p in args.periods) or args.warmup_iterations < 1:
        parser.error("--periods entries p:q(:b) and --warmup-iterations must be >= 1")
    if args.measure_every < 1 or args.batch_size < 1 or args.epochs < 1:
        parser.error("--measure-every, --batch-size and --epochs must be >= 1")
    return args


# -- data ---------------------------------------------------------------------------
def check_data(args):
    path = os.path.join(args.data_dir, DATA_FILE)
    if not os.path.isfile(path):
        sys.exit(
            f"error: CIFAR-10 not found: {path} does not exist.\n"
            f"Pass --data-dir DIR, a folder holding {DATA_FILE} "
            "(keys x_train uint8 (25000,32,32,3), y_train int64; see benchmarks/README.md)."
        )
    return path


def load_data(args):
    import numpy as np

    path = check_data(args)
    with np.load(path) as archive:
        if "x_train" not in archive or "y_train" not in archive:
            sys.exit(f"error: {path} lacks the arrays x_train / y_train.")
        x, y = archive["x_train"], archive["y_train"]
    n = (min(args.train_size, len(x)) // args.batch_size) * args.batch_size
    if n < args.batch_size:
        sys.exit(f"error: --train-size {args.train_size} is smaller than one batch.")
    rng = np.random.default_rng(args.seed)
    index = np.sort(rng.choice(len(x), size=n, replace=False))
    x = normalize(x[index])
    y = y[index].astype("int32")
    probe = rng.choice(n, size=min(args.probe_size, n), replace=False)
    # One fixed permutation per epoch, shared by every configuration.
    orders = [rng.permutation(n) for _ in range(args.epochs)]
    return x, y, x[probe], y[probe], orders


# -- model and optimizers ---------------------------------------------------------
def configurations(periods, warmup_iterations):
    """[(label, p, q, factory(inner) -> optimizer)]; `periods`: [(p, q, b)]
    (b = 0: refresh on the whole batch)."""
    import keras_sam

    rows = [(
        "X-SAM official p=5 q=5", 5, 5,
        lambda inner: keras_sam.EigenCorrectedSAM(
            inner, rho=0.05, alpha=0.2, refresh_every=5, power_iterations=5
        ),
    )]
    for p, q, b in periods:
        rows.append((
            f"amortized p={p} q={q}" + (f" b={b}" if b else ""), p, q,
            lambda inner, p=p, q=q, b=b: keras_sam.SAM(
                inner, rho=0.05,
                eigen_correction=keras_sam.EigenCorrection(
                    alpha=0.2, every=p, power_iterations=q, warmup_iterations=warmup_iterations,
                    refresh_batch_size=b or None,
                ),
            ),
        ))
    return rows


# -- the measurement ------------------------------------------------------------------
def last_refresh(epoch, batch, p, steps_per_epoch):
    """(epoch, step) of the last refresh at or before step `batch` of `epoch`
    (X-SAM's schedule: epoch steps s > 0 with s % p == 0), or None."""
    s = (batch // p) * p
    if s > 0:
        return epoch, s
    if epoch == 0:
        return None
    s = ((steps_per_epoch - 1) // p) * p
    return (epoch - 1, s) if s > 0 else last_refresh(epoch - 1, 0, p, steps_per_epoch)


def expected_refreshes(epoch, batch, p, steps_per_epoch):
    """Refreshes the schedule has done once step `batch` of `epoch` ran."""
    per_epoch = (steps_per_epoch - 1) // p
    return epoch * per_epoch + batch // p


def probe_class():
    """The callback class (defined once Keras is imported with its backend)."""
    import keras

    class EigenvectorProbe(keras.callbacks.Callback):
        """Measures |cos(v_optimizer, v*)| every `measure_every` steps."""

        def __init__(self, args, x, y, x_probe, y_probe, orders, p, steps_per_epoch):
            super().__init__()
            self.args = args
            self.x, self.y = x, y
            self.x_probe, self.y_probe = x_probe, y_probe
            self.orders = orders
            self.p = p
            self.steps_per_epoch = steps_per_epoch
            self.epoch = 0
            self.step = 0  # training steps done (all epochs)
            self.measurements = []
            self.v_star = None
            self.seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % self.args.measure_every:
                return
            refreshed = last_refresh(self.epoch, batch, self.p, self.steps_per_epoch)
            if refreshed is None:
                return
            start = time.perf_counter()
            record = self.measure(batch, refreshed)
            seconds = time.perf_counter() - start
            self.seconds += seconds
            floor = f" floor {record['floor']:.3f} ({record['floor_iterations']} it)" \
                if "floor" in record else ""
            log(f"    step {self.step:4d} (+{record['since_refresh']} since refresh): "
                f"|cos| {record['cos']:.3f}, vᵀHv/λ* {record['captured']:.3f}; "
                f"v*: {record['iterations']} it, "
                f"residual {record['residual']:.1e}, λ {record['eigenvalue']:.3g};{floor} "
                f"[{seconds:.1f} s]")

        def measure(self, batch, refreshed):
            import numpy as np
            from keras import ops

            from keras_sam import hessian

            model = self.model  # on JAX, syncs the trainer's state into the variables
            correction = model.sharpness_aware_optimizer.eigen_correction
            refreshes = int(ops.convert_to_numpy(correction.refreshes.value))
            expected = expected_refreshes(self.epoch, batch, self.p, self.steps_per_epoch)
            if refreshes != expected:
                raise RuntimeError(
                    f"The optimizer reports {refreshes} refreshes after step {batch} of "
                    f"epoch {self.epoch}; the schedule p={self.p} says {expected}: the "
                    "callback does not read the optimizer's current state."
                )
            v_opt_list = [ops.convert_to_numpy(e.value) for e in correction.eigenvector]
            v_opt = _flat(v_opt_list)

            a = self.args
            curvature = hessian.Curvature(model, self.x_probe, self.y_probe)
            eigenvalue, v_star = curvature.top_eigenvalue(
                a.max_iterations, a.tol, initial_vector=self.v_star, seed=a.seed
            )
            iterations = curvature.iterations
            self.v_star = v_star
            hv = curvature.hvp(v_star)  # one more product: the residual of (λ, v*)
            flat_star = _flat(v_star)
            flat_hv = _flat([ops.convert_to_numpy(t) for t in hv])
            rayleigh = float(flat_star @ flat_hv)
            residual = float(np.linalg.norm(flat_hv - rayleigh * flat_star) / (abs(rayleigh) + 1e-12))
            # The curvature the optimizer's direction captures, vᵀHv / λ* (one
            # more product): near 1 also when v mixes near-degenerate top
            # eigenvectors, where |cos| with any single one can be small.
            hv_opt = _flat([ops.convert_to_numpy(t) for t in curvature.hvp(v_opt_list)])
            captured = float(v_opt @ hv_opt / (v_opt @ v_opt) / rayleigh)

            record = {
                "step": self.step,
                "since_refresh": (self.epoch - refreshed[0]) * self.steps_per_epoch
                + batch - refreshed[1] + 1,
                "cos": _abs_cos(v_opt, flat_star),
                "eigenvalue": rayleigh,
                "iterations": iterations,
                "residual": residual,
                "captured": captured,
            }
            k = a.noise_floor_every
            if k and (len(self.measurements) % k == 0):
                rows = self.orders[self.epoch][batch * a.batch_size:(batch + 1) * a.batch_size]
                batch_curvature = hessian.Curvature(model, self.x[rows], self.y[rows])
                # From the seeded Gaussian, not from v*: a start near v* could
                # stop (on the eigenvalue criterion) before leaving it.
                _, v_batch = batch_curvature.top_eigenvalue(a.max_iterations, a.tol, seed=a.seed)
                record["floor_iterations"] = batch_curvature.iterations
                flat_batch = _flat(v_batch)
                record["floor"] = _abs_cos(flat_batch, flat_star)
                record["cos_batch"] = _abs_cos(v_opt, flat_batch)
            self.measurements.append(record)
            return record

    return EigenvectorProbe


def _flat(arrays):
    import numpy as np

    return np.concatenate([np.asarray(a, "float64").ravel() for a in arrays])


def _abs_cos(a, b):
    import numpy as np

    return float(abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


# -- one configuration ------------------------------------------------------------------
def run_configuration(keras, args, config, data, initial_weights):
    import keras_sam

    label, p, q, factory = config
    x, y, x_probe, y_probe, orders = data
    steps_per_epoch = len(x) // args.batch_size
    keras.utils.set_random_seed(args.seed)
    model = keras_sam.SAMModel(build_cnn(keras))
    model.set_weights(initial_weights)
    optimizer = factory(keras.optimizers.SGD(0.05, momentum=0.9))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe = probe_class()(args, x, y, x_probe, y_probe, orders, p, steps_per_epoch)
    start = time.perf_counter()
    history = []
    for epoch, order in enumerate(orders):
        h = model.fit(
            x[order], y[order], batch_size=args.batch_size, epochs=epoch + 1,
            initial_epoch=epoch, shuffle=False, verbose=0, callbacks=[probe],
        )
        history.append({k: float(v[-1]) for k, v in h.history.items()})
        log(f"  {label}: epoch {epoch + 1}/{len(orders)} loss {history[-1]['loss']:.3f} "
            f"acc {history[-1].get('accuracy', float('nan')):.3f} "
            f"({len(probe.measurements)} measurements, {time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    refreshes = int(keras.ops.convert_to_numpy(optimizer.eigen_correction.refreshes.value))
    total_steps = steps_per_epoch * len(orders)
    return {
        "label": label,
        "p": p,
        "q": q,
        "refreshes": refreshes,
        # The first refresh runs the correction's warm-up iterations.
        "hvps_per_step": (
            (refreshes - 1) * q + optimizer.eigen_correction.warmup_iterations if refreshes else 0
        ) / total_steps,
        "measurements": probe.measurements,
        "final": history[-1],
        "seconds": seconds,
        "measure_seconds": probe.seconds,
    }


# -- report ---------------------------------------------------------------------------
def _fmt(value, digits=3):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def main_table(results):
    lines = [
        "| configuration | refreshes | HVPs per step | mean \\|cos\\| | median | min | ≥0.9 share | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        cos = [m["cos"] for m in r["measurements"]]
        if cos:
            share = sum(c >= 0.9 for c in cos) / len(cos)
            cells = (statistics.fmean(cos), statistics.median(cos), min(cos), share)
        else:
            cells = (None,) * 4
        lines.append(
            f"| {r['label']} | {r['refreshes']} | {r['hvps_per_step']:.2f} | "
            + " | ".join(_fmt(c) for c in cells[:3])
            + f" | {_fmt(cells[3], 2)} | {len(cos)} |"
        )
    return "\n".join(lines)


def reference_table(results):
    max_p = max(r["p"] for r in results)
    buckets = list(range(1, max_p + 1))
    head = " | ".join(f"{b}" if b < max_p else f"≥{b}" for b in buckets)
    lines = [
        f"| configuration | mean \\|cos\\| 1st / 2nd half of run "
        f"| mean \\|cos(v, v*)\\| by updates since refresh: {head} "
        "| mean vᵀHv/λ* | floor \\|cos(v_b, v*)\\| | \\|cos(v, v_b)\\| | median iters v* | median residual v* | median λ | "
        "final loss / acc | train s | measure s |",
        "| --- | ---: | " + " | ".join("---:" for _ in buckets)
        + " | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ms = r["measurements"]
        by = []
        for b in buckets:
            sel = [m["cos"] for m in ms
                   if (m["since_refresh"] == b if b < max_p else m["since_refresh"] >= b)]
            by.append(f"{statistics.fmean(sel):.3f} ({len(sel)})" if sel else "—")
        floor = [m["floor"] for m in ms if "floor" in m]
        cos_batch = [m["cos_batch"] for m in ms if "cos_batch" in m]

        def med(key):
            values = [m[key] for m in ms]
            return statistics.median(values) if values else None

        cos = [m["cos"] for m in ms]
        half = (len(cos) + 1) // 2
        halves = (f"{statistics.fmean(cos[:half]):.3f} / {statistics.fmean(cos[half:]):.3f}"
                  if len(cos) >= 2 else "—")
        lines.append(
            f"| {r['label']} | {halves} | " + " | ".join(by)
            + f" | {_fmt(statistics.fmean(m['captured'] for m in ms)) if ms else '—'}"
            + f" | {_fmt(statistics.fmean(floor)) if floor else '—'}"
            + (f" (n={len(floor)})" if floor else "")
            + f" | {_fmt(statistics.fmean(cos_batch)) if cos_batch else '—'}"
            + f" | {_fmt(med('iterations'), 0)} | {_fmt(med('residual'), 4)} | {_fmt(med('eigenvalue'), 2)}"
            + f" | {r['final']['loss']:.3f} / {r['final'].get('accuracy', float('nan')):.3f}"
            + f" | {r['seconds'] - r['measure_seconds']:.0f} | {r['measure_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    check_data(args)  # before the slow imports
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = command_line(argv)
    started = time.perf_counter()
    import keras
    import numpy as np

    import keras_sam

    if keras.backend.backend() != args.backend:
        sys.exit(f"error: Keras runs {keras.backend.backend()}, not {args.backend} "
                 "(was keras imported before KERAS_BACKEND was set?)")
    data = load_data(args)
    x = data[0]
    keras.utils.set_random_seed(args.seed)
    initial = keras_sam.SAMModel(build_cnn(keras))
    initial.build((None,) + IMAGE_SHAPE)
    initial_weights = initial.get_weights()
    num_params = sum(int(np.prod(w.shape)) for w in initial.trainable_weights)
    del initial

    results = []
    for config in configurations(args.periods, args.warmup_iterations)[args.no_official:]:
        log(f"{config[0]} ...")
        results.append(run_configuration(keras, args, config, data, initial_weights))

    backend_module = __import__(args.backend)
    steps = (len(x) // args.batch_size) * args.epochs
    print(f"# X-SAM eigenvector quality ({'quick' if args.quick else 'full'} mode)")
    print()
    print(f"- command: `{command}`")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- backend: {args.backend} {backend_module.__version__}, keras {keras.__version__}, "
          f"keras_sam {keras_sam.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"- machine: {os.cpu_count()} cores ({platform.machine()}, {platform.system()})")
    print(f"- data: {len(x)} CIFAR-10 train images from {os.path.join(args.data_dir, DATA_FILE)}, "
          f"batch {args.batch_size}, {args.epochs} epochs = {steps} steps; "
          f"probe batch {len(data[2])} train images; CNN {num_params} parameters; "
          "SGD(0.05, momentum 0.9), rho 0.05, alpha 0.2")
    print(f"- v*: power iteration on the probe batch (inference mode), max {args.max_iterations} "
          f"iterations, tol {args.tol:g}, warm-started from the previous v*; measured every "
          f"{args.measure_every} steps once the optimizer has refreshed")
    print(f"- run time: {time.perf_counter() - started:.0f} s")
    print()
    print(main_table(results))
    print()
    print(reference_table(results))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"command": command, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
