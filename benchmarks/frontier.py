"""The cost–gain frontier (issue 20, part 5): what each method costs against the inner
optimizer, and how much of SAM's test-accuracy gain over SGD it keeps.

One command per part; every training part resumes (finished (config, seed) runs are read
back from benchmarks/results/frontier/<regime>.jsonl and skipped, so seeds accumulate over
invocations; `--methods a,b` restricts a part to some of its methods):

    python -m benchmarks.frontier a-cheap     # regime (a): SGD, SAM and the cheap methods
    python -m benchmarks.frontier b-pilot     # regime (b): SGD vs SAM at E and 2E epochs
    python -m benchmarks.frontier a-rest      # regime (a): ASAM, GSAM, WSAM, XSAM, X-SAM
    python -m benchmarks.frontier b-cheap     # regime (b): the cheap methods, at 2E epochs
    python -m benchmarks.frontier a-looksam   # regime (a): LookSAM with α = 0 (diagnostic)
    python -m benchmarks.frontier step-time   # step time of every method, three backends
    python -m benchmarks.frontier report      # report.md + frontier.png (no training)
    python -m benchmarks.frontier a-cheap --quick   # smoke run (temp folder, seconds)

Methods (`METHODS`; ρ is the regime's for every method, the other arguments the
package's / papers' defaults): SGD (the inner optimizer alone), SAM, ASAM (η = 0.01),
GSAM (α = 0.4), WSAM (γ = 0.9), XSAM (dynamic α, ρ_max = 2ρ, grid 0…2 step 0.1, searched
on the first batch of every epoch), X-SAM (`EigenCorrectedSAM`, α = 0.2, p = q = 5, at the
protocol's learning rate), LookSAM (k = 5, α = 0.7), SAM with `ascent_fraction=0.25`
(ascent on the first quarter of each batch), SAM with `every=2`, and the "when to pay"
policies of `keras_sam.when` (skipped, with a note, when the package lacks them):
RST `when.Random(p=0.5, seed=0)`, late phase `when.LateLearningRate(fraction=0.5)` (SAM
once the cosine learning rate fell below half its peak) and AE-SAM
`when.GradientNormGate()`.

Regime (a), the study's (`benchmarks.study.PROTOCOL`, its data, model and evaluation
functions): MNIST, 2,000 class-balanced training images with 40 % symmetric label noise
(seeded), MLP 784-256-256-10, 60 epochs of batch 64 (31 steps), SGD(momentum 0.9), lr
0.05 cosine to 0 over all steps, L2 5e-4 on the kernels; test on the 10,000 clean MNIST
test images. ρ = 0.2 for every method (the study's ρ*). JAX backend (jit), one thread.

Regime (b), the candidate where SAM's gain might survive convergence (`B_PROTOCOL`):
CIFAR-10, the first 100 training images of each class (`common.load_cifar10_subset`),
random crop (4 pixels of zero padding) and horizontal flip drawn per epoch with NumPy
from the seed (the same augmented batches for every method of a seed),
`common.build_vgg_style_cnn` with filters 16, 32, 64, 128 (99,450 parameters, BatchNorm,
NumPy-seeded Glorot kernels), 30 epochs of batch 32 (E = 30, 31 steps; the convergence
check also at 2E = 60), SGD(momentum 0.9), lr 0.05 cosine to 0 over all steps, L2 5e-4
on the kernels; test on the 10,000 CIFAR-10 test images. ρ = 0.1 for every method
(chosen before any run, not tuned). TensorFlow backend, graph mode (no XLA), one thread:
`generalization.py` measured it ~1.7× faster per step than JAX for a CNN on one thread.
(A first design, 2,000 images and the default 392k-parameter CNN at 16 epochs, took
151 s for one SGD run under load and reached 71.9 % training accuracy: too slow for the
budget, and stopped after that run.)

Runs are paired by seed (same initial weights, noisy labels / augmentation, batch order).
Every run records the test accuracy, the final training accuracy and loss, the wall time
and the process's CPU time of every epoch (`fit` for one epoch; epoch 0 includes
compilation; CPU time recorded by the runs made after the first ones), the CPU that other
processes used during the run (`common.ForeignLoad`), and the package's step clock
(steps, sharpness-aware steps) where the optimizer has one, and AE-SAM's gate counter.

Report (`report`): per regime, per method: seeds, test accuracy (mean ± SE), the gain over
SGD (mean ± SE of the per-seed differences) and its verdict (better / worse when |d| ≥ 2
SE, else "not resolved"), the method minus SAM (paired), the gain as a share of SAM's
gain (ratio of the mean gains; ± delta-method SE from the per-seed differences), the
epoch-time ratio to SGD measured in these runs (median epoch time over epochs 1…E-1,
per seed over SGD's of the same seed, geometric mean over seeds; also the ratio of the
fastest epochs, and the ratio of the median CPU time per epoch, geometric means over the
runs that recorded it, not paired: preemption by other processes does not inflate it),
the share of sharpness-aware steps, and the step-time ratios of the `step-time` part on
every backend. The plot draws the CPU-time ratio of the training runs where they
recorded it (wall time on this shared machine was not usable) and the step-time ratios.
The `step-time` part runs `benchmarks.step_time` (CIFAR-style CNN with BatchNorm, batch
128, one thread per backend, `--wait-quiet`) on the methods it has rows for and keeps its
output in step_time.md, which the report reads.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import common, study

RESULTS_DIR = os.path.join(common.REPO, "benchmarks", "results", "frontier")
log = common.log

A_PROTOCOL = dict(study.PROTOCOL, rho=0.2, backend="jax", jit=True)
for _key in ("probe_size", "probes"):
    A_PROTOCOL.pop(_key)
B_PROTOCOL = dict(dataset="cifar10", train_size=1000, augment="crop4+flip",
                  model="vgg_style_cnn", filters=[16, 32, 64, 128], epochs=30, batch_size=32,
                  lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, backend="tensorflow",
                  jit=False)
QUICK = {"a": dict(A_PROTOCOL, train_size=500, val_size=500, epochs=2),
         "b": dict(B_PROTOCOL, train_size=200, epochs=2)}
PROTOCOLS = {"a": A_PROTOCOL, "b": B_PROTOCOL}

# name -> (label, keras_sam class name or None, its arguments besides rho; "when": the policy)
METHODS = {
    "sgd": ("SGD", None, {}),
    "sam": ("SAM", "SAM", {}),
    "asam": ("ASAM", "ASAM", {"eta": 0.01}),
    "gsam": ("GSAM", "GSAM", {"alpha": 0.4}),
    "wsam": ("WSAM", "WSAM", {"gamma": 0.9}),
    "xsam": ("XSAM", "XSAM", dict(study.XSAM_GRID)),
    "x-sam": ("X-SAM", "EigenCorrectedSAM",
              {"alpha": 0.2, "refresh_every": 5, "power_iterations": 5}),
    "looksam": ("LookSAM k=5", "LookSAM", {"k": 5, "alpha": 0.7}),
    "looksam-a0": ("LookSAM k=5 α=0", "LookSAM", {"k": 5, "alpha": 0.0}),
    "sam-f0.25": ("SAM f=0.25", "SAM", {"ascent_fraction": 0.25}),
    "sam-every2": ("SAM every=2", "SAM", {"every": 2}),
    "rst": ("RST p=0.5", "SAM", {"when": ("Random", {"p": 0.5, "seed": 0})}),
    "late-lr": ("late lr<½peak", "SAM", {"when": ("LateLearningRate", {"fraction": 0.5})}),
    "ae-sam": ("AE-SAM", "SAM", {"when": ("GradientNormGate", {})}),
}
CHEAP = ["sam-f0.25", "looksam", "sam-every2", "rst", "late-lr", "ae-sam"]
PARTS = {
    "a-cheap": ("a", ["sgd", "sam"] + CHEAP, (1,)),
    "a-rest": ("a", ["asam", "gsam", "wsam", "xsam", "x-sam"], (1,)),
    # a diagnostic: LookSAM without its reused component (α = 0: SAM on one step in 5)
    "a-looksam": ("a", ["looksam-a0"], (1,)),
    "b-pilot": ("b", ["sgd", "sam"], (1, 2)),
    "b-cheap": ("b", CHEAP, (2,)),
}
# The epochs (× the protocol's) at which each regime's frontier is drawn: (b)'s at 2E, where
# the pilot found SAM ahead (at E it underfits and SAM is behind; see the README).
FRONTIER_SCALE = {"a": 1, "b": 2}
# step_time.py's row for each method (core suite: medians; periodic: means over cycles)
STEP_TIME_ROWS = {"sam": "SAM", "asam": "ASAM", "gsam": "GSAM", "wsam": "WSAM",
                  "xsam": "XSAM", "x-sam": "X-SAM", "looksam": "LookSAM k=5",
                  "sam-f0.25": "SAM f=0.25", "sam-every2": "SAM every=2"}
STEP_TIME_CORE = ("SAM", "ASAM", "GSAM", "WSAM", "XSAM", "SAM f=0.25")
STEP_TIME_PERIODIC = ("SAM every=2", "LookSAM k=5", "X-SAM")


def has_policies():
    import keras_sam

    return hasattr(keras_sam, "when")


def method_description(method, rho):
    """E.g. `SAM(sgd, rho=0.2, when=when.Random(p=0.5, seed=0))`."""
    _, class_name, kwargs = METHODS[method]
    if class_name is None:
        return "sgd"

    def arguments(items):
        return ", ".join(f"{k}={v}" for k, v in items.items())

    kwargs = dict(kwargs)
    when = kwargs.pop("when", None)
    text = f"{class_name}(sgd, rho={rho:g}" + (f", {arguments(kwargs)}" if kwargs else "")
    if method == "xsam":
        text += f", rho_max={2 * rho:g}"
    if when:
        text += f", when=when.{when[0]}({arguments(when[1])})"
    return text + ")"


def make_optimizer(method, inner, rho, seed):
    _, class_name, kwargs = METHODS[method]
    if class_name is None:
        return inner
    import keras_sam

    kwargs = dict(kwargs)
    if "when" in kwargs:
        policy, policy_args = kwargs.pop("when")
        kwargs["when"] = getattr(keras_sam.when, policy)(**policy_args)
    if method == "xsam":
        kwargs["rho_max"] = 2 * rho
    if method == "x-sam":
        kwargs["seed"] = seed
    return getattr(keras_sam, class_name)(inner, rho=rho, **kwargs)


# -- data -------------------------------------------------------------------------------
def load_b_data(data_dir, p):
    x, y, x_test, y_test = common.load_cifar10_subset(data_dir, p["train_size"])
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def augment(x, rng, pad=4):
    """Random crop of `pad`-pixel zero-padded images and horizontal flip, one draw per image."""
    import numpy as np

    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    out = np.empty_like(x)
    for i in range(n):
        image = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = image[:, ::-1] if flip[i] else image
    return out


def b_evaluations(model, data):
    def acc_loss(x, y):
        r = model.evaluate(x, y, batch_size=500, verbose=0, return_dict=True)
        return float(r["accuracy"]), float(r["loss"])

    l2 = float(sum(float(v) for v in model.losses))
    test_acc, test_loss = acc_loss(data["x_test"], data["y_test"])
    train_acc, train_loss = acc_loss(data["x"], data["y"])
    return {"test_accuracy": test_acc, "test_loss": test_loss - l2,
            "train_accuracy": train_acc, "train_loss": train_loss - l2}


# -- one run ----------------------------------------------------------------------------
def clock_counts(model):
    """The step clock's steps and sharpness-aware steps (host side), and AE-SAM's gate
    counter `climbs` (the steps the in-step gate chose) where the policy has one."""
    import numpy as np

    clock = getattr(model, "training_clock", None)
    out = {}
    for key in ("step", "sam_steps"):
        try:
            out[key] = int(getattr(clock, key))
        except (TypeError, ValueError):
            pass
    # by its path: the optimizer's `when.climbs` attribute was None after training here
    climbs = [v for v in model.optimizer.variables if v.path.endswith("gate_climbs")]
    if climbs:
        out["gate_climbs"] = int(np.asarray(keras_ops_numpy(climbs[0])))
    return out


def keras_ops_numpy(variable):
    from keras import ops

    return ops.convert_to_numpy(variable.value)


def run_one(config, seed, p, data_dir):
    """Trains one (config, seed) under protocol `p`; returns its record."""
    import keras
    import numpy as np

    import keras_sam

    started = time.perf_counter()
    regime = config["regime"]
    epochs = int(round(p["epochs"] * config.get("epochs_scale", 1)))
    if regime == "a":
        data = study.load_data(data_dir, p, seed)
        net = study.build_mlp(keras, p["hidden"], p["weight_decay"] / 2, seed)
    else:
        data = load_b_data(data_dir, p)
        net = common.build_vgg_style_cnn(keras, filters=tuple(p["filters"]),
                                         l2=p["weight_decay"] / 2, seed=seed)
    orders = common.epoch_orders(seed, len(data["x"]), p["batch_size"], epochs)
    steps_per_epoch = len(orders[0]) // p["batch_size"]
    model = keras_sam.SAMModel(net)
    schedule = keras.optimizers.schedules.CosineDecay(
        p["lr"], decay_steps=steps_per_epoch * epochs, alpha=0.0)
    inner = keras.optimizers.SGD(schedule, momentum=p["momentum"])
    model.compile(optimizer=make_optimizer(config["method"], inner, p["rho"], seed),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=p["jit"])
    rng = np.random.default_rng([seed, 4])
    history, epoch_seconds, epoch_cpu_seconds = [], [], []
    with common.ForeignLoad() as load:
        for epoch, order in enumerate(orders):
            x = data["x"][order]
            if regime == "b":
                x = augment(x, rng)
            t0, c0 = time.perf_counter(), time.process_time()
            h = model.fit(x, data["y"][order], batch_size=p["batch_size"], epochs=epoch + 1,
                          initial_epoch=epoch, shuffle=False, verbose=0)
            epoch_seconds.append(time.perf_counter() - t0)
            epoch_cpu_seconds.append(time.process_time() - c0)
            history.append({k: float(v[-1]) for k, v in h.history.items()})
            if not math.isfinite(history[-1]["loss"]):
                break
    evaluation = (study.evaluations if regime == "a" else b_evaluations)(model, data)
    return {"config": config, "seed": seed, "protocol": p, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "history": history,
            "epoch_seconds": epoch_seconds, "epoch_cpu_seconds": epoch_cpu_seconds,
            "other_load_cores": load.cores,
            "clock": clock_counts(model), "keras_sam": keras_sam.__file__,
            **evaluation, "seconds": time.perf_counter() - started}


def results_path(args, regime):
    return os.path.join(args.out_dir, f"{regime}.jsonl")


def run_part(args):
    regime, methods, scales = PARTS[args.part]
    if args.methods:
        methods = [m for m in methods if m in args.methods]
    if not has_policies():
        skipped = [m for m in methods if "when" in METHODS[m][2]]
        if skipped:
            log(f"note: keras_sam has no `when` module yet: skipping {', '.join(skipped)}")
        methods = [m for m in methods if m not in skipped]
    p = args.protocols[regime]
    path = results_path(args, regime)
    done = {study.run_key(r["config"], r["seed"]) for r in study.read_records(path, p)}
    configs = [dict(method=m, regime=regime, **({"epochs_scale": s} if s != 1 else {}))
               for s in scales for m in methods]
    jobs = [(c, s) for s in range(args.seeds) for c in configs
            if study.run_key(c, s) not in done]
    log(f"{args.part}: {len(jobs)} runs to do, results -> {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for number, (config, seed) in enumerate(jobs, 1):
        r = run_one(config, seed, p, args.data_dir)
        with open(path, "a") as f:  # one line per finished run: what resuming reads back
            print(json.dumps(r), file=f)
        name = METHODS[config["method"]][0] + (" 2E" if config.get("epochs_scale") else "")
        log(f"[{number}/{len(jobs)}] {name} seed {seed}: "
            f"test {100 * r['test_accuracy']:.2f} %, train {100 * r['train_accuracy']:.2f} %, "
            f"{r['seconds']:.0f} s, other load {r['other_load_cores']:.2f}")


# -- step time --------------------------------------------------------------------------
def step_time_command(args):
    return [sys.executable, "-m", "benchmarks.step_time", "--threads", "1",
            "--wait-quiet", str(args.wait_quiet), "--variants", ",".join(STEP_TIME_CORE),
            "--periodic", ",".join(STEP_TIME_PERIODIC)]


def run_step_time(args):
    command = step_time_command(args)
    log("running " + " ".join(command))
    out = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    shown = " ".join(["python"] + command[1:])
    text = f"<!-- {shown} -->\n" + out.stdout
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "step_time.md"), "w") as f:
        f.write(text)
    print(text)
    if out.returncode:
        log(out.stderr[-3000:])


def step_time_ratios(path):
    """{(backend label, jit): {row name: ratio}} from step_time.md's tables (core: ratio of
    medians; periodic: ratio of means against inner or, for rows against SAM, × SAM/inner),
    and {(backend, jit): other load cores}."""
    ratios, loads = {}, {}
    if not os.path.isfile(path):
        return ratios, loads
    header = None
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| backend"):
                header = cells
                continue
            if header is None or not line.startswith("| ") or line.startswith("|---"):
                if not line.startswith("|"):
                    header = None
                continue
            row = dict(zip(header, cells))
            key = (row["backend"].split()[0], row["jit"])
            sam_inner = ratios.get(key, {}).get("SAM")
            local = re.match(r"([0-9.]+)×", row.get("SAM/inner", ""))
            if local:  # a periodic table's own SAM/inner: its "/SAM" ratios are against it
                sam_inner = float(local.group(1))
            for h, value in row.items():
                m = re.match(r"(.+)/(inner|SAM)\b", h)
                v = re.match(r"([0-9.]+)×", value)
                if not m or not v:
                    continue
                name, base = m.group(1), m.group(2)
                r = float(v.group(1))
                if base == "SAM":
                    if sam_inner is None:
                        continue
                    r *= sam_inner
                ratios.setdefault(key, {}).setdefault(name, r)
            if "other load" in row:
                loads.setdefault(key, []).append(row["other load"])
    return ratios, loads


# -- report -----------------------------------------------------------------------------
def delta_share(gains, sam_gains):
    """(share of SAM's mean gain, its delta-method SE) from per-seed gains (common seeds)."""
    import statistics

    n = len(gains)
    a, b = statistics.fmean(gains), statistics.fmean(sam_gains)
    if n < 2 or b == 0:
        return (a / b if b else math.nan), math.nan
    va, vb = statistics.variance(gains) / n, statistics.variance(sam_gains) / n
    cov = sum((x - a) * (y - b) for x, y in zip(gains, sam_gains)) / (n - 1) / n
    var = va / b ** 2 + a ** 2 * vb / b ** 4 - 2 * a * cov / b ** 3
    return a / b, math.sqrt(max(var, 0.0))


def epoch_time_ratio(runs, sgd, statistic=None, key="epoch_seconds"):
    """Geometric mean over common seeds of statistic(epoch times, epochs ≥ 1) / SGD's
    (default the median; `min`: the fastest epochs, less sensitive to other load; key
    "epoch_cpu_seconds": the process's CPU time, where recorded)."""
    import statistics

    statistic = statistic or statistics.median
    logs = []
    for s in sorted(set(runs) & set(sgd)):
        a, b = runs[s].get(key, [])[1:], sgd[s].get(key, [])[1:]
        if a and b:
            logs.append(math.log(statistic(a) / statistic(b)))
    return math.exp(statistics.fmean(logs)) if logs else math.nan


def cpu_time_ratio(runs, sgd):
    """(geometric mean of the runs' median CPU time per epoch (epochs ≥ 1) / SGD runs' one,
    "n/m" runs): not paired by seed — CPU time does not depend on the seed, and the first
    runs did not record it."""
    import statistics

    def log_medians(group):
        return [math.log(statistics.median(v["epoch_cpu_seconds"][1:])) for v in group.values()
                if len(v.get("epoch_cpu_seconds", [])) > 1]

    a, b = log_medians(runs), log_medians(sgd)
    if not a or not b:
        return math.nan, ""
    return math.exp(statistics.fmean(a) - statistics.fmean(b)), f"{len(a)}/{len(b)} runs"


def sharpness_aware_share(method, clock):
    """Steps with an ascent / all steps, from the step clock (LookSAM: its look steps,
    t % k == 0, as step_time.read_counters counts them)."""
    if METHODS[method][1] == "LookSAM":
        k = METHODS[method][2]["k"]
        return -(-clock["step"] // k) / clock["step"]
    if "when" in METHODS[method][2] and METHODS[method][2]["when"][0] == "GradientNormGate":
        # decided inside the step: only the gate's own counter knows (later runs record it)
        return clock["gate_climbs"] / clock["step"] if "gate_climbs" in clock else None
    return clock["sam_steps"] / clock["step"]


def verdict(d, se):
    if not (math.isfinite(d) and math.isfinite(se)) or abs(d) < 2 * se or d == 0:
        return "not resolved"
    return "better" if d > 0 else "worse"


BACKEND_COLUMNS = (("tensorflow", "XLA"), ("tensorflow", "graph"), ("jax", "jit"),
                   ("torch", "eager"))


def regime_rows(runs, regime, scale, step_ratios):
    """[(method, cells, gain info)] of one regime at one epoch scale."""
    def cfg(m):
        return dict(method=m, regime=regime, **({"epochs_scale": scale} if scale != 1 else {}))

    sgd, sam = study.runs_of(runs, cfg("sgd")), study.runs_of(runs, cfg("sam"))
    rows = []
    for m in METHODS:
        r = study.runs_of(runs, cfg(m))
        if not r:
            continue
        acc = study.mean_se([v["test_accuracy"] for v in r.values()])
        train = study.mean_se([v["train_accuracy"] for v in r.values()])
        d, se, n = study.paired(sgd, r)
        vs_sam = study.paired(sam, r)
        seeds = sorted(set(r) & set(sgd) & set(sam))
        share = (math.nan, math.nan)
        if m != "sgd" and len(seeds) >= 1:
            share = delta_share([r[s]["test_accuracy"] - sgd[s]["test_accuracy"] for s in seeds],
                                [sam[s]["test_accuracy"] - sgd[s]["test_accuracy"] for s in seeds])
        ratio, fastest = epoch_time_ratio(r, sgd), epoch_time_ratio(r, sgd, min)
        cpu, cpu_runs = cpu_time_ratio(r, sgd)
        loads = [v["other_load_cores"] for v in r.values() if v.get("other_load_cores") is not None]
        sam_share = [x for x in (sharpness_aware_share(m, v["clock"]) for v in r.values()
                                 if v.get("clock", {}).get("step")) if x is not None]
        cells = [METHODS[m][0], str(len(r)), study.fmt_pp(*acc), study.fmt_pp(*train),
                 "—" if m == "sgd" else study.fmt_pp(d, se, signed=True),
                 "—" if m == "sgd" else verdict(d, se),
                 "—" if m in ("sgd", "sam") else study.fmt_pp(vs_sam[0], vs_sam[1], signed=True),
                 "—" if m == "sgd" or not math.isfinite(share[0]) else f"{share[0]:.2f}" + (
                     f" ± {share[1]:.2f}" if math.isfinite(share[1]) else ""),
                 f"{ratio:.2f}× ({fastest:.2f}×)" if math.isfinite(ratio) else "—",
                 f"{cpu:.2f}× ({cpu_runs})" if math.isfinite(cpu) else "—",
                 f"{max(loads):.2f}" if loads else "—",
                 f"{sum(sam_share) / len(sam_share):.2f}" if sam_share and m != "sgd" else "—"]
        name = STEP_TIME_ROWS.get(m)
        for key in BACKEND_COLUMNS:
            value = step_ratios.get(key, {}).get(name) if name else None
            cells.append("1.00×" if m == "sgd" and key in step_ratios else
                         f"{value:.2f}×" if value else "—")
        rows.append((m, cells, {"gain": (d, se), "share": share, "ratio": cpu,
                                "steps": {k: step_ratios.get(k, {}).get(name) for k in
                                          BACKEND_COLUMNS} if name else {}}))
    return rows


HEADER = ["method", "seeds", "test acc % (± SE)", "final train acc %",
          "gain over SGD, pp (± paired SE)", "verdict", "− SAM, pp (± paired SE)",
          "share of SAM's gain (± SE)",
          "epoch-time ratio to SGD, training runs: median (fastest)",
          "epoch CPU-time ratio to SGD, training runs (runs: method/SGD)",
          "max other load (cores)", "share of steps sharpness-aware (clock)"] + [
    f"step-time ratio {b} {j}" for b, j in BACKEND_COLUMNS]


def report(args):
    step_ratios, step_loads = step_time_ratios(os.path.join(args.out_dir, "step_time.md"))
    lines = ["# The cost–gain frontier (generated by `python -m benchmarks.frontier report`)",
             "", "Accuracies in %, differences in percentage points (pp), paired by seed "
             "(± SE of the per-seed differences); verdict: better / worse when |d| ≥ 2 SE, "
             "else not resolved. Share of SAM's gain: mean gain / SAM's mean gain over the "
             "common seeds (± delta-method SE). Epoch-time ratio: median epoch time "
             "(epochs ≥ 1, i.e. without compilation) over SGD's, same seed, geometric mean "
             "over seeds, measured in these training runs (one thread); in parentheses the "
             "same for the fastest epoch of each run; CPU-time ratio: the process's median CPU "
             "time per epoch over SGD's, geometric means over the runs that recorded it (not "
             "paired; insensitive to preemption by other processes; recorded from the "
             "policies' runs on); step-time ratios: "
             "`step_time.md` (CIFAR-style BN CNN, batch 128, one thread per backend). Share "
             "of steps sharpness-aware: the package's step clock after training (host side; "
             "a policy decided inside the compiled step may not show there).", ""]
    plot_data = {}
    for regime, scales in (("a", (1,)), ("b", (1, 2))):
        p = args.protocols[regime]
        records = study.read_records(results_path(args, regime), p)
        runs = study.index(records)
        lines += [f"## Regime ({regime})", "", f"- protocol: `{json.dumps(p)}`",
                  f"- results: `{os.path.relpath(results_path(args, regime), common.REPO)}`, "
                  f"{len(records)} runs", ""]
        for scale in scales:
            rows = regime_rows(runs, regime, scale, step_ratios)
            if not rows:
                continue
            epochs = int(round(p["epochs"] * scale))
            lines += [f"### {epochs} epochs" + (" (2E: convergence check)" if scale == 2 else ""),
                      "", "| " + " | ".join(HEADER) + " |",
                      "|" + " --- |" * 2 + " ---: |" * 3 + " --- |" + " ---: |" * (
                          len(HEADER) - 6)]
            lines += ["| " + " | ".join(c) + " |" for _, c, _ in rows]
            lines.append("")
            if scale == FRONTIER_SCALE[regime]:
                plot_data[f"({regime}) {epochs} epochs"] = rows
        if regime == "b":
            lines += pilot_lines(runs)
        lines += ["Methods: " + "; ".join(
            f"{METHODS[m][0]} = `{method_description(m, p['rho'])}`" for m in METHODS), ""]
    if step_loads:
        lines += ["Step-time rows' other load (cores): " + "; ".join(
            f"{b} {j}: {', '.join(v)}" for (b, j), v in step_loads.items()), ""]
    plot = make_plot(plot_data, args)
    lines.append(f"Plot: {plot}" if plot else "Plot: none (matplotlib missing or no data)")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write(text)
    print(text)


def pilot_lines(runs):
    """Does SAM's gain survive 2E in regime (b)?"""
    out = ["Convergence check: SAM − SGD at E and at 2E epochs (paired by seed); the "
           "regime qualifies when the gain at 2E is ≥ 2 paired SE:", "",
           *study.DIFF_HEADER]
    for scale in (1, 2):
        extra = {"epochs_scale": scale} if scale != 1 else {}
        out.append(study.diff_row(f"SAM − SGD, {scale}E",
                                  study.runs_of(runs, dict(method="sgd", regime="b", **extra)),
                                  study.runs_of(runs, dict(method="sam", regime="b", **extra))))
    return out + [""]


def make_plot(plot_data, args):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not plot_data:
        return None
    fig, axes = plt.subplots(1, len(plot_data), figsize=(6.5 * len(plot_data), 4.8),
                             squeeze=False)
    markers = {"training": "o", ("tensorflow", "XLA"): "s", ("tensorflow", "graph"): "D",
               ("jax", "jit"): "^", ("torch", "eager"): "v"}
    colours = plt.get_cmap("tab20").colors
    for ax, (regime, rows) in zip(axes[0], plot_data.items()):
        for m, _, info in rows:
            colour = colours[list(METHODS).index(m) % len(colours)]
            d, se = info["gain"]
            if m == "sgd" or not math.isfinite(d):
                continue
            costs = {"training": info["ratio"], **info["steps"]}
            for key, cost in costs.items():
                if cost is None or not math.isfinite(cost):
                    continue
                ax.errorbar(cost, 100 * d, yerr=100 * se if math.isfinite(se) else 0,
                            marker=markers[key], color=colour, capsize=2, ls="none",
                            alpha=1.0 if key == "training" else 0.55, ms=7)
            placed = [c for c in costs.values() if c is not None and math.isfinite(c)]
            if placed:
                ax.annotate(METHODS[m][0], (placed[0], 100 * d), fontsize=7,
                            xytext=(4, 3), textcoords="offset points", color=colour)
        gains = [100 * info["gain"][0] for m, _, info in rows
                 if m != "sgd" and math.isfinite(info["gain"][0])]
        inside = [g for g in gains if abs(g) <= 5]  # a far outlier (LookSAM) would flatten the rest
        if inside and len(inside) < len(gains):
            low, high = min(inside + [0]) - 0.8, max(inside) + 0.8
            ax.set_ylim(low, high)
            for m, _, info in rows:
                g = 100 * info["gain"][0] if m != "sgd" else 0
                if abs(g) > 5:
                    ax.annotate(f"{METHODS[m][0]}: {g:+.1f} pp (off scale)",
                                (0.02, 0.97 if g > 0 else 0.03), xycoords="axes fraction",
                                va="top" if g > 0 else "bottom", fontsize=7)
        ax.axhline(0, color="gray", lw=0.8)
        ax.axvline(1, color="gray", lw=0.8)
        ax.set(xlabel="time per epoch / SGD's (×)",
               ylabel="test accuracy − SGD's (pp, ± paired SE)",
               title=f"regime {regime}")
    handles = [plt.Line2D([], [], marker=mk, color="k", ls="none",
                          label="training runs, CPU time per epoch" if k == "training" else
                          f"step time {k[0]} {k[1]}") for k, mk in markers.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle("Cost–gain frontier: gain over SGD against cost (colour: method)")
    path = os.path.join(args.out_dir, "frontier.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return os.path.relpath(path, common.REPO)


# -- command line -----------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=tuple(PARTS) + ("step-time", "report"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny protocol, temp folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--methods", default=None, help="only these methods, comma-separated")
    parser.add_argument("--wait-quiet", type=float, default=300.0,
                        help="step-time: wait up to SECONDS for a quiet machine per backend")
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_SAM_DATA",
                                                             common.DEFAULT_DATA_DIR))
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results/frontier")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",") if args.methods else None
    if args.quick:
        args.seeds = 1
        args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="frontier_quick_")
    args.out_dir = args.out_dir or RESULTS_DIR
    args.protocols = QUICK if args.quick else PROTOCOLS
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.part in ("step-time", "report"):  # no training in this process
        (run_step_time if args.part == "step-time" else report)(args)
        return 0
    backend = args.protocols[PARTS[args.part][0]]["backend"]
    for key, value in common.single_thread_env().items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("KERAS_BACKEND", backend)
    if os.environ["KERAS_BACKEND"] != backend:
        sys.exit(f"error: this part runs on {backend}, "
                 f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']}")
    common.limit_threads(backend)
    run_part(args)
    if args.quick:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
