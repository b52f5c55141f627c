"""Progress bars that stay readable when several worker processes draw at once.

The matrix bar lives on line 0 of the driver's terminal; each worker process claims its own
line (1, 2, ...) when it starts and draws its pre-training or cell bar there, through a lock
shared with the driver so lines do not interleave.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

_LINE: int | None = None  # this worker's line; None in the driver (tqdm then picks one)


def init_worker(counter, lock) -> None:
    global _LINE
    with counter.get_lock():
        counter.value += 1
        _LINE = counter.value
    tqdm.set_lock(lock)


def bar(*, enabled: bool, **kwargs) -> tqdm:
    return tqdm(position=_LINE, leave=False, dynamic_ncols=True, disable=not enabled, file=sys.stderr, **kwargs)
