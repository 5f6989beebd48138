"""torch data parallel over torch.distributed equals one process.

Two ranks (gloo on CPU, spawned by `torch.multiprocessing`) against one
process, for every method: see tests/torch_distributed_run.py.
"""

import pytest

from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed")

METHODS = ("SAM", "ASAM", "SAM k=2", "SAM every=2", "GSAM", "WSAM coupled", "WSAM decoupled",
           "XSAM α=0.5", "XSAM search", "X-SAM")
CASES = [(m, "global") for m in METHODS] + [
    (m, "replica") for m in METHODS if m not in ("XSAM search", "SAM every=2")
] + [("SAM", "global, partial batch")]


@pytest.fixture(scope="module")
def results():
    from tests import torch_distributed_run

    records, refused = torch_distributed_run.run()
    return {(r["method"], r["mode"]): r for r in records}, refused


def test_every_case_ran(results):
    assert sorted(results[0]) == sorted(CASES)


@pytest.mark.parametrize("method,mode", CASES)
def test_two_ranks_equal_one_process(results, method, mode):
    r = results[0][(method, mode)]
    assert r["moved"] > 1e-3, r  # training changed the weights
    assert r["weights"] <= 1e-6, r
    # BatchNorm's moving statistics: the ranks' mean, as one process's.
    assert r["statistics"] <= 1e-6, r
    assert r["ranks"] == 0.0, r  # the ranks hold identical weights
    iterations, skipped, searches, *refreshes = r["single"]
    assert r["distributed"] == [r["single"]] * 2, r
    assert (iterations, skipped) == (4, 0), r
    if method == "XSAM search":
        assert searches == 2, r  # search_every=2 over 4 steps
    if method == "X-SAM":
        assert refreshes == [1], r  # refresh_every=2: at step 2 of 4


def test_unsupported_setups_are_refused_on_every_rank(results):
    for messages in results[1]:
        assert "perturbation_groups=1" in messages["XSAM search, replica"], messages
        assert "torch.compile" in messages["jit_compile"], messages
