"""PyTorch: `torch.autograd.grad` on detached leaf copies of the values.

Gradients leave this module dense: a sparse gradient (`torch.nn.Embedding(...,
sparse=True)` or `F.embedding(..., sparse=True)` inside a wrapped torch module)
holds one row per looked-up index, repeats included, which Keras' element-wise
ops would not sum (see the TensorFlow backend's `IndexedSlices`).

Data parallel over `torch.distributed`: one process per device (rank), each
running `fit` on its own share of every global batch, the ranks' means
all-reduced inside the step. The optimizer's `perturbation_groups` keeps its
meaning: `1` is one process on the global batch, `"replica"` one ascent per
rank. With Keras 3.15 (no torch data parallel of its own)::

    # torchrun --nproc_per_node=2 train.py
    import os
    os.environ["KERAS_BACKEND"] = "torch"
    import torch.distributed as dist
    dist.init_process_group("gloo")  # "nccl" on GPUs, after
                                     # torch.cuda.set_device(local rank)
    rank, ranks = dist.get_rank(), dist.get_world_size()
    import keras, keras_sam

    model = keras_sam.SAMModel(build_model())
    model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1)),
                  loss="sparse_categorical_crossentropy", jit_compile=False)
    n = len(x) // ranks * ranks  # the same number of examples on every rank
    model.fit(x[rank:n:ranks], y[rank:n:ranks], batch_size=global_batch // ranks)

- Initialize the process group before the first `fit` (or
  `train_on_batch`); at the first step every rank takes rank 0's weights,
  as `DistributedDataParallel` does.
- Every rank must run the same number of steps: a rank with one step more
  waits at that step's first all-reduce. Give each rank the same number of
  examples and batches.
- Ranks' shares of a global batch may differ in size (a last, partial
  batch): the means are weighted by each rank's examples, as one process
  on the global batch.
- BatchNormalization normalises each rank's share by that share's
  statistics (Keras has no synchronized BatchNormalization on torch), as
  `DistributedDataParallel` without SyncBatchNorm: the one difference from
  one process on the global batch. Its moving statistics are averaged over
  the ranks after every step, so the ranks keep identical ones.
- Logs: the loss is the global batch's under `perturbation_groups=1`, each
  rank's own under `"replica"`; other metrics are each rank's own (Keras
  3.15 does not reduce them across ranks).
- keras-nightly wraps the model in `DistributedDataParallel` when
  torch.distributed is initialized, and with
  `keras.distribution.DataParallel` also shards the data by batches (rank r
  takes batches r, r + ranks, ...: pass the whole data set and the per-rank
  batch size). The step never reaches DDP's gradient hooks (its gradients
  are taken on detached leaves), so the all-reduces here are the only ones;
  Keras sums the metrics across ranks.
- Refused with an error: `jit_compile=True` (torch.compile) under
  torch.distributed; a `keras.distribution` other than `DataParallel`; a
  distribution over several devices without torch.distributed; a method
  that updates its state from the step's own gradients (XSAM's α search)
  with per-rank ascent.
"""

import contextlib
import weakref

import keras
import torch
import torch.distributed as dist
from keras import ops
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
    measured faster than `torch.func` (`benchmarks/hvp_time.py`; figures in
    benchmarks/README.md). Under
    `torch.compile`, where double backward does not work: forward-over-reverse
    with `torch.func` (`jvp` of `grad`). Works under `torch.no_grad()`;
    returns detached tensors, zeros for unconnected parameters.
    """
    params = [p.detach() for p in params]
    vectors = [v.detach().to(p.dtype) for v, p in zip(vectors, params)]
    _randomness.before_pass()
    with torch.enable_grad(), _twice_differentiable_attention():
        if torch.compiler.is_compiling():
            grads, hv = _forward_over_reverse(fn, params, vectors)
        else:
            grads, hv = _reverse_over_reverse(fn, params, vectors)
    _randomness.after_pass()
    return [g.detach() for g in grads], [h.detach() for h in hv]


def _twice_differentiable_attention():
    """`scaled_dot_product_attention` (Keras' MultiHeadAttention) restricted
    to its math kernel, the one with second derivatives: the fused kernels
    chosen by default (flash attention on CPU) have none."""
    return torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH])


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
    _data_parallel.begin_step(model, data)
    # The update math runs outside autograd; `value_and_grad` re-enables it
    # for the passes that need it.
    _randomness.begin()
    try:
        with torch.no_grad():
            return step_fn(data)
    finally:
        _randomness.end()
        _data_parallel.end_step()


# -- data parallelism over torch.distributed ---------------------------------
#
# One process per device; every rank runs `train_step` on its own share of the
# global batch, as a replica of `tf.distribute`. Keras' DistributedDataParallel
# wrapper (keras-nightly) never sees the step's gradients: they are taken on
# detached leaves, so the all-reduces are made here and nowhere else.


def _process_group():
    """The data-parallel process group of this run, or None for one process.

    torch.distributed's default group, or the batch axis of a
    `keras.distribution.DataParallel` (keras-nightly). Anything else is
    refused: the step would not know which ranks hold the same model.
    """
    if not (dist.is_available() and dist.is_initialized()):
        distribution = keras.distribution.distribution()
        if distribution is not None and _mesh_batch_size(distribution) > 1:
            raise ValueError(
                f"keras_sam on torch runs data parallel over torch.distributed "
                f"(one process per device), but {type(distribution).__name__} is "
                "set with several devices in a single process: initialize "
                "torch.distributed (e.g. `keras.distribution.initialize()` under "
                "torchrun) or unset the distribution."
            )
        return None
    distribution = keras.distribution.distribution()
    if distribution is None:
        group = dist.group.WORLD
    elif isinstance(distribution, keras.distribution.DataParallel):
        mesh = distribution.device_mesh.backend_mesh
        group = mesh.get_group(distribution.batch_dim_name)
    else:
        raise ValueError(
            f"keras_sam on torch supports data parallelism only (no "
            f"distribution, or keras.distribution.DataParallel); "
            f"{type(distribution).__name__} is set."
        )
    return group if dist.get_world_size(group) > 1 else None


def _mesh_batch_size(distribution):
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


class _DataParallel:
    """The ranks of the current step and their shares of the global batch.

    Means over ranks are weighted by each rank's number of examples, so that
    unequal shares (a last, partial batch) still give the global batch's
    mean loss and gradient, as one process on it would.
    """

    group = None
    world = 1
    examples = None  # this rank's examples, when shares differ; else None
    total = None

    def begin_step(self, model, data):
        self.group = _process_group()
        self.world = 1 if self.group is None else dist.get_world_size(self.group)
        self.examples = self.total = None
        if self.group is None:
            return
        _broadcast_once(model, self.group)
        first = next(t for t in tree.flatten(data) if t is not None)
        size = torch.tensor([first.shape[0]], dtype=torch.float64, device=_device(first))
        sizes = [torch.empty_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size, group=self.group)
        sizes = [int(s.item()) for s in sizes]
        if len(set(sizes)) > 1:
            self.examples, self.total = sizes[dist.get_rank(self.group)], sum(sizes)

    def end_step(self):
        self.group, self.world, self.examples, self.total = None, 1, None, None

    def mean(self, tensors):
        """The (share-weighted) mean over ranks of each tensor: one all-reduce
        per dtype, of all tensors of that dtype flattened together."""
        by_dtype = {}
        for i, t in enumerate(tensors):
            # Summed in float32 at least; integers and flags come back as means.
            wide = torch.float64 if t.dtype == torch.float64 else torch.float32
            by_dtype.setdefault(wide, []).append(i)
        means = [None] * len(tensors)
        for wide, indices in by_dtype.items():
            flat = torch.cat([tensors[i].reshape(-1).to(wide) for i in indices])
            if self.examples is not None:
                # Σ n_r x_r / Σ n_r: exact 1.0 for a flag every rank set.
                flat = flat * self.examples
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat = flat / (self.world if self.total is None else self.total)
            for i, part in zip(indices, flat.split([tensors[i].numel() for i in indices])):
                dtype = tensors[i].dtype if tensors[i].dtype.is_floating_point else wide
                means[i] = part.reshape(tensors[i].shape).to(dtype)
        return means


_data_parallel = _DataParallel()


def _device(tensor):
    return tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")


# model → the process group its variables were last broadcast over (weak:
# kept only while the model lives).
_BROADCAST_GROUPS = weakref.WeakKeyDictionary()


def _broadcast_once(model, group):
    """Rank 0's variables on every rank, before the first step on `group`.

    As `DistributedDataParallel` does when it wraps a module: ranks that
    built their model from different seeds start from the same weights.
    """
    if _BROADCAST_GROUPS.get(model) is group:
        return
    variables = list(model.variables)
    if model.optimizer is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    source = dist.get_global_rank(group, 0)
    by_kind = {}
    for variable in variables:
        # Exact in float64 / int64, which every process-group backend has.
        kind = torch.float64 if variable.value.dtype.is_floating_point else torch.int64
        by_kind.setdefault(kind, []).append(variable)
    for kind, same_kind in by_kind.items():
        flat = torch.cat([v.value.detach().reshape(-1).to(kind) for v in same_kind])
        dist.broadcast(flat, src=source, group=group)
        for variable, part in zip(same_kind, flat.split([v.value.numel() for v in same_kind])):
            variable.assign(part.reshape(variable.value.shape))
    _BROADCAST_GROUPS[model] = group


def replicas_in_sync():
    """Ranks of torch.distributed running this step, each on its share of
    the global batch (1 without torch.distributed)."""
    return _data_parallel.world if _data_parallel.group is not None else _world_size()


def data_parallel_size():
    """Ranks of the data-parallel process group (1 without torch.distributed)."""
    return _world_size()


def _world_size():
    group = _process_group()
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_mean(values):
    """The mean over ranks of a nested structure of tensors, weighted by the
    ranks' examples when their shares of the global batch differ."""
    if _data_parallel.group is None:
        return values
    flat = [torch.as_tensor(v) for v in tree.flatten(values)]
    return tree.pack_sequence_as(values, _data_parallel.mean(flat))


def direction_for_optimizer(direction):
    """The inner optimizer of every rank applies what it is given: hand it
    the ranks' mean direction, so that the ranks stay identical."""
    return all_reduce_mean(direction)


def check_train_setup(model):
    """Refuses what the data-parallel step cannot run."""
    if _process_group() is None:
        return
    if getattr(model, "jit_compile", False) and not model.run_eagerly:
        raise ValueError(
            "keras_sam does not support torch.compile (`jit_compile=True`) "
            "together with torch.distributed: compile with `jit_compile=False`."
        )


def apply_if(pred, update_fn, args, variables):
    del variables
    if bool(pred):
        update_fn(*args)


def collective_fori_loop(lower, upper, body, init):
    return ops.fori_loop(lower, upper, body, init)


def collective_cond(pred, true_fn, false_fn):
    # Every rank takes the same branch (`pred` is computed from all-reduced values).
    return ops.cond(pred, true_fn, false_fn)


def compile_function(fn):
    # Eager: torch.compile on CPU was slower for these small functions.
    return fn


@contextlib.contextmanager
def fixed_randomness(seed):
    """Keras' unseeded torch dropout draws from torch's global generator:
    reseed it inside a fork, so every evaluation sees the same mask and the
    caller's RNG stream is untouched."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
