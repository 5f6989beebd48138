"""The XSAM and X-SAM papers' claims under their own protocols, in a regime where SAM beats SGD.

One command per part; every part resumes (finished (config, seed) runs are
read back from benchmarks/results/study/<part>.jsonl and skipped), so seeds
accumulate over several invocations (`--seeds N` adds seeds N-1, N-2, ...):

    python -m benchmarks.study regime            # SGD vs SAM over ρ, and at 2x the epochs
    python -m benchmarks.study xsam              # SGD+ (α=0), SAM (α=1), dynamic XSAM, same ρ grid
    python -m benchmarks.study xsam-multistep    # SAM vs XSAM at k = 1, 2, 3, same total ρ
    python -m benchmarks.study x-sam             # X-SAM vs SAM, same ρ, X-SAM lr grid
    python -m benchmarks.study curvature         # λ_max and gradient–eigenvector angles per epoch
    python -m benchmarks.study report            # tables + PNGs from the JSON lines (no training)
    python -m benchmarks.study xsam --quick      # smoke run (a few seconds per run, temp folder)

Regime (`PROTOCOL`): MNIST, a fixed class-balanced subset of the training
set (the first `train_size / 10` images of each class among images
0-49,999), symmetric label noise: each label is replaced, with probability
`noise`, by one of the 9 other classes drawn uniformly (NumPy, seeded by the
run's seed: the same noisy labels for every method of a seed). Validation:
`val_size` images from training images 50,000-59,999, with labels noised the
same way (what a user with noisy labels would have); used only to choose ρ
and learning rates. Test: the 10,000 MNIST test images, clean labels.
Model: an MLP 784-h-h-10 (ReLU) whose kernels are drawn by
`common.numpy_glorot_uniform(seed)`; SGD(momentum 0.9), learning rate cosine
to 0 over all steps, L2 weight decay wd (a regularizer wd/2·‖w‖² on the
kernels, inside every gradient); per epoch one NumPy permutation drawn from
the seed (`common.epoch_orders`), identical for every method. Runs are
paired by seed: same initial weights, noisy labels and batch order.

Every run records test accuracy (clean labels), validation accuracy (noisy
labels), training accuracy against the noisy labels (memorisation) and the
clean ones, the final training loss (noisy labels, cross-entropy, inference
mode), and per epoch the running training loss of `fit`. Dynamic XSAM runs
also record XSAM's mechanism between searches (`MechanismProbe`): on
`probes` random later batches of each epoch, at the weights before that step,
SAM's ascent (v0 = g0/‖g0‖, v1 = g1/‖g1‖ at θ + ρ·v0) and the loss
L_B(θ + ρ_m·v(α)) for every α of XSAM's grid 0, 0.1, …, 2 (`keras_sam`'s own
`slerp`), from which the α* the optimizer found at the epoch's search is
compared with α = 1 (SAM) and α = 0; on the search batch itself the same grid
is evaluated and its argmax compared with the optimizer's α* (a check that
the probe reproduces the package). Curvature runs record, before training
and after every epoch, on a fixed probe set of `probe_size` training images
(inference mode), before every 2nd epoch and at the end: the cross-entropy, λ_max
(`keras_sam.hessian.Curvature.top_eigenvalue`, ≤ 20 products, warm-started), the training loss there, and the angles between the top
eigenvector and the clean gradient and SAM's perturbed gradient.

Statistics: differences are paired by seed, mean ± the standard error of the
per-seed differences, n seeds. Backend: JAX (jit), one thread; run two shards
in parallel with `--shard 0/2` and `--shard 1/2`.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

from benchmarks import common

RESULTS_DIR = os.path.join(common.REPO, "benchmarks", "results", "study")
MNIST_FILE = "mnist.npz"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
PROTOCOL = dict(dataset="mnist", train_size=2000, val_size=2000, noise=0.4, hidden=256,
                epochs=60, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                probe_size=1000, probes=3)
QUICK_PROTOCOL = dict(PROTOCOL, train_size=500, val_size=500, epochs=2, probe_size=64)
RHOS = (0.05, 0.1, 0.2, 0.3)
RHO = 0.2  # the largest ρ of the grid at which SAM converges (`regime` part)
XSAM_LR_SCALES = (1.0, 0.3, 0.1, 3.0)  # X-SAM's learning rate, × the protocol's (run order)
XSAM_LR_SCALE = 0.1  # chosen on validation in the `x-sam` part (seeds 0-1 of lr 0.1-1)
XSAM_GRID = dict(alpha_max=2.0, alpha_delta=0.1)
log = common.log


# -- data and model ---------------------------------------------------------------------
def noisy_labels(y, noise, rng):
    """Each label replaced with probability `noise` by one of the other 9 classes."""
    import numpy as np

    flip = rng.random(len(y)) < noise
    shift = rng.integers(1, common.NUM_CLASSES, size=len(y))
    return np.where(flip, (y + shift) % common.NUM_CLASSES, y).astype("int32")


def load_data(data_dir, p, seed):
    """Dict of float32 flattened images and int32 labels: train (noisy and clean), val (noisy),
    test (clean)."""
    import numpy as np

    (path,) = common.require_files(data_dir, (MNIST_FILE,))
    with np.load(path) as archive:
        x, y = archive["x_train"], archive["y_train"]
        x_test, y_test = archive["x_test"], archive["y_test"]

    def prepare(images):
        return ((images.reshape(len(images), -1).astype("float32") / 255.0 - MNIST_MEAN)
                / MNIST_STD)

    rows = common.balanced_subset(y[:50_000], p["train_size"])
    val_rows = 50_000 + common.balanced_subset(y[50_000:], p["val_size"])
    rng = np.random.default_rng([seed, 2])
    clean = y[rows].astype("int32")
    return {"x": prepare(x[rows]), "y": noisy_labels(clean, p["noise"], rng), "y_clean": clean,
            "x_val": prepare(x[val_rows]),
            "y_val": noisy_labels(y[val_rows].astype("int32"), p["noise"], rng),
            "x_test": prepare(x_test), "y_test": y_test.astype("int32")}


def build_mlp(keras, hidden, l2, seed):
    """784-hidden-hidden-10 ReLU MLP (logits), NumPy-seeded Glorot kernels, L2 on kernels."""
    init = common.numpy_glorot_uniform(keras, seed)
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    dense = dict(kernel_initializer=init, kernel_regularizer=reg)
    return keras.Sequential([keras.Input((784,)),
                             keras.layers.Dense(hidden, activation="relu", **dense),
                             keras.layers.Dense(hidden, activation="relu", **dense),
                             keras.layers.Dense(common.NUM_CLASSES, **dense)], name="mlp")


def make_optimizer(config, inner, seed):
    """The optimizer of a config: method sgd | sam | xsam (alpha None = dynamic) | x-sam."""
    import keras_sam

    method, rho, steps = config["method"], config.get("rho"), config.get("steps", 1)
    if method == "sgd":
        return inner
    if method == "sam":
        return keras_sam.SAM(inner, rho=rho, steps=steps)
    if method == "xsam":
        return keras_sam.XSAM(inner, rho=rho, rho_max=2 * rho, steps=steps,
                              alpha=config.get("alpha"), **XSAM_GRID)
    if method == "x-sam":
        return keras_sam.EigenCorrectedSAM(inner, rho=rho, alpha=config.get("xsam_alpha", 0.2),
                                           refresh_every=5, power_iterations=5, seed=seed)
    raise ValueError(f"unknown method {method!r}")


# -- measurements -----------------------------------------------------------------------
def sam_directions(curvature, theta, rho):
    """(loss, v0, v1, ψ) of SAM's one-step ascent at `theta` on the curvature's data."""
    from keras import ops

    from keras_sam import vectors as vec

    curvature.params = theta
    loss, g0 = curvature.loss_and_gradient()
    v0 = vec.scale(g0, 1.0 / (vec.norm(g0) + vec.EPS))
    curvature.params = vec.add_scaled(theta, rho, v0)
    _, g1 = curvature.loss_and_gradient()
    v1 = vec.scale(g1, 1.0 / (vec.norm(g1) + vec.EPS))
    curvature.params = theta
    psi = ops.arccos(ops.clip(vec.dot(v0, v1), -1.0, 1.0))
    return loss, v0, v1, psi


def grid_loss_function(model, rho, alphas):
    """`f(params, non_trainable, metrics_values, x, y)` -> [L_B(θ + 2ρ·v(α)) for α in alphas]
    (training mode, as XSAM's probes), built from keras_sam's `slerp`; compiled with `jax.jit`
    on JAX (the study's backend), eager elsewhere."""
    import keras
    from keras import ops

    from keras_sam import backend
    from keras_sam import vectors as vec
    from keras_sam.optimizers.xsam import slerp
    from keras_sam.stateless import ModelVariables, stateless_loss

    variables = ModelVariables.of(model)  # the study's models: no untracked state

    def losses(params, non_trainable, metrics_values, x, y):
        def loss(values):
            return stateless_loss(
                model, variables, values, non_trainable, metrics_values, x, y, None
            )[0]

        grad = backend.value_and_grad(lambda values: (loss(values), ()))
        _, g0 = grad(params)
        v0 = vec.scale(g0, 1.0 / (vec.norm(g0) + vec.EPS))
        _, g1 = grad(vec.add_scaled(params, rho, v0))
        v1 = vec.scale(g1, 1.0 / (vec.norm(g1) + vec.EPS))
        psi = ops.arccos(ops.clip(vec.dot(v0, v1), -1.0, 1.0))
        def body(i, out):  # a loop, not 21 unrolled passes: compiles one forward pass
            alpha = ops.take(ops.convert_to_tensor(alphas, "float32"), i)
            value = loss(vec.add_scaled(params, 2 * rho, slerp(v0, v1, alpha, psi)))
            return ops.slice_update(out, ops.reshape(i, (1,)), ops.reshape(value, (1,)))

        return ops.fori_loop(0, len(alphas), body, ops.zeros((len(alphas),), "float32"))

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(losses)
    return losses


def mechanism_probe_class():
    import keras
    import numpy as np
    from keras import ops

    class MechanismProbe(keras.callbacks.Callback):
        """XSAM's α* between searches (see the module docstring). One epoch per `fit`."""

        def __init__(self, data, orders, batch_size, rho, probes, seed):
            super().__init__()
            self.data, self.orders, self.batch_size = data, orders, batch_size
            self.rho, self.probes = rho, probes
            self.rng = np.random.default_rng([seed, 3])
            self.alphas = [round(i * XSAM_GRID["alpha_delta"], 6) for i in range(
                int(XSAM_GRID["alpha_max"] / XSAM_GRID["alpha_delta"] + 1e-9) + 1)]
            self.epoch, self.samples, self.checks, self.seconds = 0, [], [], 0.0
            self.function = None

        def set_epoch(self, epoch):
            self.epoch = epoch
            n = len(self.orders[epoch]) // self.batch_size
            chosen = self.rng.choice(np.arange(1, n), size=min(self.probes, n - 1), replace=False)
            self.chosen = set(int(b) for b in chosen)

        def batch_losses(self, batch):
            rows = self.orders[self.epoch][batch * self.batch_size:(batch + 1) * self.batch_size]
            model = self.model  # syncs the JAX trainer's state into the variables first
            if self.function is None:
                self.function = grid_loss_function(model, self.rho, self.alphas)
            values = [[v.value for v in vs] for vs in (
                model.trainable_variables, model.non_trainable_variables,
                model.metrics_variables)]
            losses = self.function(*values, self.data["x"][rows], self.data["y"][rows])
            return [float(l) for l in ops.convert_to_numpy(losses)]

        def current_alpha(self):
            return float(ops.convert_to_numpy(self.model.optimizer.alpha_value))

        def on_train_batch_begin(self, batch, logs=None):
            if batch != 0 and batch not in self.chosen:
                return
            start = time.perf_counter()
            losses = self.batch_losses(batch)
            if batch == 0:
                self.search_losses = losses
            else:
                self.samples.append({"epoch": self.epoch, "batch": batch,
                                     "alpha_star": self.current_alpha(), "losses": losses})
            self.seconds += time.perf_counter() - start

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:  # the optimizer has searched on this batch: compare the argmaxes
                probe = self.alphas[int(np.argmax(self.search_losses))]
                self.checks.append({"epoch": self.epoch, "optimizer_alpha": self.current_alpha(),
                                    "probe_alpha": probe,
                                    "probe_gap": max(self.search_losses) - sorted(
                                        self.search_losses)[-2]})

    return MechanismProbe


def curvature_point(model, x, y, rho, previous):
    """λ_max (power iteration, inference mode), the loss, and the angles of the clean gradient
    and of SAM's perturbed gradient to the top eigenvector, on (x, y)."""
    import math as m

    from keras import ops

    from keras_sam import hessian
    from keras_sam import vectors as vec

    curvature = hessian.Curvature(model, x, y)
    eigenvalue, v = curvature.top_eigenvalue(max_iterations=20, tol=1e-3,
                                             initial_vector=previous)
    theta = curvature.params
    loss, v0, v1, _ = sam_directions(curvature, theta, rho)
    v_t = [ops.convert_to_tensor(t) for t in v]

    def angle(u):
        cos = float(ops.convert_to_numpy(vec.cosine(u, v_t)))
        return m.degrees(m.acos(max(-1.0, min(1.0, cos))))

    l2 = float(sum(float(l) for l in model.losses))  # the regularizer at these weights
    return {"lambda_max": eigenvalue, "objective": loss, "loss": loss - l2,
            "iterations": curvature.iterations,
            "angle_gradient": angle(v0), "angle_sam_gradient": angle(v1)}, v


# -- one run ----------------------------------------------------------------------------
def compiled_model(config, p, seed, steps_total):
    import keras

    import keras_sam

    model = keras_sam.SAMModel(build_mlp(keras, p["hidden"], p["weight_decay"] / 2, seed))
    lr = p["lr"] * config.get("lr_scale", 1.0)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_total, alpha=0.0)
    inner = keras.optimizers.SGD(schedule, momentum=p["momentum"])
    model.compile(optimizer=make_optimizer(config, inner, seed),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    return model


def evaluations(model, data):
    def accuracy_and_loss(x, y):
        result = model.evaluate(x, y, batch_size=500, verbose=0, return_dict=True)  # 1 shape
        return float(result["accuracy"]), float(result["loss"])

    test_acc, test_loss = accuracy_and_loss(data["x_test"], data["y_test"])
    train_acc, train_loss = accuracy_and_loss(data["x"], data["y"])
    clean_acc, _ = accuracy_and_loss(data["x"], data["y_clean"])
    val_acc, _ = accuracy_and_loss(data["x_val"], data["y_val"])
    # evaluate's "loss" includes the L2 term: report the cross-entropy alone
    l2 = float(sum(float(l) for l in model.losses))
    return {"test_accuracy": test_acc, "test_loss": test_loss - l2, "val_accuracy": val_acc,
            "train_accuracy": train_acc, "train_loss": train_loss - l2,
            "train_clean_accuracy": clean_acc}


def trajectory_point(model, data):
    """Training cross-entropy (noisy labels) and test accuracy at the current weights."""
    l2 = float(sum(float(l) for l in model.losses))
    train = model.evaluate(data["x"], data["y"], batch_size=500, verbose=0, return_dict=True)
    test = model.evaluate(data["x_test"], data["y_test"], batch_size=500, verbose=0,
                          return_dict=True)
    return {"eval_train_loss": float(train["loss"]) - l2,
            "eval_test_accuracy": float(test["accuracy"])}


def run_one(config, seed, p, data_dir):
    """Trains one config with one seed under protocol `p`; returns its record."""
    started = time.perf_counter()
    data = load_data(data_dir, p, seed)
    epochs = int(round(p["epochs"] * config.get("epochs_scale", 1.0)))
    orders = common.epoch_orders(seed, len(data["x"]), p["batch_size"], epochs)
    steps_per_epoch = len(orders[0]) // p["batch_size"]
    model = compiled_model(config, p, seed, steps_per_epoch * epochs)
    probe = None
    if config.get("mechanism"):
        probe = mechanism_probe_class()(data, orders, p["batch_size"], config["rho"],
                                        p.get("probes", 3), seed)
    curvature, eigenvector = [], None
    x_probe, y_probe = data["x"][:p["probe_size"]], data["y"][:p["probe_size"]]
    history = []
    for epoch, order in enumerate(orders):
        if config.get("curvature") and epoch % 2 == 0:
            point, eigenvector = curvature_point(model, x_probe, y_probe, config.get("rho", 0.05),
                                                 eigenvector)
            curvature.append(dict(point, epoch=epoch))
        if probe is not None:
            probe.set_epoch(epoch)
        h = model.fit(data["x"][order], data["y"][order], batch_size=p["batch_size"],
                      epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                      callbacks=[probe] if probe is not None else None)
        history.append({k: float(v[-1]) for k, v in h.history.items()})
        if config.get("trajectory") and epoch % 2 == 1:  # for comparisons at equal loss
            history[-1].update(trajectory_point(model, data))
        if not math.isfinite(history[-1]["loss"]):
            break
    if config.get("curvature"):
        point, _ = curvature_point(model, x_probe, y_probe, config.get("rho", 0.05), eigenvector)
        curvature.append(dict(point, epoch=epochs))
    record = {"config": config, "seed": seed, "protocol": p, "epochs": epochs,
              "steps_per_epoch": steps_per_epoch, "history": history,
              **evaluations(model, data)}
    if probe is not None:
        record.update(mechanism=probe.samples, search_checks=probe.checks,
                      mechanism_seconds=probe.seconds)
    if curvature:
        record["curvature"] = curvature
    record["seconds"] = time.perf_counter() - started
    return record


# -- parts: which (config, seed) runs ----------------------------------------------------
def configs_of(part, args):
    """[config dict] of a part. ρ* and the X-SAM learning rate come from `args` (chosen on
    validation by the `regime` / `x-sam` parts, see the write-up)."""
    rho, rhos = args.rho, args.rhos
    if part == "regime":
        return ([{"method": "sgd"}, {"method": "sgd", "trajectory": True}] + [{"method": "sam", "rho": r} for r in rhos]
                + [{"method": "sgd", "epochs_scale": 2}]
                + [{"method": "sam", "rho": r, "epochs_scale": 2} for r in (0.1, rho, 0.3)])
    if part == "xsam":
        return [c for r in rhos for c in ({"method": "xsam", "rho": r, "alpha": 0.0},
                                          {"method": "sam", "rho": r},
                                          {"method": "xsam", "rho": r, "mechanism": True})]
    if part == "xsam-multistep":
        return [{"method": m, "rho": rho, **({"steps": k} if k > 1 else {}),  # k=1: `xsam`'s
                 **({"mechanism": True} if m == "xsam" and k == 1 else {})}
                for k in (1, 2, 3) for m in ("sam", "xsam")]
    if part == "x-sam":
        return [{"method": "sam", "rho": rho}] + [
            {"method": "x-sam", "rho": rho, "lr_scale": s} for s in args.xsam_lr_scales] + [
            {"method": "x-sam", "rho": rho, "lr_scale": args.xsam_lr_scale, "epochs_scale": 2}]
    if part == "curvature":
        return list({json.dumps(c, sort_keys=True): c
                     for c in curvature_configs(args).values()}.values())
    raise ValueError(part)


def run_key(config, seed):
    return json.dumps(config, sort_keys=True), seed


def read_records(path, protocol):
    from benchmarks import generalization  # its tolerant JSON-lines reader

    return [r for r in generalization.read_records(path) if r.get("protocol") == protocol]


def run_part(args, protocol, path):
    done = {run_key(r["config"], r["seed"]) for r in read_records(path, protocol)}
    index, count = args.shard  # by position in the whole list: stable as runs finish
    jobs = [(c, s) for i, (c, s) in enumerate(
        (c, s) for s in range(args.seeds) for c in configs_of(args.part, args))
        if i % count == index and run_key(c, s) not in done
        and (not args.configs or label(c) in args.configs)]
    log(f"{args.part}: {len(jobs)} runs to do (shard {index}/{count}), results -> {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for number, (config, seed) in enumerate(jobs, 1):
        record = run_one(config, seed, protocol, args.data_dir)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"[{number}/{len(jobs)}] {json.dumps(config, sort_keys=True)} seed {seed}: test "
            f"{100 * record['test_accuracy']:.2f} %, val {100 * record['val_accuracy']:.2f} %, "
            f"train {100 * record['train_accuracy']:.2f} % (loss "
            f"{record['train_loss']:.4f}), {record['seconds']:.0f} s")


# -- statistics -------------------------------------------------------------------------
def index(records):
    """{config json: {seed: record}} (the last record of a (config, seed) wins)."""
    out = {}
    for r in records:
        out.setdefault(json.dumps(r["config"], sort_keys=True), {})[r["seed"]] = r
    return out


def runs_of(runs, config):
    return runs.get(json.dumps(config, sort_keys=True), {})


def mean_se(values):
    import statistics

    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def paired(runs_a, runs_b, key="test_accuracy"):
    """(mean of b − a over common seeds, its standard error, n)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    d, se = mean_se([runs_b[s][key] - runs_a[s][key] for s in seeds])
    return d, se, len(seeds)


def fmt_pp(mean, se, signed=False):
    """Accuracy units -> percentage points, "mean ± SE"."""
    if not math.isfinite(mean):
        return "—"
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text + (f" ± {100 * se:.2f}" if math.isfinite(se) else "")


def verdict(d, se, claim_positive=True):
    """held / not held (|d| ≥ 2 SE, sign) or not resolved."""
    if not (math.isfinite(d) and math.isfinite(se)):
        return "not resolved (n < 2)"
    if abs(d) < 2 * se or d == 0:
        return "not resolved" + (" (SE < 0.3 pt)" if se < 0.003 else "")
    return "held" if (d > 0) == claim_positive else "not held"


def diff_row(label, runs_a, runs_b, claim_positive=True, convergence=False):
    d, se, n = paired(runs_a, runs_b)
    ratio = f"{d / se:+.1f}" if math.isfinite(se) and se > 0 else "—"
    text = verdict(d, se, claim_positive)
    if convergence:
        text = "changed: not converged" if text in ("held", "not held") else "no resolved change"
    return f"| {label} | {fmt_pp(d, se, signed=True)} | {ratio} | {n} | {text} |"


DIFF_HEADER = ["| comparison (b − a) | test acc difference, pp (± paired SE) | d / SE | seeds | "
               "verdict |", "| --- | ---: | ---: | ---: | --- |"]


def config_row(label, runs):
    cells = [mean_se([r[k] for r in runs.values()]) for k in
             ("test_accuracy", "val_accuracy", "train_accuracy", "train_clean_accuracy")]
    loss, _ = mean_se([r["train_loss"] for r in runs.values()])
    secs, _ = mean_se([r["seconds"] for r in runs.values()])
    return (f"| {label} | {len(runs)} | " + " | ".join(fmt_pp(*c) for c in cells)
            + f" | {loss:.4f} | {secs:.0f} |")


CONFIG_HEADER = ["| run | seeds | test acc % (± SE) | val acc % (noisy) | train acc % (noisy "
                 "labels) | train acc % (clean labels) | final train loss | s/run |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]


def chosen_by_validation(runs, configs):
    """The config of `configs` with the highest mean validation accuracy (None if none ran)."""
    scored = [(mean_se([r["val_accuracy"] for r in runs_of(runs, c).values()])[0], i)
              for i, c in enumerate(configs) if runs_of(runs, c)]
    return configs[max(scored)[1]] if scored else None


# -- report -----------------------------------------------------------------------------
def label(config):
    """E.g. "SAM ρ=0.1", "XSAM ρ=0.1 k=2", "SGD+ ρ=0.1", "X-SAM ρ=0.1 lr×0.3", "SGD 2× epochs"."""
    names = {"sgd": "SGD", "sam": "SAM", "x-sam": "X-SAM", "xsam": "XSAM"}
    name = "SGD+" if config["method"] == "xsam" and config.get("alpha") == 0.0 else \
        names[config["method"]]
    parts = [name] + ([f"ρ={config['rho']:g}"] if "rho" in config else [])
    if config.get("steps", 1) != 1:
        parts.append(f"k={config['steps']}")
    if "lr_scale" in config:
        parts.append(f"lr×{config['lr_scale']:g}")
    if config.get("epochs_scale", 1) != 1:
        parts.append(f"{config['epochs_scale']:g}× epochs")
    if config.get("trajectory"):
        parts.append("(trajectory)")
    if config.get("curvature"):
        parts.append("(curvature)")
    return " ".join(parts)


def regime_section(runs, args):
    sgd = runs_of(runs, {"method": "sgd"})
    sams = [{"method": "sam", "rho": r} for r in args.rhos]
    # SAM runs of other ρ (outside the grid, e.g. from calibration) are shown too
    others = sorted({r["config"]["rho"] for g in runs.values() for r in g.values()
                     if r["config"]["method"] == "sam" and set(r["config"]) <= {
                         "method", "rho", "epochs_scale"}} - set(args.rhos))
    extra = [dict(method="sam", rho=r, **e) for r in others for e in ({}, {"epochs_scale": 2})]
    lines = ["## 1. The regime: SAM against SGD", ""] + CONFIG_HEADER
    for c in configs_of("regime", args) + extra:
        if runs_of(runs, c):
            lines.append(config_row(label(c), runs_of(runs, c)))
    lines += ["", "Paired by seed (same initial weights, noisy labels, batch order):", ""]
    lines += DIFF_HEADER
    for c in sams:
        lines.append(diff_row(f"{label(c)} − SGD", sgd, runs_of(runs, c)))
    best = chosen_by_validation(runs, sams)
    if best:
        lines.append(diff_row(f"SAM at ρ chosen on validation ({best['rho']:g}) − SGD", sgd,
                              runs_of(runs, best)))
    trajectory = runs_of(runs, {"method": "sgd", "trajectory": True})
    lines += ["", "At equal training loss: final test accuracy minus SGD's test accuracy when "
              "SGD's training loss (cross-entropy, noisy labels) passed the same value "
              "(same seed; SGD evaluated every 2nd epoch):", "", *DIFF_HEADER]
    for c in sams:
        lines.append(equal_loss_row(f"{label(c)} − SGD at equal loss", trajectory,
                                    runs_of(runs, c)))
    lines += ["", "Convergence (the same runs with twice the epochs; verdict: whether the "
              "longer training changed the result):", "", *DIFF_HEADER]
    sgd_twice = runs_of(runs, {"method": "sgd", "epochs_scale": 2})
    for c in [{"method": "sgd"}] + sams + extra[::2]:
        twice = runs_of(runs, dict(c, epochs_scale=2))
        if twice:
            lines.append(diff_row(f"{label(c)}: 2× epochs − 1×", runs_of(runs, c), twice,
                                  convergence=True))
            if c["method"] == "sam":
                lines.append(diff_row(f"both at 2× epochs: {label(c)} − SGD", sgd_twice, twice))
    return lines


def accuracy_at_loss(record, level):
    """Test accuracy where the run's training loss first reached `level` (linear in log loss
    between the two evaluations around it; every 2nd epoch and the end), or None."""
    points = [(h["eval_train_loss"], h["eval_test_accuracy"]) for h in record["history"]
              if "eval_train_loss" in h] + [(record["train_loss"], record["test_accuracy"])]
    for (l0, a0), (l1, a1) in zip(points, points[1:]):
        if l1 <= level <= l0 and l0 > 0 and l1 > 0:
            t = 0.0 if l0 == l1 else (math.log(level) - math.log(l0)) / (
                math.log(l1) - math.log(l0))
            return a0 + t * (a1 - a0)
    return None


def equal_loss_gains(reference_runs, runs):
    """{seed: final test accuracy minus the reference's test accuracy at the same training
    loss} (seeds where the reference's trajectory passed that loss)."""
    gains = {}
    for seed, r in runs.items():
        ref = reference_runs.get(seed)
        at = accuracy_at_loss(ref, r["train_loss"]) if ref else None
        if at is not None:
            gains[seed] = {"test_accuracy": r["test_accuracy"] - at}
    return gains


def equal_loss_row(text, reference_runs, runs):
    """b's final test accuracy minus the reference's test accuracy at b's final training loss."""
    diffs = [g["test_accuracy"] for g in equal_loss_gains(reference_runs, runs).values()]
    d, se = mean_se(diffs)
    ratio = f"{d / se:+.1f}" if math.isfinite(se) and se > 0 else "—"
    return f"| {text} | {fmt_pp(d, se, signed=True)} | {ratio} | {len(diffs)} | {verdict(d, se)} |"


def equal_loss_section(runs, args):
    """Every run group's gain over SGD at equal training loss, and the pairs the claims need."""
    sgd = runs_of(runs, {"method": "sgd", "trajectory": True})
    lines = ["## 7. Every run against SGD at equal training loss", "",
             "Gain: a run's final test accuracy minus SGD's test accuracy when SGD's training "
             "loss (same seed) passed the run's final training loss. A method that only trains "
             "slower (fits less of the noise in 60 epochs) gains nothing here.", "",
             "| run | final train loss | final train acc % | gain over SGD at equal loss, pp "
             "(± SE) | seeds |", "| --- | ---: | ---: | ---: | ---: |"]
    groups = sorted(((label(json.loads(k)), g) for k, g in runs.items()
                     if json.loads(k)["method"] != "sgd"), key=lambda item: item[0])
    gains = {}
    for name, g in groups:
        gains[name] = equal_loss_gains(sgd, g)
        d, se = mean_se([v["test_accuracy"] for v in gains[name].values()])
        lines.append(f"| {name} | {mean_se([r['train_loss'] for r in g.values()])[0]:.4f} | "
                     f"{100 * mean_se([r['train_accuracy'] for r in g.values()])[0]:.1f} | "
                     f"{fmt_pp(d, se, signed=True)} | {len(gains[name])} |")
    pairs = [(f"SAM ρ={r:g}", f"XSAM ρ={r:g}") for r in args.rhos] + [
        (f"SAM ρ={args.rho:g}", f"X-SAM ρ={args.rho:g} lr×{s:g}")
        for s in sorted(args.xsam_lr_scales)]
    lines += ["", "Differences of those gains (b − a, paired by seed):", "", *DIFF_HEADER]
    for a, b in pairs:
        if gains.get(a) and gains.get(b):
            lines.append(diff_row(f"at equal loss: {b} − {a}", gains[a], gains[b]))
    return lines


def xsam_section(runs, args):
    methods = {"SGD+": lambda r: {"method": "xsam", "rho": r, "alpha": 0.0},
               "SAM": lambda r: {"method": "sam", "rho": r},
               "XSAM": lambda r: {"method": "xsam", "rho": r, "mechanism": True}}
    lines = ["## 2. XSAM: SGD+ (α = 0), SAM (α = 1) and dynamic XSAM at the same ρ (ρ_m = 2ρ)",
             "", "| ρ | " + " | ".join(f"{m} test acc % (val %)" for m in methods)
             + " | XSAM − SAM (pp) | XSAM − SGD+ (pp) | SAM − SGD+ (pp) | seeds |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rho in args.rhos:
        group = {m: runs_of(runs, f(rho)) for m, f in methods.items()}
        cells = [f"{fmt_pp(*mean_se([r['test_accuracy'] for r in g.values()]))} "
                 f"({fmt_pp(mean_se([r['val_accuracy'] for r in g.values()])[0], math.nan)})"
                 for g in group.values()]
        diffs = [fmt_pp(*paired(group[a], group[b])[:2], signed=True)
                 for a, b in (("SAM", "XSAM"), ("SGD+", "XSAM"), ("SGD+", "SAM"))]
        n = min(len(g) for g in group.values())
        lines.append(f"| {rho:g} | " + " | ".join(cells + diffs) + f" | {n} |")
    lines += ["", "Claims, paired by seed:", ""] + DIFF_HEADER
    for rho in args.rhos:
        lines.append(diff_row(f"same ρ={rho:g}: XSAM − SAM", runs_of(runs, methods["SAM"](rho)),
                              runs_of(runs, methods["XSAM"](rho))))
    chosen = {m: chosen_by_validation(runs, [f(r) for r in args.rhos]) for m, f in methods.items()}
    if all(chosen.values()):
        lines.append("")
        lines.append("ρ chosen on validation (highest mean validation accuracy over the grid): "
                     + ", ".join(f"{m} ρ={c['rho']:g}" for m, c in chosen.items()))
        lines += ["", *DIFF_HEADER]
        for a, b in (("SAM", "XSAM"), ("SGD+", "XSAM"), ("SGD+", "SAM")):
            lines.append(diff_row(f"own ρ: {b} (ρ={chosen[b]['rho']:g}) − {a} "
                                  f"(ρ={chosen[a]['rho']:g})", runs_of(runs, chosen[a]),
                                  runs_of(runs, chosen[b])))
    return lines


def mechanism_samples(runs_list):
    """Per probed later batch: (epoch fraction, α*, L(α*) − L(1), L(α*) − L(0), α that
    maximises that batch's loss, L(1))."""
    out = []
    for runs in runs_list:
        for r in runs.values():
            for s in r.get("mechanism", []):
                losses, delta = s["losses"], XSAM_GRID["alpha_delta"]
                star = int(round(s["alpha_star"] / delta))
                one = int(round(1.0 / delta))
                out.append({"t": s["epoch"] / r["epochs"], "alpha_star": s["alpha_star"],
                            "vs_sam": losses[star] - losses[one],
                            "vs_sgd_plus": losses[star] - losses[0],
                            "batch_best": losses.index(max(losses)) * delta,
                            "loss_sam": losses[one], "loss_sgd_plus": losses[0]})
    return out


def quantiles(values, qs=(0.1, 0.5, 0.9)):
    import numpy as np

    return [float(np.quantile(values, q)) for q in qs] if values else [math.nan] * len(qs)


def mechanism_rows(name, samples):
    rows = []
    for key, against in (("vs_sam", "α = 1 (SAM)"), ("vs_sgd_plus", "α = 0 (SGD+)")):
        values = [s[key] for s in samples]
        moved = [s[key] for s in samples if s["alpha_star"] != (1.0 if key == "vs_sam" else 0.0)]
        if not values:
            continue
        q = quantiles(values)
        share = sum(v > 0 for v in values) / len(values)
        share_moved = sum(v > 0 for v in moved) / len(moved) if moved else math.nan
        rows.append(f"| {name} | {against} | {len(values)} | {100 * share:.1f} | "
                    f"{100 * share_moved:.1f} ({len(moved)}) | "
                    + " | ".join(f"{v:+.2e}" for v in q) + " |")
    return rows


def mechanism_section(runs, args):
    xsam = {r: runs_of(runs, {"method": "xsam", "rho": r, "mechanism": True}) for r in args.rhos}
    lines = ["## 3. XSAM's mechanism between searches", "",
             "On probed later batches of each epoch (not the search batch), at the weights "
             "before the step: ΔL = L_B(θ + ρ_m·v(α*)) − L_B(θ + ρ_m·v(α_ref)), α* the "
             "value found at the epoch's search. Positive: α* still points to a higher loss "
             "than the reference direction.", "",
             "| runs | reference | samples | share ΔL > 0 (%) | share ΔL > 0 where α* ≠ "
             "reference (%, n) | ΔL 10 % | ΔL median | ΔL 90 % |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    everything = []
    for rho, group in xsam.items():
        samples = mechanism_samples([group])
        everything += samples
        lines += mechanism_rows(f"XSAM ρ={rho:g} ({len(group)} seeds)", samples)
    lines += mechanism_rows("all ρ", everything)
    if everything:
        thirds = [[s for s in everything if i / 3 <= s["t"] < (i + 1) / 3] for i in range(3)]
        lines += ["", "By stage of training (all ρ), share ΔL > 0 against α = 1 / α = 0 (%): "
                  + "; ".join(f"{name} {pct_positive(t, 'vs_sam')} / "
                              f"{pct_positive(t, 'vs_sgd_plus')}"
                              for name, t in zip(("first third", "middle", "last third"),
                                                 thirds)) + "."]
        same = sum(abs(s["batch_best"] - s["alpha_star"]) < 1e-6 for s in everything)
        lines.append(f"α* equals the probed batch's own best grid α on {same} of "
                     f"{len(everything)} samples.")
    for rho, group in xsam.items():
        series = [[c["optimizer_alpha"] for c in r.get("search_checks", [])]
                  for r in group.values()]
        alphas = [a for s in series for a in s]
        steps = [abs(b - a) for s in series for a, b in zip(s, s[1:])]
        if alphas:
            q = quantiles(alphas)
            lines.append(f"ρ={rho:g}: α* over the epochs' searches: median {q[1]:.1f} "
                         f"(10–90 %: {q[0]:.1f}–{q[2]:.1f}); mean |change| from one epoch to "
                         f"the next {sum(steps) / max(1, len(steps)):.2f}.")
    checks = [c for g in xsam.values() for r in g.values() for c in r.get("search_checks", [])]
    if checks:
        agree = sum(abs(c["optimizer_alpha"] - c["probe_alpha"]) < 1e-6 for c in checks)
        lines.append(f"Check against the package: on the search batch, the probe's argmax equals "
                     f"the optimizer's α* in {agree} of {len(checks)} searches.")
    return lines


def pct_positive(samples, key):
    return f"{100 * sum(s[key] > 0 for s in samples) / len(samples):.0f}" if samples else "—"


def multistep_section(runs, args):
    def cfg(m, k):
        return {"method": m, "rho": args.rho, "steps": k,
                **({"mechanism": True} if m == "xsam" and k == 1 else {})}

    def base(m, k):  # k = 1 runs are the `xsam` part's (the same runs)
        c = {"method": m, "rho": args.rho}
        return dict(c, mechanism=True) if m == "xsam" else c

    lines = [f"## 4. Multi-step: SAM and XSAM at k = 1, 2, 3 (ρ = {args.rho:g} total)", ""]
    lines += CONFIG_HEADER
    for m in ("sam", "xsam"):
        for k in (1, 2, 3):
            r = runs_of(runs, base(m, k) if k == 1 else cfg(m, k))
            if r:
                lines.append(config_row(label(cfg(m, k)), r))
    lines += ["", *DIFF_HEADER]
    for k in (2, 3):
        lines.append(diff_row(f"SAM degrades: SAM k={k} − SAM k=1 (claim: < 0)",
                              runs_of(runs, base("sam", 1)), runs_of(runs, cfg("sam", k)),
                              claim_positive=False))
        lines.append(diff_row(f"XSAM improves: XSAM k={k} − XSAM k=1 (claim: > 0)",
                              runs_of(runs, base("xsam", 1)), runs_of(runs, cfg("xsam", k))))
        lines.append(diff_row(f"XSAM k={k} − SAM k={k}", runs_of(runs, cfg("sam", k)),
                              runs_of(runs, cfg("xsam", k))))
    return lines


def x_sam_section(runs, args):
    sam = {"method": "sam", "rho": args.rho}
    grid = [{"method": "x-sam", "rho": args.rho, "lr_scale": s}
            for s in sorted(args.xsam_lr_scales)]
    lines = [f"## 5. X-SAM against SAM (ρ = {args.rho:g}, α = 0.2, p = q = 5)", ""]
    lines += CONFIG_HEADER
    for c in [sam] + grid:
        if runs_of(runs, c):
            lines.append(config_row(label(c), runs_of(runs, c)))
    best = chosen_by_validation(runs, grid)
    twice = dict(best or {}, epochs_scale=2)
    if best and runs_of(runs, twice):
        lines.append(config_row(label(twice), runs_of(runs, twice)))
    lines += ["", *DIFF_HEADER]
    paper = {"method": "x-sam", "rho": args.rho, "lr_scale": 1.0}
    lines.append(diff_row("X-SAM at SAM's learning rate (the paper's protocol) − SAM",
                          runs_of(runs, sam), runs_of(runs, paper)))
    if best:
        lines.append(diff_row(f"X-SAM at lr×{best['lr_scale']:g} (chosen on validation) − SAM",
                              runs_of(runs, sam), runs_of(runs, best)))
        lines.append(diff_row(f"convergence: {label(twice)} − 1×", runs_of(runs, best),
                              runs_of(runs, twice), convergence=True))
    return lines


def curvature_configs(args):
    return {"SGD": {"method": "sgd", "curvature": True},
            "SAM": {"method": "sam", "rho": args.rho, "curvature": True},
            f"X-SAM lr×{args.xsam_lr_scale:g}": {"method": "x-sam", "rho": args.rho,
                                                 "lr_scale": args.xsam_lr_scale,
                                                 "curvature": True},
            "X-SAM lr×1": {"method": "x-sam", "rho": args.rho, "lr_scale": 1.0,
                           "curvature": True}}


def measurements(record):
    return [{"train_loss": p["loss"], "lambda_max": p["lambda_max"]} for p in record["curvature"]]


def fmt_sig(mean, se):
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.3g}" + (f" ± {se:.2g}" if math.isfinite(se) else "")


def curvature_section(runs, args):
    from benchmarks import sharpness  # λ at a loss level, and the levels every run passes through

    groups = {}
    for name, c in curvature_configs(args).items():  # X-SAM once if its lr is ×1
        if runs_of(runs, c) and c not in [curvature_configs(args)[n] for n in groups]:
            groups[name] = runs_of(runs, c)
    lines = ["## 6. λ_max at equal training loss, and gradient–eigenvector angles", ""]
    if "SGD" not in groups:
        return lines + ["(no curvature runs with SGD yet)"]
    every = [{"measurements": measurements(r)} for g in groups.values() for r in g.values()]
    levels = sharpness.loss_levels(every) if every else []
    names = list(groups)
    ratio_pairs = [(n, "SGD") for n in names[1:]] + [(n, "SAM") for n in names[2:]
                                                      if "SAM" in groups]
    lines += ["λ_max (of cross-entropy + L2) on the probe set at the training-loss levels "
              "(cross-entropy on the probe set, noisy labels) every run passed through; mean ± "
              "SE over seeds; ratios: geometric mean of the per-seed ratios (×/÷ its SE).", "",
              "| loss | " + " | ".join(f"λ_max {n}" for n in names)
              + " | " + " | ".join(f"{n}/{m}" for n, m in ratio_pairs) + " |",
              "| ---: |" + " ---: |" * (len(names) + len(ratio_pairs))]
    for level in levels:
        lam = {n: {s: sharpness.lambda_at_loss(measurements(r), level) for s, r in g.items()}
               for n, g in groups.items()}
        cells = [fmt_sig(*mean_se([v for v in lam[n].values() if v])) for n in names]
        ratios = []
        for n, m in ratio_pairs:
            logs = [math.log(lam[n][s] / lam[m][s]) for s in lam[n]
                    if lam[n][s] and lam[m].get(s)]
            m, se = mean_se(logs)
            ratios.append("—" if not logs else f"{math.exp(m):.2f} (n={len(logs)}" + (
                f", ×/÷ {math.exp(se):.2f})" if math.isfinite(se) else ")"))
        lines.append(f"| {level:.4f} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Angle between the top eigenvector and the gradient on the probe set, every "
              "2nd epoch (signed: arccos of the cosine, as the X-SAM paper's Fig. 1):", "",
              "| run | angles | clean gradient: share 80–100° (%) | median | SAM's perturbed "
              "gradient: share 80–100° (%) | median |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n, g in groups.items():
        points = [p for r in g.values() for p in r["curvature"][1:]]
        cells = []
        for key in ("angle_gradient", "angle_sam_gradient"):
            a = [p[key] for p in points]
            cells += [f"{100 * sum(80 <= x <= 100 for x in a) / len(a):.0f}",
                      f"{quantiles(a, (0.5,))[0]:.1f}"]
        lines.append(f"| {n} | {len(points)} | " + " | ".join(cells) + " |")
    return lines


def make_plots(runs, args):
    """The PNGs (paths) of the write-up; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(args.out_dir, exist_ok=True)
    paths = []
    for name, draw in (("study_accuracy_vs_rho.png", plot_accuracy),
                       ("study_xsam_mechanism.png", plot_mechanism),
                       ("study_lambda_max.png", plot_lambda)):
        fig = draw(plt, runs, args)
        if fig is not None:
            path = os.path.join(args.out_dir, name)
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths.append(os.path.relpath(path, common.REPO))
    return paths


def plot_accuracy(plt, runs, args):
    methods = {"SAM": lambda r: {"method": "sam", "rho": r},
               "SGD+ (XSAM α=0)": lambda r: {"method": "xsam", "rho": r, "alpha": 0.0},
               "XSAM (dynamic α)": lambda r: {"method": "xsam", "rho": r, "mechanism": True}}
    sgd = runs_of(runs, {"method": "sgd"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, f) in enumerate(methods.items()):
        rhos = [r for r in args.rhos if runs_of(runs, f(r))]
        if not rhos:
            continue
        x = [r * (1 + 0.04 * (i - 1)) for r in rhos]
        means = [mean_se([v["test_accuracy"] for v in runs_of(runs, f(r)).values()]) for r in rhos]
        diffs = [paired(sgd, runs_of(runs, f(r)))[:2] for r in rhos]
        for ax, values in zip(axes, (means, diffs)):
            if any(math.isfinite(m) for m, _ in values):
                ax.errorbar(x, [100 * m for m, _ in values],
                            yerr=[100 * e if math.isfinite(e) else 0 for _, e in values],
                            marker="o", capsize=3, label=name)
                ax.set_xscale("log")
    sgd_mean = mean_se([v["test_accuracy"] for v in sgd.values()])[0]
    if math.isfinite(sgd_mean):
        axes[0].axhline(100 * sgd_mean, color="gray", ls="--", label="SGD")
    axes[1].axhline(0, color="gray", ls="--", label="SGD")
    axes[0].set(ylabel="test accuracy % (mean ± SE over seeds)")
    axes[1].set(ylabel="test accuracy − SGD's, same seed (pp, ± paired SE)")
    for ax in axes:
        ax.set(xlabel="ρ (XSAM: ρ_m = 2ρ)")
        ax.legend(fontsize=8)
    fig.suptitle("MNIST 2,000 images, 40 % label noise, MLP, 60 epochs: accuracy vs ρ")
    return fig


def plot_mechanism(plt, runs, args):
    samples = mechanism_samples([runs_of(runs, {"method": "xsam", "rho": r, "mechanism": True})
                                 for r in args.rhos])
    if not samples:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, ref in zip(axes, ("vs_sam", "vs_sgd_plus"), ("α = 1 (SAM)", "α = 0 (SGD+)")):
        base = "loss_sam" if key == "vs_sam" else "loss_sgd_plus"
        values = [100 * s[key] / s[base] for s in samples
                  if s["alpha_star"] != (1.0 if key == "vs_sam" else 0) and s[base] > 0]
        if values:  # relative differences, the central 98 % (the tails are long)
            ax.hist(values, bins=40, range=tuple(quantiles(values, (0.01, 0.99))))
        ax.axvline(0, color="k", lw=0.8)
        share = 100 * sum(v > 0 for v in values) / max(1, len(values))
        ax.set(xlabel=f"L_B(θ+ρ_m v(α*)) / L_B(θ+ρ_m v({ref.split()[2]})) − 1, %",
               ylabel="probed later batches",
               title=f"vs {ref}: {share:.0f} % > 0 (n={len(values)}, α* ≠ ref)")
    fig.suptitle("XSAM: does the epoch's α* still beat the reference direction between searches?")
    return fig


def plot_lambda(plt, runs, args):
    groups = {n: runs_of(runs, c) for n, c in curvature_configs(args).items()}
    if not any(groups.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, g) in enumerate(groups.items()):
        for j, r in enumerate(g.values()):
            points = r["curvature"]
            axes[0].plot([p["loss"] for p in points], [p["lambda_max"] for p in points],
                         color=f"C{i}", alpha=0.7, label=name if j == 0 else None)
            axes[1].hist([p["angle_gradient"] for p in points[1:]], bins=18, range=(0, 180),
                         color=f"C{i}", alpha=0.35, label=name if j == 0 else None)
    axes[0].set(xscale="log", yscale="log", xlabel="training cross-entropy on the probe set (noisy labels)",
                ylabel="λ_max", title="λ_max vs training loss (one line per seed)")
    axes[0].invert_xaxis()
    axes[1].set(xlabel="angle(gradient, top eigenvector), degrees", ylabel="epochs × seeds",
                title="gradient–eigenvector angle, probe set")
    for ax in axes:
        ax.legend(fontsize=8)
    return fig


# -- command line -----------------------------------------------------------------------
PARTS = ("regime", "xsam", "xsam-multistep", "x-sam", "curvature")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=PARTS + ("report",))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 500 images, 2 epochs, 1 seed, 2 ρ values, temp folder")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job from the i-th")
    parser.add_argument("--configs", default=None,
                        help="only these runs of the part, by label, ';'-separated "
                             "(e.g. 'SGD (trajectory);XSAM ρ=0.1')")
    parser.add_argument("--rho", type=float, default=RHO, help="ρ* of the later parts")
    parser.add_argument("--rhos", default=",".join(map(str, RHOS)), help="the ρ grid")
    parser.add_argument("--xsam-lr-scales", default=",".join(map(str, XSAM_LR_SCALES)))
    parser.add_argument("--xsam-lr-scale", type=float, default=XSAM_LR_SCALE,
                        help="X-SAM's learning-rate factor of the curvature part")
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_SAM_DATA",
                                                             common.DEFAULT_DATA_DIR),
                        help="folder with mnist.npz (default $KERAS_SAM_DATA or ../shared/data)")
    parser.add_argument("--results", default=None,
                        help="JSON-lines file (default benchmarks/results/study/runs.jsonl; "
                             "--quick: a temporary one)")
    parser.add_argument("--out-dir", default=None, help="folder of the PNGs (report)")
    args = parser.parse_args(argv)
    args.rhos = [float(r) for r in args.rhos.split(",")]
    args.xsam_lr_scales = [float(r) for r in args.xsam_lr_scales.split(",")]
    args.configs = [c.strip() for c in args.configs.split(";")] if args.configs else None
    args.shard = tuple(int(v) for v in args.shard.split("/"))
    if args.quick:
        args.rhos, args.seeds = args.rhos[:2], args.seeds or 1
        args.xsam_lr_scales = [1.0]
    args.seeds = args.seeds or 3
    if args.results is None:
        args.results = (os.path.join(tempfile.mkdtemp(prefix="study_quick_"), "runs.jsonl")
                        if args.quick else os.path.join(RESULTS_DIR, "runs.jsonl"))
    args.out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.results))
    return args


def report(args, protocol):
    records = read_records(args.results, protocol)
    runs = index(records)
    lines = ["# Study tables (generated by `python -m benchmarks.study report`)", "",
             f"- results: `{os.path.relpath(args.results, common.REPO)}`, {len(records)} runs "
             "of this protocol", f"- protocol: `{json.dumps(protocol)}`",
             f"- ρ grid {', '.join(f'{r:g}' for r in args.rhos)}; ρ* = {args.rho:g} for the "
             "multi-step, X-SAM and curvature parts",
             "- accuracies in %, differences in percentage points (pp), paired by seed, ± the "
             "standard error of the per-seed differences; verdict: held / not held when "
             "|d| ≥ 2 SE, else not resolved", ""]
    for section in (regime_section, xsam_section, mechanism_section, multistep_section,
                    x_sam_section, curvature_section, equal_loss_section):
        lines += section(runs, args) + [""]
    plots = make_plots(runs, args)
    lines += [f"Plots: {', '.join(plots)}" if plots else "Plots: none (matplotlib missing)"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    for key, value in common.single_thread_env().items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    protocol = dict(QUICK_PROTOCOL if args.quick else PROTOCOL)
    if args.part != "report":
        run_part(args, protocol, args.results)
    if args.part == "report" or args.quick:
        print(report(args, protocol))
    return 0


if __name__ == "__main__":
    sys.exit(main())
