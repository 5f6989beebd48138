"""The benchmarks, run as modules from the repository root:

    python -m benchmarks.step_time --quick

What each measures and what it found: benchmarks/README.md. Shared helpers:
`benchmarks.common`.
"""
