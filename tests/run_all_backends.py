"""Runs the test suite once per Keras backend and prints one combined summary.

The backend is fixed when Keras is imported, so each backend gets its own
pytest process. Usage: `python tests/run_all_backends.py [pytest args]`;
`--backends=jax,tensorflow` (first) runs those backends only.
"""

import os
import re
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def main(args):
    backends = BACKENDS
    if args and args[0].startswith("--backends="):
        backends = tuple(args[0].split("=", 1)[1].split(","))
        args = args[1:]
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    totals, failed_backends = {}, []
    for backend in backends:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        start = time.time()
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        sys.stdout.write(process.stdout)
        summary = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else ""
        for count, kind in COUNTS.findall(summary):
            kind = "errors" if kind.startswith("error") else kind
            totals[kind] = totals.get(kind, 0) + int(count)
        print(f"=== {backend}: exit {process.returncode} in {time.time() - start:.0f} s", flush=True)
        if process.returncode != 0:
            failed_backends.append(backend)
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
