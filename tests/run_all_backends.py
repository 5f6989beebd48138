"""Runs the test suite once per Keras backend and prints one combined summary.

The backend is fixed when Keras is imported, so each backend gets its own
pytest process. Usage: `python tests/run_all_backends.py [pytest args]`.
pytest's output is passed through as it comes (progress, then the reasons of
skipped tests, `-rs`); the last line sums the three runs.
"""

import os
import re
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def run_streaming(command, env):
    """Runs `command`, copying its output to ours as it arrives; returns (exit code, output)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks = []
    while chunk := os.read(process.stdout.fileno(), 4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        chunks.append(chunk)
    process.stdout.close()
    return process.wait(), b"".join(chunks).decode(errors="replace")


def main(args):
    totals, failed_backends = {}, []
    for backend in BACKENDS:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        start = time.time()
        returncode, output = run_streaming(
            [sys.executable, "-m", "pytest", "-q", "-rs", *args], env=dict(env, PYTHONUNBUFFERED="1")
        )
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        for count, kind in COUNTS.findall(summary):
            kind = "errors" if kind.startswith("error") else kind
            totals[kind] = totals.get(kind, 0) + int(count)
        print(f"=== {backend}: exit {returncode} in {time.time() - start:.0f} s", flush=True)
        if returncode != 0:
            failed_backends.append(backend)
    failed = totals.get("failed", 0) + totals.get("errors", 0)
    if failed_backends and not failed:
        failed = len(failed_backends)  # a crash without a pytest summary
    line = f"{totals.get('passed', 0)} passed, {failed} failed"
    if totals.get("skipped"):
        line += f", {totals['skipped']} skipped"
    print("\nall backends: " + line)
    return 1 if failed_backends else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
