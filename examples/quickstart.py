"""Quickstart: SGD vs SAM (and ASAM) on scikit-learn's digits.

Trains the same small MLP (64 → 128 ReLU → dropout → 10) on the 8×8 digits
bundled with scikit-learn (no download), once with the inner optimizer alone
and once wrapped in each sharpness-aware optimizer, from the same initial
weights and with the same seed, then prints train and test accuracy.

    python examples/quickstart.py --backend jax
    KERAS_BACKEND=torch python examples/quickstart.py --epochs 30 --rho 0.1

The only changes from ordinary Keras training are `keras_sam.SAMModel(model)`
and the optimizer `keras_sam.SAM(inner_optimizer, rho=...)`.
"""

import argparse
import os
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default=None,
        help="Keras backend (default: the KERAS_BACKEND environment variable)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's radius")
    parser.add_argument(
        "--asam-rho", type=float, default=0.5, help="ASAM's radius (0 to skip ASAM)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    return parser.parse_args()


def load_digits_split(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")  # pixels are 0..16 → [0, 1]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=500, stratify=y, random_state=seed)


def main():
    args = parse_args()
    # The backend must be chosen before Keras is imported.
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras

    import keras_sam

    x_train, x_test, y_train, y_test = load_digits_split(args.seed)

    def build():
        return keras.Sequential(
            [
                keras.Input(shape=(64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(10),
            ]
        )

    keras.utils.set_random_seed(args.seed)
    initial_weights = build().get_weights()

    def inner():
        return keras.optimizers.SGD(args.lr, momentum=0.9)

    methods = [("SGD", inner), ("SAM", lambda: keras_sam.SAM(inner(), rho=args.rho))]
    if args.asam_rho > 0:
        methods.append(("ASAM", lambda: keras_sam.ASAM(inner(), rho=args.asam_rho)))

    print(
        f"backend={keras.backend.backend()}  train={len(x_train)} test={len(x_test)}  "
        f"epochs={args.epochs} batch={args.batch_size} seed={args.seed}  "
        f"SGD(lr={args.lr}, momentum=0.9)  SAM rho={args.rho}"
        + (f"  ASAM rho={args.asam_rho}" if args.asam_rho > 0 else "")
    )
    results = {}
    for name, make_optimizer in methods:
        keras.utils.set_random_seed(args.seed)  # same shuffling and dropout
        base = build()
        base.set_weights(initial_weights)
        model = keras_sam.SAMModel(base)
        model.compile(
            optimizer=make_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        model.fit(
            x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0
        )
        seconds = time.perf_counter() - start
        _, train_acc = model.evaluate(x_train, y_train, batch_size=256, verbose=0)
        _, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        results[name] = (train_acc, test_acc, seconds)

    print(f"{'method':<8}{'train acc':>10}{'test acc':>10}{'fit time':>10}")
    for name, (train_acc, test_acc, seconds) in results.items():
        print(f"{name:<8}{train_acc:>10.4f}{test_acc:>10.4f}{seconds:>9.1f}s")
    sgd_test = results["SGD"][1]
    for name in results:
        if name != "SGD":
            diff = results[name][1] - sgd_test
            print(
                f"{name} - SGD test accuracy: {100 * diff:+.1f} points "
                f"({round(diff * len(x_test)):+d} of {len(x_test)} test images)"
            )
    print("(one seed: differences of a few test images are within seed-to-seed noise)")


if __name__ == "__main__":
    main()
