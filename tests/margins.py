"""Asserts on a numeric outcome (of a few training steps, a warp, a draw) against a bound, with the
margin by which it passed on record.

A test's margin is |observed - bound| / |bound|. A verdict decided by a fraction of a per cent flips
on another CPU, BLAS or torch build, so every such assert goes through `assert_below` or
`assert_above`: they fail with both numbers in the message, and when the environment variable
BENCH_MARGIN_LOG names a file they append one JSON line per call (test, what, observed, bound,
margin, threads), which benchmarks/test_margins.py gathers at 1 and 2 threads into one table.
"""

from __future__ import annotations

import json
import math
import os


def assert_below(observed, bound, what: str, detail=None) -> None:
    """Assert observed < bound (`detail`, e.g. the loss curve, goes into the failure message)."""
    observed, bound = float(observed), float(bound)
    _log(observed, bound, what, passed := observed < bound)
    assert passed, _message(observed, "<", bound, what, detail)


def assert_above(observed, bound, what: str, detail=None) -> None:
    """Assert observed > bound (`detail`, e.g. the loss curve, goes into the failure message)."""
    observed, bound = float(observed), float(bound)
    _log(observed, bound, what, passed := observed > bound)
    assert passed, _message(observed, ">", bound, what, detail)


def margin(observed: float, bound: float) -> float:
    """|observed - bound| / |bound| (infinite for a bound of 0: any non-zero distance is decisive)."""
    return abs(observed - bound) / abs(bound) if bound else (math.inf if observed != bound else 0.0)


def _message(observed, sign, bound, what, detail) -> str:
    text = f"{what}: expected {observed:.6g} {sign} {bound:.6g} (missed by {100 * margin(observed, bound):.2f} % of it)"
    return text if detail is None else f"{text}; {detail}"


def _log(observed: float, bound: float, what: str, passed: bool) -> None:
    path = os.environ.get("BENCH_MARGIN_LOG")
    if not path:
        return
    import torch

    m = margin(observed, bound)
    row = {"test": os.environ.get("PYTEST_CURRENT_TEST"), "what": what, "observed": observed, "bound": bound,
           "margin": m if math.isfinite(m) else None, "passed": passed, "threads": torch.get_num_threads()}
    # One write of one line in append mode: whole lines even if several processes share the file.
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
