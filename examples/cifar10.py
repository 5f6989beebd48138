"""CIFAR-10 with a CIFAR-style ResNet and any keras_sam method, on TensorFlow, JAX or PyTorch.

    python examples/cifar10.py --method sam                       # ResNet-20, 200 epochs, ρ = 0.05
    python examples/cifar10.py --backend jax --method xsam --epochs 1 --train-size 512 --test-size 256 --depth 8
    KERAS_BACKEND=torch python examples/cifar10.py --method x-sam --depth 32 --epochs 100

Data. By default CIFAR-10 is read from the local copy `../shared/data/` next to
the repository (`cifar10_train_part{1,2}.npz`, `cifar10_test.npz`, official
order; the format is in benchmarks/README.md) or from `--data-dir`; `--source tfds` (or local files
missing) uses `tfds.load("cifar10")` instead — an already prepared tfds cache
if there is one, otherwise a download, tried only after a 5-second reachability
check so that an offline machine fails at once instead of hanging. Either way
the arrays go through the same `tf.data` pipeline: shuffle, random crop 32×32
from the image padded by 4 pixels (`--pad-mode zero`, torchvision's
`RandomCrop(32, padding=4)`, or `reflect`), random horizontal flip,
normalisation by the CIFAR-10 train mean (0.4914, 0.4822, 0.4465) and std
(0.2470, 0.2435, 0.2616); batches of `--batch-size` (the last partial training
batch is dropped, so the compiled step keeps one shape). The augmentation uses
stateless random ops seeded from `--seed` (new draws every epoch), so a run is
reproducible. Keras' `fit` takes the `tf.data.Dataset` on all three backends.
`--train-size N` / `--test-size N` keep the first N images of each split
(official order, roughly balanced) for quick runs.

Model. ResNet-(6n+2) of He et al. (2016) for CIFAR: a 3×3 convolution, three
stages of n basic blocks with 16, 32, 64 filters (× `--width`), stride 2 at the
start of stages 2 and 3 with a 1×1 convolution + BN projection shortcut,
BatchNorm after every convolution, global average pooling, a dense layer to
10 logits. `--depth` 20 (n = 3), 32, 56, 110; 8 (n = 1) and 14 are tiny nets
for smoke tests. Convolution kernels start from torchvision's ResNet init
(Kaiming normal, fan-out), the dense kernel from Glorot uniform, both drawn
with NumPy from `--seed`: the same initial weights on every backend.

Optimizer. SGD, momentum 0.9, learning rate `--lr` (0.1) with cosine decay to
0 over all steps (`keras.optimizers.schedules.CosineDecay`), wrapped in the
method chosen with `--method`:

    sgd               SGD alone (SAMModel with a plain optimizer trains as Keras does)
    sam               keras_sam.SAM(sgd, rho=0.05, steps=k)
    asam              keras_sam.ASAM(sgd, rho=0.5, eta=0.01)
    gsam              keras_sam.GSAM(sgd, rho=0.05, alpha=0.4); with --rho-min, ρ follows the lr
    wsam              keras_sam.WSAM(sgd, rho=0.05, gamma=0.9)
    xsam              keras_sam.XSAM(sgd, rho=0.15, rho_max=0.3)   (dynamic α, searched every epoch)
    xsam-asam         keras_sam.XSAM(sgd, rho=0.5, rho_max=1.0, adaptive=True)
    x-sam             keras_sam.EigenCorrectedSAM(sgd, rho=0.05, alpha=0.2, refresh_every=5, power_iterations=5)
    x-sam-amortized   the same with one power iteration per refresh (EigenCorrection.amortized)

`--rho` overrides the method's default radius; `--steps k` gives multi-step
ascent (ρ the total path) for every method. The ρ of `xsam-asam` (ASAM's 0.5,
search radius 2ρ as XSAM's 0.15/0.3) is this example's choice, not a value
from the XSAM paper.

Weight decay (`--weight-decay`, 5e-4). `--wd-mode l2` (default): L2
regularizers of coefficient wd/2 on the convolution and dense kernels, so their
gradient is wd·θ, as PyTorch's `SGD(weight_decay=wd)` (coupled, through the
momentum) and Foret et al.'s original SAM code (L2 in the loss, so it is part of
every ascent and descent gradient); BatchNorm parameters and biases are not
decayed. `--wd-mode decoupled`: the inner SGD's `weight_decay=wd` with BN and
bias variables excluded; Keras applies it as θ ← θ − lr·wd·θ on the inner step
only (never the ascent), which with momentum 0.9 is about 10× weaker than the
coupled L2 of the same coefficient.

Output. Keras' progress bar (`--verbose 0|1|2`); the test set is evaluated every
`--validation-freq` epochs (0: only at the end) and reported as `val_*`. The
History (loss, accuracy, the methods' per-step diagnostics averaged per epoch:
`sharpness`, `grad_cosine`, XSAM's `alpha` and `psi`, ...), the seconds per
epoch, the final test loss and accuracy and the arguments are written as JSON
to `--history-out` (default `runs/cifar10_<method>_<backend>.json`, relative to
the current directory). With `--wd-mode l2` the reported losses include the L2
penalty (Keras adds `model.losses`); accuracies are unaffected.
"""

import argparse
import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
LOCAL_FILES = ("cifar10_train_part1.npz", "cifar10_train_part2.npz", "cifar10_test.npz")
PART_SIZE = 25_000  # images per train part file

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10

METHODS = ("sgd", "sam", "asam", "gsam", "wsam", "xsam", "xsam-asam", "x-sam", "x-sam-amortized")
DEFAULT_RHO = {
    "sam": 0.05,
    "asam": 0.5,
    "gsam": 0.05,
    "wsam": 0.05,
    "xsam": 0.15,
    "xsam-asam": 0.5,
    "x-sam": 0.05,
    "x-sam-amortized": 0.05,
}
DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" unless the help already says it or the default is None."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0]
        + " Methods, defaults and conventions: see the module docstring.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--method", choices=METHODS, default="sam", help="training method")
    parser.add_argument("--rho", type=float, default=None,
                        help="ascent radius (default: the method's, see the module docstring)")
    parser.add_argument("--steps", type=int, default=1, help="ascent steps (multi-step SAM)")
    parser.add_argument("--rho-max", type=float, default=None,
                        help="XSAM's search radius ρ_m (default 2ρ)")
    parser.add_argument("--xsam-alpha", type=float, default=None,
                        help="fixed XSAM α (default: None, dynamic: searched every epoch)")
    parser.add_argument("--asam-eta", type=float, default=0.01, help="ASAM's η")
    parser.add_argument("--gsam-alpha", type=float, default=0.4, help="GSAM's α")
    parser.add_argument("--rho-min", type=float, default=None,
                        help="GSAM: ρ follows the learning rate from --rho down to this")
    parser.add_argument("--wsam-gamma", type=float, default=0.9, help="WSAM's γ")
    parser.add_argument("--eigen-alpha", type=float, default=0.2, help="X-SAM's α")
    parser.add_argument("--refresh-every", type=int, default=5,
                        help="X-SAM: eigenvector refresh every p steps")
    parser.add_argument("--power-iterations", type=int, default=5,
                        help="X-SAM: power iterations per refresh (x-sam-amortized: 1)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay wd")
    parser.add_argument("--wd-mode", choices=["l2", "decoupled"], default="l2",
                        help="l2: kernel L2 regularizers (wd/2); decoupled: the SGD's weight_decay")
    parser.add_argument("--depth", type=int, choices=DEPTHS, default=20, help="ResNet depth 6n+2")
    parser.add_argument("--width", type=float, default=1.0, help="filter multiplier (16/32/64 × width)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffling and augmentation")
    parser.add_argument("--source", choices=["auto", "local", "tfds"], default="auto",
                        help="auto: the local .npz copy if present, else tfds")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with cifar10_train_part{1,2}.npz and cifar10_test.npz")
    parser.add_argument("--tfds-data-dir", type=str, default=None,
                        help="tfds cache folder (default: tfds' own, ~/tensorflow_datasets)")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images only")
    parser.add_argument("--test-size", type=int, default=None, help="first N test images only")
    parser.add_argument("--pad-mode", choices=["zero", "reflect"], default="zero",
                        help="padding before the random crop")
    parser.add_argument("--validation-freq", type=int, default=1,
                        help="evaluate on the test set every N epochs during fit (0: only at the end)")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                        help="Keras' jit_compile (auto: XLA on JAX, not on TF-CPU or torch)")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, nargs="?", const=1,
                        help="Keras' fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch")
    parser.add_argument("--history-out", type=Path, default=None,
                        help="JSON path (default runs/cifar10_<method>_<backend>.json)")
    args = parser.parse_args(argv)

    if args.method == "sgd":
        if args.rho is not None or args.steps != 1:
            parser.error("--rho and --steps apply to the sharpness-aware methods, not sgd")
    elif args.rho is None:
        args.rho = DEFAULT_RHO[args.method]
    if args.rho is not None and not args.rho > 0:
        parser.error("--rho must be > 0")
    for name in ("epochs", "batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("train_size", "test_size"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= (50_000 if name == "train_size" else 10_000):
            parser.error(f"--{name.replace('_', '-')} must be in 1..{50_000 if name == 'train_size' else 10_000}")
    if args.width <= 0:
        parser.error("--width must be > 0")
    if args.validation_freq < 0:
        parser.error("--validation-freq must be >= 0")
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    return args


def select_backend(requested):
    """Sets KERAS_BACKEND before Keras is imported (env var, else tensorflow)."""
    if requested:
        os.environ["KERAS_BACKEND"] = requested
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:  # e.g. called from a test that already imported Keras
        import keras

        if keras.backend.backend() != os.environ["KERAS_BACKEND"]:
            raise SystemExit(
                f"Keras is already imported with the {keras.backend.backend()} backend; "
                f"cannot switch to {os.environ['KERAS_BACKEND']} in this process."
            )
    return os.environ["KERAS_BACKEND"]


# -- data ----------------------------------------------------------------------------

def local_files_present(data_dir):
    return all((Path(data_dir) / name).is_file() for name in LOCAL_FILES)


def load_local_arrays(data_dir, train_size=None, test_size=None):
    """(x_train, y_train, x_test, y_test) from the local .npz copy, official order."""
    import numpy as np

    data_dir = Path(data_dir)
    parts = [LOCAL_FILES[0]] if train_size is not None and train_size <= PART_SIZE else LOCAL_FILES[:2]
    xs, ys = [], []
    for name in parts:
        with np.load(data_dir / name) as archive:
            xs.append(archive["x_train"])
            ys.append(archive["y_train"])
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    with np.load(data_dir / LOCAL_FILES[2]) as archive:
        x_test, y_test = archive["x_test"], archive["y_test"]
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    if test_size is not None:
        x_test, y_test = x_test[:test_size], y_test[:test_size]
    return x_train, y_train, x_test, y_test


def _reachable(host, port=443, timeout=5.0):
    """True if a TCP connection to host:port opens within `timeout` seconds.

    Runs in a daemon thread so that a DNS lookup that never answers cannot hang
    the caller either.
    """
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result)


def load_tfds_datasets(train_size=None, test_size=None, data_dir=None):
    """(train, test, n_train, n_test, path): `tf.data.Dataset`s of (uint8 image, int64
    label) from `tfds.load("cifar10")`.

    The tfds cache is tried first (`download=False`); a download only if that
    fails and the download host answers within 5 seconds.
    """
    import tensorflow_datasets as tfds

    train_split = "train" if train_size is None else f"train[:{train_size}]"
    test_split = "test" if test_size is None else f"test[:{test_size}]"
    kwargs = dict(split=[train_split, test_split], as_supervised=True, data_dir=data_dir,
                  with_info=True, shuffle_files=False)
    try:
        (train, test), info = tfds.load("cifar10", download=False, **kwargs)
    except Exception as error:  # not in the cache (DatasetNotFoundError, AssertionError, ...)
        if not _reachable("www.cs.toronto.edu"):
            raise SystemExit(
                f"tfds: cifar10 is not in the tfds cache ({error.__class__.__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}) and its download host "
                "is unreachable. Use the local copy (--source local --data-dir DIR) or a "
                "machine with network access."
            ) from None
        (train, test), info = tfds.load("cifar10", download=True, **kwargs)

    def size(dataset, split):
        n = int(dataset.cardinality())
        return n if n >= 0 else info.splits[split].num_examples

    path = data_dir or tfds.core.constants.DATA_DIR
    return train, test, size(train, train_split), size(test, test_split), path


def load_datasets(args):
    """Unbatched (image uint8 HWC, label) `tf.data.Dataset`s for train and test, plus a description."""
    import tensorflow as tf

    use_local = args.source == "local" or (args.source == "auto" and local_files_present(args.data_dir))
    if args.source == "local" and not local_files_present(args.data_dir):
        raise SystemExit(f"--source local: {', '.join(LOCAL_FILES)} not all found in {args.data_dir}")
    if not use_local and args.source == "auto":
        print(f"CIFAR-10 .npz files not found in {args.data_dir}: trying tfds.load", flush=True)
    if use_local:
        x_train, y_train, x_test, y_test = load_local_arrays(
            args.data_dir, args.train_size, args.test_size
        )
        train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
        test = tf.data.Dataset.from_tensor_slices((x_test, y_test))
        source = {"source": "local", "path": str(Path(args.data_dir).resolve())}
        n_train, n_test = len(x_train), len(x_test)
    else:
        train, test, n_train, n_test, path = load_tfds_datasets(
            args.train_size, args.test_size, args.tfds_data_dir
        )
        source = {"source": "tfds", "path": str(path)}
    source.update(train_size=int(n_train), test_size=int(n_test))
    return train, test, source


def normalize(image):
    import tensorflow as tf

    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(CIFAR10_MEAN)) / tf.constant(CIFAR10_STD)


def make_pipelines(train, test, n_train, batch_size, seed, pad_mode="zero"):
    """Batched, augmented train and normalised test `tf.data` pipelines.

    Train: shuffle (reshuffled each epoch), pad 4 + random 32×32 crop, random
    horizontal flip, normalise, batch (drop the partial batch), prefetch. The
    random ops are stateless, seeded per image from `tf.data.Dataset.random`,
    which draws new seeds every epoch: reproducible, parallel-safe.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    mode = {"zero": "CONSTANT", "reflect": "REFLECT"}[pad_mode]

    def augment(example, seed_pair):
        image, label = example
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode=mode)
        image = tf.image.stateless_random_crop(image, [32, 32, 3], seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return normalize(image), tf.cast(label, tf.int32)

    def prepare(image, label):
        return normalize(image), tf.cast(label, tf.int32)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    train_ds = (
        tf.data.Dataset.zip(
            train.shuffle(n_train, seed=seed, reshuffle_each_iteration=True), seeds
        )
        .map(augment, num_parallel_calls=autotune)
        .batch(batch_size, drop_remainder=True)
        .prefetch(autotune)
    )
    test_ds = test.map(prepare, num_parallel_calls=autotune).batch(batch_size).prefetch(autotune)
    return train_ds, test_ds


# -- model ---------------------------------------------------------------------------

def numpy_initializers(seed):
    """(conv, dense) kernel initializers drawing from one NumPy generator.

    conv: torchvision's ResNet init, kaiming_normal_(mode="fan_out",
    nonlinearity="relu"), N(0, 2/fan_out); dense: Glorot uniform, Keras'
    default. Drawing with NumPy gives the same initial weights on all three
    backends for a given seed (and spares JAX one XLA compilation of its
    random-number generator per kernel shape).
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)

    class KaimingNormalFanOut(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            fan_out = math.prod(shape[:-2]) * shape[-1]
            value = rng.normal(0.0, math.sqrt(2.0 / fan_out), size=tuple(shape))
            return keras.ops.convert_to_tensor(value, dtype=dtype or "float32")

    class GlorotUniform(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, size=tuple(shape))
            return keras.ops.convert_to_tensor(value, dtype=dtype or "float32")

    return KaimingNormalFanOut(), GlorotUniform()


def build_resnet(depth=20, width=1.0, l2=0.0, num_classes=NUM_CLASSES, seed=0):
    """CIFAR ResNet-(6n+2) (He et al. 2016), functional Keras; outputs logits.

    Kernels drawn by `numpy_initializers(seed)`: the same initial weights on
    every backend.
    """
    import keras
    from keras import layers

    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2, received {depth}")
    blocks = (depth - 2) // 6
    filters = [max(1, int(round(f * width))) for f in (16, 32, 64)]
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    conv_init, dense_init = numpy_initializers(seed)

    def conv(x, f, kernel=3, stride=1, name=None):
        return layers.Conv2D(
            f, kernel, strides=stride, padding="same", use_bias=False,
            kernel_initializer=conv_init, kernel_regularizer=reg, name=name,
        )(x)

    def bn(x, name=None):
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)

    inputs = keras.Input(shape=(32, 32, 3), name="image")
    x = layers.ReLU()(bn(conv(inputs, filters[0], name="stem_conv"), name="stem_bn"))
    for stage, f in enumerate(filters):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            prefix = f"stage{stage + 1}_block{block + 1}"
            y = conv(x, f, stride=stride, name=f"{prefix}_conv1")
            y = layers.ReLU()(bn(y, name=f"{prefix}_bn1"))
            y = bn(conv(y, f, name=f"{prefix}_conv2"), name=f"{prefix}_bn2")
            if stride != 1 or x.shape[-1] != f:
                x = bn(conv(x, f, kernel=1, stride=stride, name=f"{prefix}_proj"),
                       name=f"{prefix}_proj_bn")
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, kernel_initializer=dense_init,
                           kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}" + (f"_w{width:g}" if width != 1 else ""))


# -- optimizer -----------------------------------------------------------------------

def build_optimizer(args, total_steps):
    """(optimizer, description): the inner SGD (cosine learning rate) wrapped in the method's
    keras_sam optimizer."""
    import keras

    import keras_sam

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr, decay_steps=max(1, total_steps), alpha=0.0
    )
    decoupled = args.wd_mode == "decoupled" and args.weight_decay > 0
    sgd = keras.optimizers.SGD(
        schedule, momentum=args.momentum,
        weight_decay=args.weight_decay if decoupled else None,
    )
    if decoupled:
        sgd.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])

    m, rho, steps = args.method, args.rho, args.steps
    if m == "sgd":
        return sgd, "SGD"
    if m in ("sam", "asam", "gsam", "wsam"):
        cls = {"sam": keras_sam.SAM, "asam": keras_sam.ASAM,
               "gsam": keras_sam.GSAM, "wsam": keras_sam.WSAM}[m]
        kwargs = {"rho": rho, "steps": steps}
        if m == "asam":
            kwargs["eta"] = args.asam_eta
        elif m == "gsam":
            kwargs["alpha"] = args.gsam_alpha
            if args.rho_min is not None:  # ρ follows the cosine learning rate, ρ_max = --rho
                kwargs["rho_min"] = args.rho_min
        elif m == "wsam":
            kwargs["gamma"] = args.wsam_gamma
    elif m in ("xsam", "xsam-asam"):
        cls = keras_sam.XSAM
        kwargs = {"rho": rho, "rho_max": args.rho_max if args.rho_max is not None else 2.0 * rho,
                  "steps": steps, "alpha": args.xsam_alpha}
        if m == "xsam-asam":
            kwargs.update(adaptive=True, eta=args.asam_eta)
    elif m in ("x-sam", "x-sam-amortized"):
        cls = keras_sam.EigenCorrectedSAM
        kwargs = {"rho": rho, "steps": steps, "alpha": args.eigen_alpha,
                  "refresh_every": args.refresh_every,
                  "power_iterations": 1 if m == "x-sam-amortized" else args.power_iterations,
                  "seed": args.seed}
    else:
        raise ValueError(f"unknown method {m!r}")
    text = f"{cls.__name__}(SGD, {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in kwargs.items())})"
    return cls(sgd, **kwargs), text


# -- main ----------------------------------------------------------------------------

def epoch_timer():
    """A callback recording the wall-clock seconds of each epoch's training (not validation)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def _stop(self):
            if self._start is not None:
                self.seconds.append(time.perf_counter() - self._start)
                self._start = None

        def on_test_begin(self, logs=None):  # validation starts: stop the epoch's clock
            self._stop()

        def on_epoch_end(self, epoch, logs=None):
            self._stop()

    return EpochTimer()


def _json_safe(value):
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if hasattr(value, "numpy") or hasattr(value, "__array__"):
        value = np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return str(value)


def main(argv=None):
    args = parse_args(argv)
    backend = select_backend(args.backend)

    import keras
    import tensorflow as tf

    import keras_sam

    if backend != "tensorflow":  # tf is only the input pipeline here: keep it off any GPU
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already initialised its devices (e.g. in a test session)
            pass
    keras.utils.set_random_seed(args.seed)  # weights; Python, NumPy, TF (and torch) seeds

    train, test, data = load_datasets(args)
    n_train, n_test = data["train_size"], data["test_size"]
    steps_per_epoch = n_train // args.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"--train-size {n_train} is smaller than --batch-size {args.batch_size}")
    train_ds, test_ds = make_pipelines(train, test, n_train, args.batch_size, args.seed, args.pad_mode)

    l2 = args.weight_decay / 2 if args.wd_mode == "l2" else 0.0
    network = build_resnet(args.depth, args.width, l2=l2, seed=args.seed)
    model = keras_sam.SAMModel(network)
    optimizer, optimizer_text = build_optimizer(args, steps_per_epoch * args.epochs)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=args.jit_compile,
    )
    n_params = int(sum(math.prod(v.shape) for v in model.trainable_variables))
    wd_text = (f"L2 {args.weight_decay / 2:g} on kernels (grad {args.weight_decay:g}·θ)"
               if args.wd_mode == "l2" else f"decoupled SGD weight_decay={args.weight_decay:g}")
    print(
        f"backend={backend} keras={keras.__version__} | data: {data['source']} "
        f"({data['path']}) train={n_train} test={n_test} | ResNet-{args.depth} width={args.width:g} "
        f"({n_params:,} params) | {args.method}: {optimizer_text} | "
        f"lr={args.lr:g} cosine over {steps_per_epoch * args.epochs} steps, momentum={args.momentum:g}, "
        f"{wd_text} | batch={args.batch_size} epochs={args.epochs} seed={args.seed}",
        flush=True,
    )

    timer = epoch_timer()
    fit_kwargs = {}
    if args.validation_freq > 0:
        fit_kwargs = {"validation_data": test_ds, "validation_freq": args.validation_freq}
    start = time.perf_counter()
    history = model.fit(
        train_ds, epochs=args.epochs, verbose=args.verbose, callbacks=[timer], shuffle=False,
        **fit_kwargs,
    )
    train_seconds = time.perf_counter() - start
    results = model.evaluate(test_ds, verbose=0, return_dict=True)
    test_loss, test_accuracy = float(results["loss"]), float(results["accuracy"])

    out = Path(args.history_out or Path("runs") / f"cifar10_{args.method}_{backend}.json")
    args.history_out = out
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "args": vars(args),
        "backend": backend,
        "keras_version": keras.__version__,
        "data": data,
        "model": {"name": network.name, "depth": args.depth, "width": args.width, "params": n_params},
        "optimizer": optimizer_text,
        "weight_decay": wd_text,
        "steps_per_epoch": steps_per_epoch,
        "history": history.history,
        "epoch_seconds": timer.seconds,
        "train_seconds": train_seconds,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
    }
    record = _json_safe(record)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"test accuracy {test_accuracy:.4f} (loss {test_loss:.4f}) on {n_test} images "
          f"after {args.epochs} epochs, {train_seconds:.1f}s; history → {out}")
    return record


if __name__ == "__main__":
    main()
