"""PyTorch: `torch.autograd.grad` on detached leaf copies of the values.

Gradients leave this module dense: a sparse gradient (`torch.nn.Embedding(...,
sparse=True)` or `F.embedding(..., sparse=True)` inside a wrapped torch module)
holds one row per looked-up index, repeats included, which Keras' element-wise
ops would not sum (see the TensorFlow backend's `IndexedSlices`).
"""

import torch
from keras import tree


class _StepRandomness:
    """Replays the global RNG so that every pass of a step draws the same numbers.

    Keras' torch dropout with an unseeded `SeedGenerator` draws from torch's
    global generator instead of the generator state variable, so feeding the
    same non-trainable values to every pass (as on TensorFlow and JAX) does not
    give the same mask. Each pass starts from the RNG state at the start of the
    step; after the step the RNG is left where one pass leaves it.
    """

    start = None
    after_first_pass = None

    @staticmethod
    def _get():
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return torch.get_rng_state(), cuda

    @staticmethod
    def _set(state):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    def begin(self):
        self.start, self.after_first_pass = self._get(), None

    def before_pass(self):
        if self.start is not None:
            self._set(self.start)

    def after_pass(self):
        if self.start is not None and self.after_first_pass is None:
            self.after_first_pass = self._get()

    def end(self):
        if self.after_first_pass is not None:
            self._set(self.after_first_pass)
        self.start = self.after_first_pass = None


_randomness = _StepRandomness()

# torch.compile of the step is not correct for every method: it differentiates
# several times per step through `stateless_call`, X-SAM's refresh needs double
# backward (refused by compiled backward graphs with donated buffers), and
# compiled graphs were found reused across models in one process (dynamic XSAM
# then differs from eager); compiling also takes minutes for a small model.
COMPILED_STEP_UNSUPPORTED = (
    "torch.compile does not compile it correctly for every method: several "
    "differentiations through stateless_call per step, double backward for "
    "X-SAM, compiled graphs shared between models"
)


def _dense(g):
    return g.to_dense() if g is not None and g.layout != torch.strided else g


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def forward(fn):
    def wrapped(params):
        _randomness.before_pass()
        with torch.no_grad():
            out = fn([p.detach() for p in params])
        _randomness.after_pass()
        return out

    return wrapped


def value_and_grad(fn):
    def wrapped(params):
        leaves = [p.detach().requires_grad_(True) for p in params]
        _randomness.before_pass()
        with torch.enable_grad():
            loss, aux = fn(leaves)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        _randomness.after_pass()
        grads = [
            torch.zeros_like(p) if g is None else _dense(g)
            for g, p in zip(grads, leaves)
        ]
        return (loss.detach(), tree.map_structure(_detach, aux)), grads

    return wrapped


def hvp(fn, params, vectors):
    """Gradient of `fn` at `params` and the Hessian-vector product H·v.

    Eager: double backward (`autograd.grad` of ⟨∇f, v⟩ with `create_graph`),
    measured faster than `torch.func` here (CNN, 67k parameters, CPU:
    2.6-2.9x against 3.3-3.6x a gradient; 1.3x against 3.3x on a tiny MLP,
    `benchmarks/hvp_time.py`). Under
    `torch.compile`, where double backward does not work: forward-over-reverse
    with `torch.func` (`jvp` of `grad`). Works under `torch.no_grad()`;
    returns detached tensors, zeros for unconnected parameters.
    """
    params = [p.detach() for p in params]
    vectors = [v.detach().to(p.dtype) for v, p in zip(vectors, params)]
    _randomness.before_pass()
    with torch.enable_grad():
        if torch.compiler.is_compiling():
            grads, hv = _forward_over_reverse(fn, params, vectors)
        else:
            grads, hv = _reverse_over_reverse(fn, params, vectors)
    _randomness.after_pass()
    return [g.detach() for g in grads], [h.detach() for h in hv]


def _forward_over_reverse(fn, params, vectors):
    return torch.func.jvp(torch.func.grad(fn), (params,), (vectors,))


def _reverse_over_reverse(fn, params, vectors):
    leaves = [p.requires_grad_(True) for p in params]
    loss = fn(leaves)
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        grads = [_dense(g) for g in grads]
    else:
        grads = [None] * len(leaves)
    terms = [
        (g * v).sum() for g, v in zip(grads, vectors) if g is not None and g.requires_grad
    ]
    hv = [None] * len(leaves)
    if terms:
        hv = torch.autograd.grad(sum(terms), leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]
    hv = [torch.zeros_like(p) if h is None else _dense(h) for h, p in zip(hv, leaves)]
    return grads, hv


def run_train_step(model, step_fn, args):
    (data,) = args
    # The update math runs outside autograd; `value_and_grad` re-enables it
    # for the passes that need it.
    _randomness.begin()
    try:
        with torch.no_grad():
            return step_fn(data)
    finally:
        _randomness.end()


def replicas_in_sync():
    return 1


def data_parallel_size():
    # Keras has no `keras.distribution` for torch: one process, one device.
    return 1


def all_reduce_mean(values):
    return values


def apply_if(pred, update_fn, args, variables):
    del variables
    if bool(pred):
        update_fn(*args)
