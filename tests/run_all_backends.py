"""Runs the test suite once per Keras backend and prints one combined summary.

The backend is fixed when Keras is imported, so each backend gets its own
pytest process. Usage: `python tests/run_all_backends.py [pytest args]`;
`--backends=jax,tensorflow` runs those backends only; `--parallel` runs the
backends' processes side by side (options first, in this order). One backend
at a time, pytest's output is passed through as it comes (progress, then the
reasons of skipped tests, `-rs`); side by side, each backend's output is
printed when it ends. The last line sums the runs.
"""

import os
import re
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _start(backend, args):
    env = dict(
        os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-rs", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _output(process, stream):
    """The process' whole output; copied to ours as it arrives if `stream`."""
    chunks = []
    while chunk := os.read(process.stdout.fileno(), 4096):
        if stream:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        chunks.append(chunk)
    process.stdout.close()
    process.wait()
    return b"".join(chunks).decode(errors="replace")


def _finish(backend, process, start, totals, stream):
    """Waits for one backend's pytest; its counts go into `totals`. Returns
    the exit code."""
    if stream:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
    output = _output(process, stream)
    if not stream:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        sys.stdout.write(output)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = COUNTS.findall(summary)
    for count, kind in counts:
        kind = "errors" if kind.startswith("error") else kind
        totals[kind] = totals.get(kind, 0) + int(count)
    listed = ", ".join(f"{count} {kind}" for count, kind in counts) or "no pytest summary"
    print(f"=== {backend}: exit {process.returncode} in {time.time() - start:.0f} s"
          f" ({listed})", flush=True)
    return process.returncode


def main(args):
    backends = BACKENDS
    if args and args[0].startswith("--backends="):
        backends = tuple(args[0].split("=", 1)[1].split(","))
        args = args[1:]
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    parallel = bool(args) and args[0] == "--parallel"
    if parallel:
        args = args[1:]
    totals = {}
    if parallel:
        start = time.time()
        processes = {backend: _start(backend, args) for backend in backends}
        codes = {b: _finish(b, p, start, totals, False) for b, p in processes.items()}
    else:
        codes = {}
        for backend in backends:
            start = time.time()
            codes[backend] = _finish(backend, _start(backend, args), start, totals, True)
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
