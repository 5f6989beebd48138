"""examples/cifar10.py: the tf.data pipeline and one tiny end-to-end run on this backend.

The tests that read the local CIFAR-10 copy (../shared/data next to the
repository) are skipped when it is absent; the model's structure is always tested.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cifar10_example", ROOT / "examples" / "cifar10.py")
cifar10 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cifar10)

needs_data = pytest.mark.skipif(
    not cifar10.local_files_present(cifar10.DEFAULT_DATA_DIR),
    reason=f"CIFAR-10 .npz files not in {cifar10.DEFAULT_DATA_DIR}",
)


@pytest.fixture(scope="module")
def arrays():
    """The first 12 train and 5 test images (decompressing the .npz takes ~1 s: load once)."""
    return cifar10.load_local_arrays(cifar10.DEFAULT_DATA_DIR, train_size=12, test_size=5)


@needs_data
def test_local_arrays_are_official_order(arrays):
    x_train, y_train, x_test, y_test = arrays
    assert x_train.shape == (12, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (5, 32, 32, 3) and x_test.dtype == np.uint8
    np.testing.assert_array_equal(y_train[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    np.testing.assert_array_equal(y_test, [3, 8, 8, 0, 6])


@needs_data
@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
def test_pipeline_crops_flips_and_normalises(arrays, pad_mode):
    import tensorflow as tf

    x, y, x_test, y_test = arrays
    train_ds, test_ds = cifar10.make_pipelines(
        tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        n_train=len(x), batch_size=5, seed=3, pad_mode=pad_mode,
    )
    mean, std = np.array(cifar10.CIFAR10_MEAN), np.array(cifar10.CIFAR10_STD)

    # Test batches: normalised, in order, the partial last batch kept.
    (xb, yb), = [(np.asarray(a), np.asarray(b)) for a, b in test_ds]
    assert xb.dtype == np.float32 and xb.shape == (5, 32, 32, 3) and yb.dtype == np.int32
    np.testing.assert_allclose(xb, (x_test / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(yb, y_test)

    # Train: 12 // 5 = 2 full batches; each image is a 32×32 window of the padded
    # original, possibly flipped, with its own label.
    np_mode = {"zero": "constant", "reflect": "reflect"}[pad_mode]
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)], mode=np_mode)
    windows = {}
    for i in range(len(x)):
        for flip in (False, True):
            image = padded[i][:, ::-1] if flip else padded[i]
            for r in range(9):
                for c in range(9):
                    windows.setdefault(image[r:r + 32, c:c + 32].tobytes(), set()).add((i, flip, r, c))
    epochs = []
    for _ in range(2):
        batches = [(np.asarray(a), np.asarray(b)) for a, b in train_ds]
        assert [b[0].shape for b in batches] == [(5, 32, 32, 3)] * 2
        placements = []
        for images, labels in batches:
            raw = np.rint((images * std + mean) * 255.0)
            assert np.abs(raw - np.clip(raw, 0, 255)).max() == 0
            for image, label in zip(raw.astype(np.uint8), labels):
                found = windows.get(image.tobytes())
                assert found, "a training image is not a crop of a padded original"
                assert all(y[i] == label for i, *_ in found)
                placements.append(sorted(found)[0])
        epochs.append(placements)
    assert epochs[0] != epochs[1]  # reshuffled and re-augmented each epoch
    # Crops and flips actually vary.
    assert len({(r, c) for _, _, r, c in epochs[0] + epochs[1]}) > 1
    assert {flip for _, flip, _, _ in epochs[0] + epochs[1]} == {False, True}


@pytest.mark.parametrize("depth", [8, 20])
def test_resnet_structure(depth):
    # width 0.25 (filters 4, 8, 16): the shapes of the tiny run below, cheap on JAX.
    model = cifar10.build_resnet(depth=depth, width=0.25)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    main_path = [c for c in convs if not c.name.endswith("_proj")]
    assert len(main_path) + 1 == depth  # + the dense layer
    assert [c.filters for c in convs if c.name.endswith("_proj")] == [8, 16]
    assert model.get_layer("stage3_block1_conv1").output.shape[1:] == (8, 8, 16)
    assert model.output_shape == (None, 10)
    # Kernels come from NumPy (the same on every backend): the stem is the first draw.
    stem = np.random.default_rng(0).normal(0.0, math.sqrt(2.0 / (3 * 3 * 4)), size=(3, 3, 3, 4))
    np.testing.assert_allclose(np.asarray(model.get_layer("stem_conv").kernel), stem, rtol=1e-6)
    n = (depth - 2) // 6
    batchnorms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(batchnorms) == 1 + 6 * n + 2


@needs_data
def test_tiny_run_writes_history(tmp_path):
    out = tmp_path / "history.json"
    record = cifar10.main([
        "--method", "sam", "--epochs", "2", "--train-size", "64", "--test-size", "32",
        "--batch-size", "32", "--depth", "8", "--width", "0.25", "--verbose", "0",
        "--history-out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["test_accuracy"] == pytest.approx(record["test_accuracy"])
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and math.isfinite(saved["test_loss"])
    history = saved["history"]
    for key in ("loss", "accuracy", "sharpness", "grad_cosine", "val_loss", "val_accuracy"):
        assert len(history[key]) == 2 and all(math.isfinite(v) for v in history[key]), key
    assert saved["args"]["method"] == "sam" and saved["args"]["rho"] == 0.05
    assert saved["data"] == {"source": "local", "path": str(cifar10.DEFAULT_DATA_DIR.resolve()),
                             "train_size": 64, "test_size": 32}
    assert saved["steps_per_epoch"] == 2 and len(saved["epoch_seconds"]) == 2
