"""Where the time and the memory of keras_sam's SAM step go, against pytorch-optimizer (torch).

    python -m benchmarks.profile_peers                # full run (~15 min on 2 cores)
    python -m benchmarks.profile_peers --quick --skip-memory   # smoke run (~10 s)
    python -m benchmarks.profile_peers --skip-memory  # the time profile only (~2 min)
    KERAS_BACKEND=torch python -m pytest tests/test_benchmarks_peers.py -k profile

The profile that issue #6 asks for next to `peers.py`'s step-time and
peak-memory tables: the same model, batch, weights, steps and peer, built by
`peers.py`'s own builders (`make_data`, `KerasSAMRunner`,
`TorchOptimizerSAMRunner`, `--child=memory`) — imported, not copied. Torch
(the backend where keras_sam was not faster than its peer), plus the JAX
peak RSS split at compilation; pytorch-optimizer must be installed
(`pip install -e ".[benchmarks]"`), optax for the JAX rows.

**Time.** One subprocess, `--threads` (default 1) thread. Both sides are warmed
up, then `--rounds` rounds, each running `--steps` unprofiled steps (the
profiler's own overhead) and `--steps` steps under `torch.profiler` of one
side, then of the other, the order alternating (CPU activity only: with
`record_shapes` or `profile_memory` this step runs 2.4× slower). Every op's
*self* CPU time is attributed to where it ran:

- Keras layer calls and the loss are tagged by wrapping `Layer.__call__` and
  `Loss.__call__` in `torch.profiler.record_function` (in this process only);
  backward ops inherit the tag of the forward op that recorded their autograd
  node (matching sequence numbers): conv forward / backward, BatchNorm forward
  / backward (Keras' torch BatchNorm is a chain of elementwise ops), the other
  layers (ReLU, max-pool, global pool, dense) and the loss, both directions;
- pass plumbing: keras_sam's `value_and_grad` passes outside the layers and
  the loss (detached leaf copies, `stateless_call`'s scope, the RNG replay);
- the inner optimizer's update: Keras `Optimizer.apply` (keras_sam) /
  torch's `Optimizer.step#SGD.step` (the peer);
- the SAM step's own vector math: keras_sam's `ascend` and `_compute_update`
  outside the passes and the inner update (norms, ρ·g/‖g‖,
  θ+e, finiteness checks, diagnostics); pytorch-optimizer's `first_step` /
  `second_step` outside the SGD step (norm, e, θ±e, zero_grad);
- `.grad` accumulation (the peer's `loss.backward()` into `.grad`);
- step bookkeeping: ops outside all of these (keras_sam: reading the values,
  assigning the BatchNorm statistics, loss tracker, diagnostics means, logs;
  the peer: `float(loss)`);
- Python/framework time = wall time of the step minus the self time of all
  ops, split by where it was spent (the self time of the tags: Keras layer
  calls, loss calls, pass plumbing, optimizers, the rest of the step; it
  includes the profiler's own record_function calls).

Reported: per category the median over the rounds of the round's median
step, the difference keras_sam − peer and its range over the rounds; the
unprofiled steps' wall time the same way; then the (category, op) pairs whose
times differ most.

**Memory.** (1) A fresh subprocess per variant (`inner` = SGD alone through
`SAMModel`, `keras_sam SAM`, the peer), as `peers.py --child=memory`: model and
batch built, then `torch.profiler(profile_memory=True)` started, the
optimizer/step built, warm-up + `--memory-steps` steps. Every tensor
allocation and free of the CPU allocator after building is in the profile: the
live tensor bytes over time, their peak (above the built model and data), the
op running at the peak, and the tensors alive at the peak grouped by what
allocated them (pass — clean or perturbed, from the order of the model's calls
in the step —, layer or phase, forward or backward). (2) `peers.py`'s own
peak-RSS cell of the same variants (`--child=memory`, fresh processes, no
profiler), `--rss-repeats` times, with glibc's default malloc and with a fixed
`MALLOC_MMAP_THRESHOLD_` (see `rss_cells`): live tensor bytes against process
RSS. (3) `--phases jax` (default; `tensorflow` possible, `none` for none): the
peak RSS of `peers.py`'s JAX cell split at the first call (tracing and
compilation plus one step) and the steps after it.
"""

import argparse
import collections
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

from benchmarks import common, peers

BACKEND = "torch"
MIB = 1024.0 * 1024.0

TIME_CATEGORIES = (
    "conv forward",
    "conv backward",
    "BatchNorm forward",
    "BatchNorm backward",
    "ReLU, pooling, dense (fwd + bwd)",
    "loss (fwd + bwd)",
    "pass plumbing (leaves, stateless_call, RNG replay)",
    "inner SGD update",
    "SAM vector ops (norm, e, θ±e, checks, diagnostics)",
    ".grad accumulation",
    "step bookkeeping (values, BN/metrics assign, logs)",
)
OVERHEAD = "Python/framework (wall − ops)"
# Its parts: the self time of the tags (time inside a tagged call not spent in ops).
PYTHON_PARTS = {
    "layer": "↳ Keras layer calls (Sequential and its layers)",
    "loss": "↳ loss calls",
    "pass": "↳ pass plumbing",
    "opt": "↳ optimizers (inner update, SAM steps)",
    "step": "↳ rest of the step (train function, logs; the peer's loop)",
}
COPY_OPS = {"aten::copy_", "aten::clone", "aten::_to_copy", "aten::to", "aten::empty",
            "aten::empty_strided", "aten::empty_like", "aten::zeros_like", "aten::zeros",
            "aten::fill_", "aten::zero_", "aten::resize_", "aten::contiguous"}


# ----------------------------------------------------------------------------
# Tags: record_function around layer calls, the loss, the optimizers' phases.
# ----------------------------------------------------------------------------
def _wrap(cls, method, label):
    import torch

    original = getattr(cls, method)
    if getattr(original, "_profile_peers_tag", False):
        return

    @functools.wraps(original)
    def wrapped(self, *args, **kwargs):
        with torch.profiler.record_function(label(self) if callable(label) else label):
            return original(self, *args, **kwargs)

    wrapped._profile_peers_tag = True
    setattr(cls, method, wrapped)


def install_tags():
    """Tags the phases of both steps (this process only)."""
    import pytorch_optimizer
    from keras.src.layers.layer import Layer
    from keras.src.losses.loss import Loss
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    from keras_sam.optimizers.base import SharpnessAwareOptimizer

    _wrap(Layer, "__call__", lambda self: f"layer:{type(self).__name__}")
    _wrap(Loss, "__call__", "tag:loss")
    _wrap(BaseOptimizer, "apply", lambda self: f"tag:apply:{type(self).__name__}")
    for method in ("ascend", "_compute_update"):
        _wrap(SharpnessAwareOptimizer, method, "tag:sam")
    for method in ("first_step", "second_step"):
        _wrap(pytorch_optimizer.SAM, method, "tag:sam")
    # keras_sam's passes (value_and_grad of the step's loss function).
    import torch

    from keras_sam import backend

    value_and_grad = backend.value_and_grad
    if not getattr(value_and_grad, "_profile_peers_tag", False):
        def tagged_value_and_grad(fn):
            inner = value_and_grad(fn)

            def wrapped(params):
                with torch.profiler.record_function("tag:pass"):
                    return inner(params)

            return wrapped

        tagged_value_and_grad._profile_peers_tag = True
        backend.value_and_grad = tagged_value_and_grad


def _is_tag(name):
    return name.startswith(("layer:", "tag:", "step:"))


def _scope_category(tag, backward):
    """The time category of an op run under `tag` (innermost), fwd or bwd."""
    if tag is None:
        return TIME_CATEGORIES[10]
    if tag == "layer:Conv2D":
        return TIME_CATEGORIES[1 if backward else 0]
    if tag == "layer:BatchNormalization":
        return TIME_CATEGORIES[3 if backward else 2]
    if tag.startswith("layer:"):
        return TIME_CATEGORIES[4]
    if tag == "tag:loss":
        return TIME_CATEGORIES[5]
    if tag == "tag:pass":
        return TIME_CATEGORIES[6]
    if tag.startswith("tag:apply:") or tag.startswith("Optimizer.step#"):
        return TIME_CATEGORIES[7]
    if tag == "tag:sam":
        return TIME_CATEGORIES[8]
    if tag == ".grad":
        return TIME_CATEGORIES[9]
    raise AssertionError(tag)


class _Walker:
    """Attributes one profile's op events to (tag, backward, pass) — see the docstring.

    `pass` numbers the calls of the wrapped model (`layer:<model>` outermost
    under a step): 1 = clean pass, 2 = perturbed pass.
    """

    def __init__(self, roots, model_tag):
        self.model_tag = model_tag
        self._pass_count = 0
        self.forward = {}  # sequence number -> (tag, pass) of the forward op
        self.ops = []  # (event, tag, backward, pass, step index)
        self.annotations = []  # (event, PYTHON_PARTS key, step index)
        self.steps = []  # step events
        self.allocations = []  # (time, ptr, size, tag, backward, pass, op name)
        events = sorted(roots, key=lambda e: e.start_time_ns)
        for event in events:
            self._visit(event, tag=None, backward=False, pass_=0, top_op=None)

    def _visit(self, event, tag, backward, pass_, top_op):
        import torch

        kind = event.tag
        if kind == torch._C._profiler._EventType.Allocation:
            fields = event.extra_fields
            self.allocations.append((event.start_time_ns, fields.ptr, fields.alloc_size, tag,
                                     backward, pass_, top_op))
            return
        if kind != torch._C._profiler._EventType.TorchOp:
            return
        name = event.name
        if _is_tag(name) or name.startswith("Optimizer."):
            part = ("step" if name.startswith("step:") else "layer" if name.startswith("layer:")
                    else "loss" if name == "tag:loss" else "pass" if name == "tag:pass"
                    else "opt")
            self.annotations.append((event, part, len(self.steps) - (part != "step")))
        if name.startswith("step:"):
            self.steps.append(event)
            self._pass_count = 0
            tag, backward, pass_ = None, False, 0
        elif _is_tag(name):
            if name == self.model_tag and not backward:
                self._pass_count += 1
                pass_ = self._pass_count
            if not (name == self.model_tag or name.startswith("layer:Sequential")
                    or name.startswith("layer:SAMModel")):
                tag = name
        elif name.startswith("autograd::engine::evaluate_function: "):
            seq = event.extra_fields.sequence_number
            if "AccumulateGrad" in name:
                tag, pass_ = ".grad", pass_
            else:
                tag, pass_ = self.forward.get(seq, (tag, pass_))
            backward = True
            top_op = name.split(": ", 1)[1]
        elif name.startswith("Optimizer.step#"):
            tag = name
        elif name.startswith("Optimizer."):  # torch's zero_grad annotation: no op
            pass
        else:
            if top_op is None:
                top_op = name
                seq = event.extra_fields.sequence_number
                if not backward and seq >= 0:
                    self.forward[seq] = (tag, pass_)
            self.ops.append((event, tag, backward, pass_, len(self.steps) - 1))
        for child in sorted(event.children, key=lambda e: e.start_time_ns):
            self._visit(child, tag, backward, pass_, top_op)


def _self_ns(event):
    import torch

    op = torch._C._profiler._EventType.TorchOp
    return event.duration_time_ns - sum(
        c.duration_time_ns for c in event.children if c.tag == op
    )


def attribute_time(roots, model_tag):
    """Per profiled step: {category: ms}, and {(category, op): ms}."""
    walker = _Walker(roots, model_tag)
    per_step = [collections.Counter() for _ in walker.steps]
    per_op = [collections.Counter() for _ in walker.steps]
    for event, tag, backward, _, step in walker.ops:
        if step < 0:
            continue
        ms = _self_ns(event) / 1e6
        category = _scope_category(tag, backward)
        per_step[step][category] += ms
        per_op[step][(category, event.name)] += ms
    for event, part, step in walker.annotations:
        if step >= 0:
            per_step[step][PYTHON_PARTS[part]] += _self_ns(event) / 1e6
    for step, event in enumerate(walker.steps):
        wall = event.duration_time_ns / 1e6
        per_step[step][OVERHEAD] = wall - sum(
            v for k, v in per_step[step].items() if k in TIME_CATEGORIES
        )
        per_step[step]["wall"] = wall
    return per_step, per_op


# ----------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------
def _profile_steps(runner, label, steps):
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function(f"step:{label}"):
                runner.step()
    return prof.profiler.kineto_results.experimental_event_tree()


def _model_tag(runner):
    model = getattr(runner, "inner_model", None) or runner.model
    return f"layer:{type(model).__name__}"


def child_time(args):
    import warnings

    warnings.filterwarnings("ignore")
    common.configure_threads(BACKEND, args.threads)
    import keras

    install_tags()
    init_weights, batch, _ = peers.make_data(keras, args.batch_size)
    runners = {
        "keras_sam": peers.KerasSAMRunner(BACKEND, False, keras, batch, init_weights),
        "peer": peers.build_peer(BACKEND, False, keras, batch, init_weights),
    }
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    names = list(runners)
    out = {name: {"steps": [], "ops": [], "unprofiled_ms": []} for name in names}
    with common.ForeignLoad() as foreign:
        for round_ in range(args.rounds):
            shift = round_ % 2
            for name in names[shift:] + names[:shift]:
                runner = runners[name]
                for _ in range(args.steps):  # the profiler's overhead: plain steps
                    start = time.perf_counter()
                    runner.step()
                    out[name]["unprofiled_ms"].append(1000 * (time.perf_counter() - start))
                roots = _profile_steps(runner, name, args.steps)
                per_step, per_op = attribute_time(roots, _model_tag(runner))
                out[name]["steps"] += [dict(s) for s in per_step]
                out[name]["ops"] += [
                    [[c, o, ms] for (c, o), ms in s.items()] for s in per_op
                ]
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    out["foreign_load"] = foreign.cores
    out["rounds"] = args.rounds
    print(peers.MARKER + json.dumps(out), flush=True)


def child_memory(args):
    """peers.child_memory's protocol, under profile_memory: the live tensor bytes."""
    import warnings

    warnings.filterwarnings("ignore")
    common.configure_threads(BACKEND, args.threads)
    import keras
    from torch.profiler import ProfilerActivity, profile, record_function

    install_tags()
    init_weights, batch, _ = peers.make_data(keras, args.batch_size)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if args.variant == "peer":
            runner = peers.build_peer(BACKEND, False, keras, batch, init_weights)
        else:
            runner = peers.KerasSAMRunner(BACKEND, False, keras, batch, init_weights,
                                          sam=args.variant == "sam")
        for i in range(args.warmup + args.memory_steps):
            with record_function(f"step:{i}"):
                runner.step()
    walker = _Walker(prof.profiler.kineto_results.experimental_event_tree(), _model_tag(runner))
    allocations = sorted(walker.allocations, key=lambda a: a[0])
    live, total, peak, peak_at = {}, 0, 0, None
    for i, (t, ptr, size, *_) in enumerate(allocations):
        if size > 0:
            live[ptr] = i
        elif ptr in live:
            del live[ptr]
        else:
            continue  # allocated before profiling: not counted
        total += size
        if total > peak:
            peak, peak_at, peak_live = total, t, dict(live)
    # What runs at the peak: the innermost op event containing it.
    running = [op for op in walker.ops if op[0].start_time_ns <= peak_at <= op[0].end_time_ns]
    if running:
        event, tag, backward, pass_, _ = min(running, key=lambda op: op[0].duration_time_ns)
        running = f"`{event.name}` ({_memory_scope(tag, backward)}, {_pass_label(pass_)})"
    else:
        running = "?"
    groups = collections.Counter()
    for index in peak_live.values():
        _, _, size, tag, backward, pass_, top_op = allocations[index]
        groups[json.dumps([_pass_label(pass_), _memory_scope(tag, backward), top_op or "?"])] \
            += size
    steps = {e.name: (e.start_time_ns, e.end_time_ns) for e in walker.steps}
    print(peers.MARKER + json.dumps({
        "variant": args.variant, "peak_mib": peak / MIB, "running_at_peak": running,
        "peak_step": next((n for n, (a, b) in steps.items() if a <= peak_at <= b), "build"),
        "groups": [[*json.loads(k), v / MIB] for k, v in groups.most_common()],
        "tensors_at_peak": len(peak_live),
    }), flush=True)


def child_phases(args):
    """JAX/TensorFlow: peers.child_memory's cell split at the first (compiling) call.

    Peak RSS above the built model and data during the first call (tracing,
    compilation, one step), the RSS kept after it, then — the peak reset — the
    peak of the next `--memory-steps` steps above that: execution alone.
    """
    backend = os.environ["KERAS_BACKEND"]
    common.configure_threads(backend, args.threads)
    import resource

    import keras

    init_weights, batch, _ = peers.make_data(keras, args.batch_size)
    import gc

    gc.collect()
    rss_built = peers._rss_kib()
    reset = peers._reset_peak()
    jit = args.jit == "1"
    if args.variant == "peer":
        runner = peers.build_peer(backend, jit, keras, batch, init_weights)
    else:
        runner = peers.KerasSAMRunner(backend, jit, keras, batch, init_weights,
                                      sam=args.variant == "sam")
    runner.step()
    first_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gc.collect()
    rss_after_first = peers._rss_kib()
    reset = peers._reset_peak() and reset
    for _ in range(args.memory_steps):
        runner.step()
    steps_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peers.MARKER + json.dumps({
        "variant": args.variant, "peak_reset": reset,
        "first_call_peak_mib": (first_peak - rss_built) / 1024.0,
        "kept_after_first_mib": (rss_after_first - rss_built) / 1024.0,
        "steps_peak_over_kept_mib": (steps_peak - rss_after_first) / 1024.0,
    }), flush=True)


def _pass_label(pass_):
    return {0: "outside the passes", 1: "clean pass", 2: "perturbed pass"}.get(
        pass_, f"pass {pass_}"
    )


def _memory_scope(tag, backward):
    if tag is None:
        return "step (outside layers)"
    if tag.startswith("layer:"):
        return f"{tag[6:]} {'backward' if backward else 'forward'}"
    if tag == "tag:loss":
        return f"loss {'backward' if backward else 'forward'}"
    if tag.startswith(("tag:apply:", "Optimizer.step#")):
        return "inner optimizer"
    if tag == "tag:pass":
        return "pass plumbing"
    if tag == "tag:sam":
        return "SAM vector ops"
    return tag


# ----------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------
def _child(args, *extra):
    return peers._run(
        [sys.executable, "-m", __spec__.name, *extra,
         f"--steps={args.steps}", f"--rounds={args.rounds}", f"--warmup={args.warmup}",
         f"--batch-size={args.batch_size}", f"--threads={args.threads}",
         f"--memory-steps={args.memory_steps}"],
        BACKEND, args,
    )


def _median(values):
    return statistics.median(values) if values else 0.0


def format_time(result):
    ours, peer = result["keras_sam"], result["peer"]
    rounds = result["rounds"]

    def by_round(side, key):
        per = len(side["steps"]) // rounds
        return [statistics.median(s.get(key, 0.0) for s in side["steps"][r * per:(r + 1) * per])
                for r in range(rounds)]

    lines = ["| category | keras_sam ms/step | peer ms/step | keras_sam − peer | "
             "range over rounds |", "|---|---:|---:|---:|---:|"]
    rows = list(TIME_CATEGORIES) + [OVERHEAD, *PYTHON_PARTS.values(), "wall"]
    for key in rows:
        a, b = by_round(ours, key), by_round(peer, key)
        diffs = [x - y for x, y in zip(a, b)]
        label = "**wall (profiled step)**" if key == "wall" else key
        lines.append(f"| {label} | {_median(a):.1f} | {_median(b):.1f} | "
                     f"{_median(diffs):+.1f} | {min(diffs):+.1f} … {max(diffs):+.1f} |")
    ops_in = list(TIME_CATEGORIES)
    a = [sum(s.get(k, 0.0) for k in ops_in) for s in ours["steps"]]
    b = [sum(s.get(k, 0.0) for k in ops_in) for s in peer["steps"]]
    lines.append(f"| all ops (sum of the categories above {OVERHEAD.split(' ')[0]}) | "
                 f"{_median(a):.1f} | {_median(b):.1f} | {_median(a) - _median(b):+.1f} | |")
    def unprofiled(side):
        per = len(side["unprofiled_ms"]) // rounds
        return [statistics.median(side["unprofiled_ms"][r * per:(r + 1) * per])
                for r in range(rounds)]

    a, b = unprofiled(ours), unprofiled(peer)
    diffs = [x - y for x, y in zip(a, b)]
    lines.append(f"| wall, unprofiled steps (same rounds) | {_median(a):.1f} | "
                 f"{_median(b):.1f} | {_median(diffs):+.1f} | "
                 f"{min(diffs):+.1f} … {max(diffs):+.1f} |")
    return "\n".join(lines)


def format_ops(result, top=14):
    """The (category, op) pairs whose median ms/step differ most."""
    def medians(side):
        steps = side["ops"]
        keys = {(c, o) for s in steps for c, o, _ in s}
        table = {}
        for key in keys:
            values = []
            for s in steps:
                values.append(sum(ms for c, o, ms in s if (c, o) == key))
            table[key] = _median(values)
        return table

    ours, peer = medians(result["keras_sam"]), medians(result["peer"])
    keys = sorted(set(ours) | set(peer),
                  key=lambda k: -abs(ours.get(k, 0.0) - peer.get(k, 0.0)))[:top]
    lines = ["| category | op | keras_sam ms/step | peer ms/step | keras_sam − peer |",
             "|---|---|---:|---:|---:|"]
    for key in keys:
        a, b = ours.get(key, 0.0), peer.get(key, 0.0)
        lines.append(f"| {key[0]} | `{key[1]}` | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    copies = [sum(ms for c, o, ms in s if o in COPY_OPS) for s in result["keras_sam"]["ops"]]
    copies_peer = [sum(ms for c, o, ms in s if o in COPY_OPS) for s in result["peer"]["ops"]]
    lines.append(f"| (all categories) | copies and allocations ({', '.join(sorted(COPY_OPS)[:3])}"
                 f", …) | {_median(copies):.1f} | {_median(copies_peer):.1f} | "
                 f"{_median(copies) - _median(copies_peer):+.1f} |")
    return "\n".join(lines)


def _rss_cell(values):
    values = sorted(v for v in values if v == v)
    if not values:
        return "error"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({values[0]:.0f}–{values[-1]:.0f})"


def format_memory(memory, rss):
    lines = ["| variant | live tensors at peak MiB | running at the peak | in step | "
             "peak RSS MiB, glibc default | peak RSS MiB, fixed mmap threshold |",
             "|---|---:|---|---|---:|---:|"]
    for variant in peers.MEMORY_VARIANTS:
        r = memory.get(variant, {})
        cells = [_rss_cell(rss.get(s, {}).get(variant, [])) for s in ("default", "fixed")]
        label = {"inner": "inner SGD (SAMModel)", "sam": "keras_sam SAM",
                 "peer": "pytorch_optimizer.SAM"}[variant]
        if "error" in r:
            lines.append(f"| {label} | error | | | {cells[0]} | {cells[1]} |")
            continue
        lines.append(f"| {label} | {r['peak_mib']:.1f} | {r['running_at_peak']} | "
                     f"{r['peak_step']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def format_groups(memory, min_mib=0.1):
    """Tensors alive at each variant's peak, grouped by who allocated them."""
    variants = [v for v in ("sam", "peer") if "groups" in memory.get(v, {})]
    table = collections.defaultdict(dict)
    for variant in variants:
        for pass_, scope, op, mib in memory[variant]["groups"]:
            table[(pass_, scope, op)][variant] = mib
    keys = sorted(table, key=lambda k: -max(table[k].values()))
    lines = ["| pass | allocated in | op | keras_sam MiB | peer MiB |",
             "|---|---|---|---:|---:|"]
    small = collections.Counter()
    for key in keys:
        values = table[key]
        if max(values.values()) < min_mib:
            for v in variants:
                small[v] += values.get(v, 0.0)
            continue
        lines.append(f"| {key[0]} | {key[1]} | `{key[2]}` | {values.get('sam', 0.0):.1f} | "
                     f"{values.get('peer', 0.0):.1f} |")
    lines.append(f"| (smaller groups, < {min_mib} MiB each) | | | {small['sam']:.1f} | "
                 f"{small['peer']:.1f} |")
    lines.append("| **total live at peak** | | | " + " | ".join(
        f"**{memory[v]['peak_mib']:.1f}**" if v in variants else "—" for v in ("sam", "peer")
    ) + " |")
    return "\n".join(lines)


def rss_cells(args):
    """peers.py's peak-RSS cell (`--child=memory`, fresh process, no profiler), repeated,
    with glibc's default malloc and with a fixed mmap threshold.

    glibc raises its mmap threshold dynamically (up to 32 MiB) once a large
    block is freed, after which large tensors come from the heap and freed ones
    are kept by the process: the peak RSS then depends on the order of
    allocations, not only on the live bytes. `MALLOC_MMAP_THRESHOLD_` fixes the
    threshold (and turns the dynamic rule off): every tensor above it is its
    own mapping, returned to the system when freed.
    """
    rss_args = argparse.Namespace(**vars(args))
    rss_args.threads = args.rss_threads
    settings = {"default": None, "fixed": str(args.mmap_threshold)}
    out = {}
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    try:
        for setting, value in settings.items():
            if value is None:
                os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
            else:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = value
            for repeat in range(args.rss_repeats):
                for variant in peers.MEMORY_VARIANTS:
                    r = peers._run(
                        [sys.executable, "-m", peers.__spec__.name, "--child=memory",
                         f"--variant={variant}", "--jit=0", *peers._common_args(rss_args)],
                        BACKEND, rss_args,
                    )
                    out.setdefault(setting, {}).setdefault(variant, []).append(
                        r.get("extra_mib", float("nan"))
                    )
                    print(f"[torch] RSS {setting} malloc {variant} #{repeat + 1}: "
                          f"{r.get('extra_mib', r.get('error'))}", file=sys.stderr, flush=True)
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return out


def phase_cells(args):
    """{(backend, jit label): {variant: child_phases result}}, fresh processes."""
    phase_args = argparse.Namespace(**vars(args))
    phase_args.threads = args.rss_threads
    out = {}
    for backend in args.phases:
        for jit in common.JIT_MODES[backend]:
            label = common.JIT_LABELS[(backend, jit)]
            for variant in peers.MEMORY_VARIANTS:
                if variant == "peer" and peers._peer_missing(backend):
                    continue
                r = peers._run(
                    [sys.executable, "-m", __spec__.name, "--child=phases",
                     f"--variant={variant}", f"--jit={int(jit)}",
                     f"--batch-size={args.batch_size}", f"--threads={phase_args.threads}",
                     f"--memory-steps={args.memory_steps}"],
                    backend, phase_args,
                )
                out.setdefault((backend, label), {})[variant] = r
                print(f"[{backend}] RSS phases {label} {variant}: {r}", file=sys.stderr,
                      flush=True)
    return out


def format_phases(phases):
    lines = ["| backend | jit | variant | peak during the first call | kept after it | "
             "peak of the next steps above that |", "|---|---|---|---:|---:|---:|"]
    names = {"inner": "inner SGD", "sam": "keras_sam SAM", "peer": "peer"}
    for (backend, label), variants in phases.items():
        for variant, r in variants.items():
            if "error" in r:
                lines.append(f"| {backend} | {label} | {names[variant]} | error | | |")
                continue
            lines.append(
                f"| {backend} | {label} | {names[variant]} | {r['first_call_peak_mib']:.1f} | "
                f"{r['kept_after_first_mib']:.1f} | {r['steps_peak_over_kept_mib']:.1f} |"
            )
    return "\n".join(lines)


def parent_main(args):
    missing = peers._peer_missing(BACKEND)
    if missing:
        print(f"profile_peers: {missing}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    load_before = common.load_average()
    print("[torch] time profile ...", file=sys.stderr, flush=True)
    timing = _child(args, "--child=time")
    memory, rss = {}, {}
    if not args.skip_memory:
        for variant in peers.MEMORY_VARIANTS:
            print(f"[torch] memory profile {variant} ...", file=sys.stderr, flush=True)
            memory[variant] = _child(args, "--child=memory", f"--variant={variant}")
        rss = rss_cells(args)
    phases = phase_cells(args) if not args.skip_memory else {}
    total = time.perf_counter() - start
    versions = (
        f"keras {common.package_version('keras')}, torch {common.package_version('torch')}, "
        f"pytorch-optimizer {common.package_version('pytorch-optimizer', 'pytorch_optimizer')}, "
        f"keras_sam {common.package_version('keras-sam', 'keras_sam')}, Python {platform.python_version()}"
    )
    print(f"## Profile: keras_sam SAM vs pytorch_optimizer.SAM on torch"
          f"{' (quick)' if args.quick else ''}")
    print()
    print(f"- command: `{common.command_line()}`")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- versions: {versions}")
    print(f"- machine: {os.cpu_count()} cores ({common.cpu_model()}), {args.threads} torch "
          f"thread(s); load average (1/5/15 min) {load_before} before, {common.load_average()} after")
    print(f"- model: peers.py's (CIFAR-style CNN), batch {args.batch_size}; SAM ρ = "
          f"{peers.RHO} around SGD({peers.LR}, momentum={peers.MOMENTUM}) on both sides")
    print()
    print("### Time: self CPU time per step by category (torch.profiler)")
    print()
    if "error" in timing:
        print(f"error: {timing['error']}")
        ok = False
    else:
        ok = True
        load = timing.get("foreign_load")
        print(
            f"{args.warmup} warm-up steps per side, then {args.rounds} rounds × "
            f"{args.steps} profiled steps per side (order alternating), medians over the "
            "rounds of each round's median step; range = min … max over the rounds of the "
            "difference. Other load while profiling: "
            + ("n/a" if load is None else f"{load:.2f} cores") + "."
        )
        print()
        print(format_time(timing))
        print()
        print("Largest differences by op (median ms/step over all profiled steps):")
        print()
        print(format_ops(timing))
    if memory:
        print()
        print("### Memory: live tensor bytes at the peak (torch.profiler profile_memory)")
        print()
        print(f"A fresh process per variant; model and batch built, then the profiler "
              f"started, the optimizer/step built, {args.warmup} warm-up + "
              f"{args.memory_steps} steps. Live tensor bytes = the CPU allocator's "
              "allocations minus frees after building; peak RSS = `peers.py`'s "
              f"measurement of the same cell (`--child=memory`, {args.rss_threads} thread(s) as in "
              f"`benchmarks/results/peers.md`, a fresh process each, no profiler), median "
              f"(min–max) of {args.rss_repeats} run(s), with glibc's default malloc and with "
              f"`MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}` (fixed: every block above it "
              "is its own mapping, unmapped when freed).")
        print()
        print(format_memory(memory, rss))
        print()
        print("Tensors alive at the peak, by what allocated them:")
        print()
        print(format_groups(memory))
        for variant, r in memory.items():
            if "error" in r:
                ok = False
                print(f"- {variant}: {r['error']}")
    if phases:
        print()
        print("### Peak RSS split at the first (compiling) call: MiB")
        print()
        print(f"A fresh process per cell, {args.rss_threads} thread(s), batch "
              f"{args.batch_size}: model and batch built, peak RSS reset; the optimizer/step "
              "built and called once (tracing, compilation, one step): its peak and the RSS "
              f"kept after it, above the built state; peak reset again, {args.memory_steps} "
              "more steps: their peak above the RSS kept after the first call.")
        print()
        print(format_phases(phases))
    print()
    print(f"total {total:.0f} s")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 16, 1 round of 1 step, 1 memory step")
    parser.add_argument("--rounds", type=int, help="profiled rounds per side")
    parser.add_argument("--steps", type=int, help="profiled steps per side and round")
    parser.add_argument("--warmup", type=int, help="untimed steps per side first")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--memory-steps", type=int, help="steps after warm-up, memory runs")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rss-repeats", type=int, help="peak-RSS runs per variant and malloc")
    parser.add_argument("--rss-threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the peak-RSS runs (default: all cores, as peers.py)")
    parser.add_argument("--mmap-threshold", type=int, default=131072,
                        help="MALLOC_MMAP_THRESHOLD_ of the fixed-threshold RSS runs")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--verbose", action="store_true", help="show child stderr")
    parser.add_argument("--phases", default="jax",
                        help="backends (jax, tensorflow; comma-separated, or 'none') whose "
                        "peak RSS is split at the first, compiling call")
    parser.add_argument("--child", choices=("time", "memory", "phases"), help=argparse.SUPPRESS)
    parser.add_argument("--jit", choices=("0", "1"), default="1", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=peers.MEMORY_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"rounds": 2 if quick else 10, "steps": 1 if quick else 3,
                "warmup": 2 if quick else 3, "batch_size": 16 if quick else 128,
                "memory_steps": 1 if quick else 10,
                "rss_repeats": 1 if quick else 3, "timeout": 180 if quick else 1800}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("rounds", "steps", "warmup", "batch_size", "threads", "memory_steps",
                "rss_repeats", "rss_threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    args.phases = [b.strip() for b in args.phases.split(",")
                   if b.strip() and b.strip() != "none"]
    for backend in args.phases:
        if backend not in ("jax", "tensorflow"):
            parser.error(f"--phases: jax or tensorflow, not {backend!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child == "time":
        child_time(args)
        return 0
    if args.child == "memory":
        child_memory(args)
        return 0
    if args.child == "phases":
        child_phases(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
