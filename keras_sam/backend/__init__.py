"""The few operations that differ per Keras backend.

Everything else in keras_sam is written once with `keras.ops`. Each backend
module provides the same names:

- `value_and_grad(fn)`: `fn(params) -> (loss, aux)` becomes
  `f(params) -> ((loss, aux), grads)`, where `params` is a list of tensors.
- `forward(fn)`: `fn(params)` as a forward pass only (no autograd graph; on
  torch the same random numbers as the step's other passes).
- `run_train_step(model, step_fn, args)`: runs a stateful step function as the
  trainer of this backend expects `train_step` to behave (JAX: pure function of
  its state).
- `apply_if(pred, update_fn, args, variables)`: runs `update_fn(*args)`
  (which assigns to `variables`) only where the scalar boolean `pred` is true,
  inside compiled steps too; `pred` must be the same on every replica.
- `hvp(fn, params, vectors) -> (grads, Hv)`: gradient and Hessian-vector
  product of a scalar function of a list of tensors.
- `replicas_in_sync()`: how many replicas run this `train_step` side by side,
  each on its share of the batch (TF `MirroredStrategy`); 1 where the step is
  one program on global arrays (JAX `keras.distribution`) or one device.
- `all_reduce_mean(values)`: mean over those replicas (identity at 1).
- `direction_for_optimizer(direction)`: what each replica hands the inner
  optimizer so that every replica steps with the replicas' mean direction
  (TF's optimizer sums the replicas' gradients; torch's applies its own).
- `data_parallel_size()`: the data-parallel replicas or devices of the
  current distribution (`perturbation_groups="replica"`).
- `collective_fori_loop(lower, upper, body, init)`: `keras.ops.fori_loop`
  for a `body` that may all-reduce across replicas (unrolled where a replica
  may not do that inside a loop: `tf.distribute`).
- `collective_cond(pred, true_fn, false_fn)`: `keras.ops.cond` for branches
  that may synchronise across replicas (`pred` the same on every replica);
  under `tf.distribute`, where a replica may not, both branches run and one
  is kept (with a warning).
- `compile_function(fn)`: `fn` compiled for repeated calls on tensors
  (`jax.jit`, `tf.function`; torch: `fn` itself, eager).
- `fixed_randomness(seed)`: a context in which unseeded random draws that
  bypass Keras' seed state (torch's dropout uses torch's global generator)
  start from `seed`, leaving the caller's generator untouched; elsewhere
  (Keras' seed state already fixes them) it does nothing.
- `check_train_setup(model)`: raises for a setup the step cannot run
  (torch: `torch.compile` or model parallelism under torch.distributed).

On torch, the replicas are the ranks of `torch.distributed` (one process
per device, each fed its own share of the global batch).
- `COMPILED_STEP_UNSUPPORTED`: None, or why the sharpness-aware step runs
  eagerly under `jit_compile=True` on this backend (with a warning).
"""

import importlib

import keras

_name = keras.backend.backend()
if _name not in ("jax", "tensorflow", "torch"):
    raise ImportError(
        "keras_sam supports the tensorflow, jax and torch backends of Keras; "
        f"KERAS_BACKEND is {_name!r}, which cannot train."
    )
_impl = importlib.import_module(f"keras_sam.backend.{_name}")

COMPILED_STEP_UNSUPPORTED = _impl.COMPILED_STEP_UNSUPPORTED
all_reduce_mean = _impl.all_reduce_mean
apply_if = _impl.apply_if
collective_cond = _impl.collective_cond
collective_fori_loop = _impl.collective_fori_loop
compile_function = _impl.compile_function
check_train_setup = _impl.check_train_setup
data_parallel_size = _impl.data_parallel_size
fixed_randomness = _impl.fixed_randomness
direction_for_optimizer = _impl.direction_for_optimizer
forward = _impl.forward
hvp = _impl.hvp
replicas_in_sync = _impl.replicas_in_sync
run_train_step = _impl.run_train_step
value_and_grad = _impl.value_and_grad
