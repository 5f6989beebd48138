"""Runs the test suite once per Keras backend and prints one combined summary.

The backend is fixed when Keras is imported, so each backend gets its own
pytest process. Usage: `python tests/run_all_backends.py [options] [pytest args]`.
The backends' processes run side by side (most tests use one core, and CI has
two): the first backend's output is passed through as it comes (progress,
then the reasons of skipped tests, `-rs`), the others' when they end.
Options, first and in this order: `--backends=jax,tensorflow` runs those
backends only; `--sequential` runs one backend at a time, each streamed.
The last line sums the runs.
"""

import os
import re
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _start(backend, args, output):
    env = dict(
        os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-rs", *args],
        env=env, stdout=output, stderr=subprocess.STDOUT,
    )


def _streamed(process):
    """The process' whole output, copied to ours as it arrives."""
    chunks = []
    while chunk := os.read(process.stdout.fileno(), 4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        chunks.append(chunk)
    process.stdout.close()
    process.wait()
    return b"".join(chunks).decode(errors="replace")


def _finish(backend, process, start, totals, log=None):
    """Waits for one backend's pytest (streamed live, or printed from `log`
    when it ends); its counts go into `totals`. Returns the exit code."""
    print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
    if log is None:
        output = _streamed(process)
    else:
        process.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
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


def _run(backends, args, sequential):
    totals, codes = {}, {}
    if sequential:
        for backend in backends:
            start = time.time()
            codes[backend] = _finish(backend, _start(backend, args, subprocess.PIPE), start, totals)
        return totals, codes
    start = time.time()
    first, *others = backends
    logs = {backend: tempfile.TemporaryFile() for backend in others}
    processes = {backend: _start(backend, args, logs[backend]) for backend in others}
    codes[first] = _finish(first, _start(first, args, subprocess.PIPE), start, totals)
    for backend in others:
        codes[backend] = _finish(backend, processes[backend], start, totals, logs[backend])
        logs[backend].close()
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
