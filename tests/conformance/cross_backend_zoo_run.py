"""Helper for test_cross_backend_zoo.py: trains every zoo model on the backend
named by KERAS_BACKEND and saves its weights.

    KERAS_BACKEND=torch python tests/conformance/cross_backend_zoo_run.py OUT_DIR

Model i trains with method i + 5 (mod 10) of methods.METHODS (each method once), dropout
rate 0 (each backend draws its own masks from the same seed), for zoo.STEPS
`train_on_batch` steps, compiled as TensorFlow graph, JAX jit and torch
eager. Writes OUT_DIR/<backend>.npz, keyed "<model>/<step>/<weight index>".
"""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pairs():
    from tests.conformance import methods, zoo

    # Model i with method i + 5: mobilenet and the RNNs (slowest to compile,
    # zoo.ZOO[5:7]) with SAM and ASAM (the fewest passes).
    names = list(methods.METHODS)
    return list(zip(zoo.ZOO, names[5:] + names[:5]))


def main(out_dir):
    sys.path.insert(0, ROOT)
    import keras

    import keras_sam
    from tests.conformance import methods, zoo

    backend = keras.backend.backend()
    compile_args = {"tensorflow": {"jit_compile": False}, "jax": {"jit_compile": True},
                    "torch": {"jit_compile": False}}[backend]
    arrays = {}
    for model_name, method in pairs():
        keras.utils.set_random_seed(1234)
        case = zoo.ZOO[model_name](dropout=0.0)
        model = keras_sam.SAMModel(case.model)
        model.compile(optimizer=methods.METHODS[method][0](methods.inner_optimizer()),
                      loss=case.loss, **compile_args)
        for step in range(zoo.STEPS):
            model.train_on_batch(zoo.batch(case.x, step), zoo.batch(case.y, step))
            for i, v in enumerate(case.model.weights):
                arrays[f"{model_name}/{step}/{i}"] = np.asarray(keras.ops.convert_to_numpy(v.value))
        keras.backend.clear_session()
    np.savez(os.path.join(out_dir, f"{backend}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
