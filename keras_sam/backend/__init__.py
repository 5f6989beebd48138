"""The few operations that differ per Keras backend.

Everything else in keras_sam is written once with `keras.ops`. Each backend
module provides the same four names:

- `value_and_grad(fn)`: `fn(params) -> (loss, aux)` becomes
  `f(params) -> ((loss, aux), grads)`, where `params` is a list of tensors.
- `run_train_step(model, step_fn, args)`: runs a stateful step function as the
  trainer of this backend expects `train_step` to behave (JAX: pure function of
  its state).
- `apply_if(pred, update_fn, variables)`: runs `update_fn` (which assigns to
  `variables`) only where the scalar boolean `pred` is true, inside compiled
  steps too.
- `hvp(...)`: reserved for Hessian-vector products.
"""

import keras

_name = keras.backend.backend()

if _name == "jax":
    from keras_sam.backend.jax import apply_if, run_train_step, value_and_grad
elif _name == "tensorflow":
    from keras_sam.backend.tensorflow import (
        apply_if,
        run_train_step,
        value_and_grad,
    )
elif _name == "torch":
    from keras_sam.backend.torch import apply_if, run_train_step, value_and_grad
else:  # pragma: no cover - keras only ships the backends above and numpy
    raise ImportError(
        f"keras_sam supports the tensorflow, jax and torch backends of Keras; "
        f"KERAS_BACKEND is {_name!r}, which cannot train."
    )

__all__ = ["apply_if", "run_train_step", "value_and_grad"]
