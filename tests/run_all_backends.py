"""Runs the test suite once per Keras backend and prints one combined summary.

The backend is fixed when Keras is imported, so each backend gets its own
pytest process. Usage: `python tests/run_all_backends.py [options] [pytest args]`.
The backends' processes run side by side (most tests use one core, and CI has
two): the first backend's output is passed through as it comes (progress,
then the reasons of skipped tests, `-rs`), the others' when they end. A
backend's pytest still running after DEADLINE seconds is stopped, its
threads' stacks printed, and counted as failed. Side by side, each process's
torch gets its share of the CPUs (`_thread_limits`).
Options, first and in this order: `--backends=jax,tensorflow` runs those
backends only; `--sequential` runs one backend at a time, each streamed.
The last line sums the runs.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

BACKENDS = ("tensorflow", "jax", "torch")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
# A backend's pytest still running after this many seconds is stopped (its
# threads' stacks printed first) and counted as failed: a hang fails the run
# with a diagnosis instead of running into CI's own limit.
DEADLINE = 60 * 60


def _stacks_file(backend):
    return os.path.join(tempfile.gettempdir(), f"keras_sam_stacks_{os.getpid()}_{backend}.txt")


def _thread_limits(processes):
    """Environment that gives torch's OpenMP pool (and NumPy's BLAS) of each of
    `processes` side-by-side pytest processes its share of the CPUs: OpenMP
    threads spin while they wait, and several pools over two cores wait on each
    other. TensorFlow's and XLA's pools keep their defaults (limited to one
    thread each, the suite took longer)."""
    return {"OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // processes))}


def _start(backend, args, output, side_by_side=1):
    env = dict(
        os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
        KERAS_SAM_STACKS_FILE=_stacks_file(backend),
    )
    if side_by_side > 1:
        env.update({k: v for k, v in _thread_limits(side_by_side).items() if k not in os.environ})
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-rs", *args],
        env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _copy_to_stdout(source, log):
    """Copies `source` (a pipe) to our stdout and to `log` until it closes."""
    while chunk := os.read(source.fileno(), 4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        log.write(chunk)
    source.close()


def _wait(backend, process, deadline_at):
    """Waits for `process`; past the deadline, prints the stacks of its threads
    (tests/conftest.py registers SIGUSR1) and kills its process group."""
    try:
        process.wait(timeout=max(0.0, deadline_at - time.time()))
        return
    except subprocess.TimeoutExpired:
        pass
    print(f"\n=== {backend}: still running after {DEADLINE} s: stopped; its stacks:", flush=True)
    os.killpg(process.pid, signal.SIGUSR1)
    time.sleep(5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with open(_stacks_file(backend)) as stacks:
        print(stacks.read(), flush=True)


def _finish(backend, process, log, start, totals, streamed=None):
    """Waits for one backend's pytest, prints its output (unless `streamed`, a
    thread copying it live) and adds its counts to `totals`. Returns the exit code."""
    _wait(backend, process, start + DEADLINE)
    if os.path.exists(_stacks_file(backend)):
        os.remove(_stacks_file(backend))
    if streamed is not None:
        streamed.join()
    log.seek(0)
    output = log.read().decode(errors="replace")
    if streamed is None:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        sys.stdout.write(output)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = COUNTS.findall(summary)
    for count, kind in counts:
        kind = "errors" if kind.startswith("error") else kind
        totals[kind] = totals.get(kind, 0) + int(count)
    listed = ", ".join(f"{count} {kind}" for count, kind in counts) or "no pytest summary"
    print(f"=== {backend}: exit {process.returncode} after {time.time() - start:.0f} s"
          f" ({listed})", flush=True)
    return process.returncode


def _run_streamed(backend, args, side_by_side=1):
    """One backend's pytest, its output passed through as it comes."""
    print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
    start, log = time.time(), tempfile.TemporaryFile()
    process = _start(backend, args, subprocess.PIPE, side_by_side)
    copier = threading.Thread(target=_copy_to_stdout, args=(process.stdout, log))
    copier.start()
    return process, log, start, copier


def _run(backends, args, sequential):
    totals, codes = {}, {}
    if sequential:
        for backend in backends:
            process, log, start, copier = _run_streamed(backend, args)
            codes[backend] = _finish(backend, process, log, start, totals, copier)
        return totals, codes
    first, *others = backends
    logs = {backend: tempfile.TemporaryFile() for backend in others}
    count = len(backends)
    processes = {backend: _start(backend, args, logs[backend], count) for backend in others}
    process, log, start, copier = _run_streamed(first, args, count)
    codes[first] = _finish(first, process, log, start, totals, copier)
    for backend in others:
        codes[backend] = _finish(backend, processes[backend], logs[backend], start, totals)
    return totals, codes


def main(args):
    backends = BACKENDS
    if args and args[0].startswith("--backends="):
        backends = tuple(args[0].split("=", 1)[1].split(","))
        args = args[1:]
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    sequential = bool(args) and args[0] == "--sequential"
    if sequential or (args and args[0] == "--parallel"):  # --parallel: the default
        args = args[1:]
    totals, codes = _run(backends, args, sequential)
    failed_backends = [backend for backend, code in codes.items() if code != 0]
    failed = totals.get("failed", 0) + totals.get("errors", 0)
    if failed_backends and not failed:
        failed = len(failed_backends)  # a crash without a pytest summary
    line = f"{totals.get('passed', 0)} passed, {failed} failed"
    if totals.get("skipped"):
        line += f", {totals['skipped']} skipped"
    label = "all backends" if backends == BACKENDS else ",".join(backends)
    print(f"\n{label}: " + line)
    return 1 if failed_backends else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
