"""Quickstart: SGD, SAM, XSAM and X-SAM on scikit-learn's digits.

Trains the same small MLP (64 → 128 ReLU → dropout → 10) on the 8×8 digits
bundled with scikit-learn (no download) four times, from the same initial
weights, batch order and dropout masks:

- SGD: the inner optimizer alone, SGD(0.05, momentum 0.9);
- SAM: `keras_sam.SAM(SGD, rho=0.05)`;
- XSAM: `keras_sam.XSAM(SGD)`, dynamic α* (searched on each epoch's first batch);
- X-SAM: `keras_sam.EigenCorrectedSAM(SGD)`, SAM with the dominant-eigenvector
  correction.

Then it prints one row per method: train and test accuracy, XSAM's final α*,
the mean sharpness and the top Hessian eigenvalue λ_max at the end, and writes
one PNG (training loss, test accuracy, α* and λ_max over epochs):

    python examples/quickstart.py                     # KERAS_BACKEND, else TensorFlow
    python examples/quickstart.py --backend jax --epochs 40 --png digits.png

Sharpness here is measured the same way for every method, after training and
in inference mode: the mean over training batches of `batch_size` examples of
L_B(θ + ρ ĝ_B) − L_B(θ), with ĝ_B the batch gradient's direction and
ρ = `--sharpness-rho`. λ_max is the Hessian eigenvalue of largest magnitude
of the loss on a fixed probe of 512 training examples (`keras_sam.hessian`),
measured after every epoch by `keras_sam.callbacks.SharpnessMonitor`.

One seed on a small problem: differences of a few test images are within
seed-to-seed noise. The only changes from ordinary Keras training are
`keras_sam.SAMModel(model)` and the optimizer.
"""

import argparse
import os
import time

METHODS = ("SGD", "SAM", "XSAM", "X-SAM")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default=None,
        help="Keras backend (default: the KERAS_BACKEND environment variable)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's and X-SAM's radius")
    parser.add_argument("--xsam-rho", type=float, default=0.15, help="XSAM's radius (its default)")
    parser.add_argument("--sharpness-rho", type=float, default=0.05,
                        help="radius of the sharpness measured after training")
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only the first N training examples (default: all 1297)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--png", default="quickstart.png", help="figure path ('' for none)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


def load_digits_split(seed, train_size=None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")  # pixels are 0..16 → [0, 1]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=500, stratify=y, random_state=seed
    )
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    return x_train, x_test, y_train, y_test


def build_model(keras):
    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )


def make_optimizer(name, args):
    """The optimizer of one method, around a fresh SGD(lr, momentum 0.9)."""
    import keras

    import keras_sam

    inner = keras.optimizers.SGD(args.lr, momentum=0.9)
    if name == "SGD":
        return inner
    if name == "SAM":
        return keras_sam.SAM(inner, rho=args.rho)
    if name == "XSAM":
        return keras_sam.XSAM(inner, rho=args.xsam_rho)
    return keras_sam.EigenCorrectedSAM(inner, rho=args.rho)  # X-SAM


def mean_sharpness(model, x, y, rho, batch_size):
    """Mean over full batches of L_B(θ + ρ g_B/‖g_B‖) − L_B(θ), inference mode."""
    import numpy as np
    from keras import ops

    from keras_sam import hessian

    batch_size = min(batch_size, len(x))
    values = []
    for start in range(0, len(x) - batch_size + 1, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        loss, grads = hessian.Curvature(model, xb, yb).loss_and_gradient()
        grads = [ops.convert_to_numpy(g) for g in grads]
        norm = float(np.sqrt(sum(np.sum(g * g) for g in grads)))
        perturbed = [
            ops.convert_to_tensor(ops.convert_to_numpy(v) + rho * g / (norm + 1e-12))
            for v, g in zip(model.trainable_variables, grads)
        ]
        perturbed_loss = hessian.make_loss_fn(model, xb, yb)(perturbed)
        values.append(float(ops.convert_to_numpy(perturbed_loss)) - loss)
    return float(np.mean(values))


def train(name, initial_weights, data, args):
    """Trains one method; returns its history, final metrics and fit time."""
    import keras

    import keras_sam

    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(args.seed)  # the same shuffling and dropout masks
    base = build_model(keras)
    base.set_weights(initial_weights)
    model = keras_sam.SAMModel(base)
    model.compile(
        optimizer=make_optimizer(name, args),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe = (x_train[:512], y_train[:512])
    monitor = keras_sam.callbacks.SharpnessMonitor(
        probe, every=1, max_iterations=100, trace_samples=0, angle=False, warm_start=True
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=(x_test, y_test), callbacks=[monitor], verbose=0,
    ).history
    seconds = time.perf_counter() - start
    _, train_acc = model.evaluate(x_train, y_train, batch_size=256, verbose=0)
    _, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {
        "history": history,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "alpha": history["alpha"][-1] if "alpha" in history else None,
        "sharpness": mean_sharpness(model, x_train, y_train, args.sharpness_rho, 128),
        "lambda_max": history["lambda_max"][-1],
        "seconds": seconds,
    }


def format_table(results, n_test):
    header = (f"{'method':<7}{'train acc':>10}{'test acc':>10}{'alpha*':>8}"
              f"{'sharpness':>11}{'lambda_max':>12}{'fit time':>10}")
    lines = [header]
    for name, r in results.items():
        alpha = f"{r['alpha']:.2f}" if r["alpha"] is not None else "-"
        lines.append(
            f"{name:<7}{r['train_accuracy']:>10.4f}{r['test_accuracy']:>10.4f}{alpha:>8}"
            f"{r['sharpness']:>11.4f}{r['lambda_max']:>12.2f}{r['seconds']:>9.1f}s"
        )
    if "SGD" in results:
        for name, r in results.items():
            if name != "SGD":
                diff = r["test_accuracy"] - results["SGD"]["test_accuracy"]
                lines.append(f"{name} - SGD test accuracy: {100 * diff:+.1f} points "
                             f"({round(diff * n_test):+d} of {n_test} test images)")
    return "\n".join(lines)


def plot(results, path):
    """One PNG: training loss, test accuracy, XSAM's α* and λ_max over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("loss", "training loss (clean pass)", "log"),
        ("val_accuracy", "test accuracy", "linear"),
        ("alpha", "XSAM's α* (searched each epoch)", "linear"),
        ("lambda_max", "λ_max (probe of 512, inference mode)", "linear"),
    ]
    for ax, (key, title, scale) in zip(axes, panels):
        for name, r in results.items():
            values = r["history"].get(key)
            if values:
                color = f"C{METHODS.index(name)}"  # the same colour in every panel
                ax.plot(range(1, len(values) + 1), values, label=name, marker=".", color=color)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    # The backend must be chosen before Keras is imported.
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras

    data = load_digits_split(args.seed, args.train_size)
    keras.utils.set_random_seed(args.seed)
    initial_weights = build_model(keras).get_weights()
    print(
        f"backend={keras.backend.backend()}  train={len(data[0])} test={len(data[1])}  "
        f"epochs={args.epochs} batch={args.batch_size} seed={args.seed}  "
        f"SGD(lr={args.lr}, momentum=0.9)  SAM/X-SAM rho={args.rho}  XSAM rho={args.xsam_rho}",
        flush=True,
    )
    start = time.perf_counter()
    results = {}
    for name in args.methods:
        results[name] = train(name, initial_weights, data, args)
        print(f"  {name} trained in {results[name]['seconds']:.1f} s", flush=True)
    print(format_table(results, len(data[1])))
    print("(one seed: differences of a few test images are within seed-to-seed noise)")
    if args.png:
        try:
            plot(results, args.png)
            print(f"figure: {args.png}")
        except ImportError:
            print("matplotlib is not installed: no figure (pip install matplotlib)")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
