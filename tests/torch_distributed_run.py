"""torch data parallel over torch.distributed (gloo, 2 processes) against one process.

    KERAS_BACKEND=torch python tests/torch_distributed_run.py

Run by tests/test_torch_distributed.py in a subprocess. This process trains
every case on one process, on the global batches; then two processes spawned
with `torch.multiprocessing`, joined in a gloo process group, train the same
case, each on its share of every global batch (rank r the r-th contiguous
part, as `perturbation_groups` cuts a batch) and from its own random
initialization (rank 1 must start from rank 0's weights). One JSON line per
case: the largest absolute differences of the weights and of the BatchNorm
moving statistics, between the ranks and against one process, and the
optimizer counters.

- global: `perturbation_groups=1` on 2 ranks equals one process on the global
  batch. BatchNormalization normalises each rank's share (Keras has no
  synchronized BatchNormalization on torch); so that this still equals one
  process, the second half of every global batch holds the first half's
  inputs in another order (with labels of its own): each share's batch
  statistics are the global batch's.
- replica: `perturbation_groups="replica"` on 2 ranks equals one process with
  `perturbation_groups=2`; any data, and a last global batch of 7 examples
  (shares of 3 and 4, weighted by their sizes).
- global, partial batch: as global, without BatchNormalization, with a last
  global batch of 7 examples.
Also two setups that must be refused on every rank: XSAM's α search with
per-replica ascent, and `jit_compile=True` (torch.compile).
"""

import datetime
import json
import os
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_sam  # noqa: E402

RANKS = 2
BATCH = 16
STEPS = 4
PARTIAL = 7  # the last global batch of the partial cases
# Past this the ranks are stopped: a stuck collective fails the test, not the suite.
JOIN_SECONDS = 900


def sgd(momentum=0.0):
    return keras.optimizers.SGD(0.1, momentum=momentum)


METHODS = {
    "SAM": lambda g: keras_sam.SAM(sgd(0.9), rho=0.2, perturbation_groups=g),
    "ASAM": lambda g: keras_sam.ASAM(sgd(), rho=0.5, perturbation_groups=g),
    "SAM k=2": lambda g: keras_sam.SAM(sgd(), rho=0.3, steps=2, perturbation_groups=g),
    # Every other step is the inner optimizer's plain step.
    "SAM every=2": lambda g: keras_sam.SAM(sgd(0.9), rho=0.2, every=2, perturbation_groups=g),
    "GSAM": lambda g: keras_sam.GSAM(sgd(), rho=0.2, perturbation_groups=g),
    "WSAM coupled": lambda g: keras_sam.WSAM(sgd(0.9), rho=0.2, decouple=False,
                                             perturbation_groups=g),
    "WSAM decoupled": lambda g: keras_sam.WSAM(sgd(0.9), rho=0.2, perturbation_groups=g),
    "XSAM α=0.5": lambda g: keras_sam.XSAM(sgd(), alpha=0.5, perturbation_groups=g),
    "XSAM search": lambda g: keras_sam.XSAM(sgd(), search_every=2, perturbation_groups=g),
    "X-SAM": lambda g: keras_sam.EigenCorrectedSAM(
        sgd(), rho=0.2, refresh_every=2, power_iterations=3, perturbation_groups=g),
}
# (method, mode, one process's perturbation_groups, 2 ranks', BatchNorm, last batch)
CASES = [(m, "global", 1, 1, True, BATCH) for m in METHODS]
# The α search is global only. A plain step (every=2) is not grouped: one
# process normalises the whole batch there, each rank its share.
CASES += [(m, "replica", 2, "replica", True, PARTIAL) for m in METHODS
          if m not in ("XSAM search", "SAM every=2")]
CASES += [("SAM", "global, partial batch", 1, 1, False, PARTIAL)]


def batch_sizes(last):
    return [BATCH] * (STEPS - 1) + [last]


def data(mode, last):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sum(batch_sizes(last)), 6)).astype("float32")
    y = rng.integers(0, 3, size=len(x)).astype("int32")
    if mode == "global":
        for start in range(0, len(x), BATCH):
            half = BATCH // 2
            first = x[start:start + half]
            x[start + half:start + BATCH] = first[rng.permutation(half)]
    return x, y


def share(arrays, last, rank):
    """Rank `rank`'s part of every global batch, as `_split_batch` cuts it."""
    parts, start = [], 0
    for size in batch_sizes(last):
        a, b = (rank * size) // RANKS, ((rank + 1) * size) // RANKS
        parts.append([t[start + a:start + b] for t in arrays])
        start += size
    return [np.concatenate(p) for p in zip(*parts)]


def build(batch_norm, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.8)(h)
    h = keras.layers.Activation("relu")(h)
    return keras_sam.SAMModel(keras.Model(inputs, keras.layers.Dense(3)(h)))


def train(case, rank=None):
    """Trains `case` on one process (rank None) or as `rank`; returns arrays."""
    method, mode, single_groups, groups, batch_norm, last = case
    x, y = data(mode, last)
    model = build(batch_norm, seed=7 if rank is None else 7 + 1000 * rank)
    if rank is not None:
        x, y = share((x, y), last, rank)
    model.compile(optimizer=METHODS[method](single_groups if rank is None else groups),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=BATCH if rank is None else BATCH // RANKS, epochs=1,
              shuffle=False, verbose=0)
    optimizer = model.optimizer
    counters = [optimizer.iterations, optimizer.skipped_steps]
    counters += [getattr(optimizer, "searches", 0)]
    if optimizer.eigen_correction is not None:
        counters.append(optimizer.eigen_correction.refreshes)
    return {
        "weights": [keras.ops.convert_to_numpy(w) for w in model.trainable_weights],
        "statistics": [keras.ops.convert_to_numpy(w) for w in model.non_trainable_weights],
        "counters": [int(keras.ops.convert_to_numpy(c)) for c in counters],
        # keras-nightly wraps the model in DistributedDataParallel.
        "ddp": getattr(model, "ddp_model", None) is not None,
    }


def refusals():
    """The messages of the setups that must be refused (None if one ran)."""
    messages = {}
    x, y = data("replica", BATCH)
    attempts = {
        "XSAM search, replica": (METHODS["XSAM search"]("replica"), False),
        "jit_compile": (METHODS["SAM"](1), True),
    }
    for name, (optimizer, jit_compile) in attempts.items():
        model = build(True, seed=7)
        model.compile(optimizer=optimizer, jit_compile=jit_compile,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        try:
            model.fit(x, y, batch_size=BATCH // RANKS, epochs=1, shuffle=False, verbose=0)
            messages[name] = None
        except ValueError as error:
            messages[name] = str(error)
    return messages


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    # A rank left waiting in a collective fails the run within minutes.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=RANKS, timeout=datetime.timedelta(seconds=300))
    try:
        results = [train(case, rank) for case in CASES]
        np.save(os.path.join(out_dir, f"rank{rank}.npy"),
                np.array([results, refusals()], dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()


def _join(processes, deadline):
    """Waits for the spawned ranks; stops them and raises past `deadline`,
    so that a stuck collective fails the test instead of hanging the suite."""
    while time.time() < deadline:
        if processes.join(timeout=5):
            return
    for process in processes.processes:
        process.kill()
    raise TimeoutError(f"the {RANKS} ranks did not finish within {JOIN_SECONDS} s")


def max_difference(a, b):
    return float(max([np.max(np.abs(u - v)) for u, v in zip(a, b)], default=0.0))


def initial_weights(case):
    return [keras.ops.convert_to_numpy(w) for w in build(case[4], seed=7).trainable_weights]


def run():
    """Every case on 2 ranks (spawned) and on this process, compared.

    Returns one record per case and the refusals' messages of each rank. The
    one-process runs happen while the ranks train.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run beside this process
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            init_file = os.path.join(out_dir, "init")
            processes = mp.spawn(worker, args=(init_file, out_dir), nprocs=RANKS,
                                 join=False)
            single = [train(case) for case in CASES]
            starts = [initial_weights(case) for case in CASES]
            _join(processes, deadline=time.time() + JOIN_SECONDS)
            ranks = [np.load(os.path.join(out_dir, f"rank{r}.npy"), allow_pickle=True)
                     for r in range(RANKS)]
    finally:
        torch.set_num_threads(threads)
    records = []
    for case, one, start, first, second in zip(CASES, single, starts, ranks[0][0],
                                               ranks[1][0]):
        records.append({
            "method": case[0],
            "mode": case[1],
            "weights": max_difference(one["weights"], first["weights"]),
            "statistics": max_difference(one["statistics"], first["statistics"]),
            "ranks": max_difference(first["weights"] + first["statistics"],
                                    second["weights"] + second["statistics"]),
            # How far training moved the weights: a difference of 0 between
            # runs means something only if this is not.
            "moved": max_difference(one["weights"], start),
            "single": one["counters"],
            "distributed": [first["counters"], second["counters"]],
            "ddp": [first["ddp"], second["ddp"]],
        })
    return records, [r[1] for r in ranks]


def main():
    records, refused = run()
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
    print(json.dumps({"refusals": refused}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
