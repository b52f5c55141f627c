"""Progress that suits where stderr goes: tqdm bars in a terminal, plain lines in a log file.

In a terminal the matrix bar lives on line 0 of the driver's terminal; each worker process claims
its own line (1, 2, ...) when it starts and draws its pre-training or cell bar there, through a
lock shared with the driver so lines do not interleave.

Anywhere else (a Slurm log, `2> log.txt`, a pipe) a redrawn bar is thousands of cursor-movement
codes, so progress is one plain line every `EVERY_FRACTION` of the total or every `EVERY_S`
seconds, whichever comes first: `transfer depth/frozen/s0: 150/300 step (50%) 12s loss=0.412`.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

_LINE: int | None = None  # this worker's line; None in the driver (tqdm then picks one)

EVERY_FRACTION = 0.10  # a plain line at each 10 % of the total...
EVERY_S = 30.0  # ... or after 30 s without one, whichever comes first


def init_worker(counter, lock) -> None:
    global _LINE
    with counter.get_lock():
        counter.value += 1
        _LINE = counter.value
    tqdm.set_lock(lock)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(*, enabled: bool, plain: bool | None = None, **kwargs):
    """A progress bar on stderr; `plain` (default: stderr is not a terminal) gives `PlainProgress`."""
    if plain is None:
        plain = not stderr_is_terminal()
    if plain:
        keep = ("total", "initial", "desc", "unit", "iterable")
        return PlainProgress(enabled=enabled, **{k: v for k, v in kwargs.items() if k in keep})
    kwargs.setdefault("position", _LINE)
    return tqdm(leave=False, dynamic_ncols=True, disable=not enabled, file=sys.stderr, **kwargs)


class PlainProgress:
    """The part of tqdm's interface the harness uses (update, set_postfix, close, iteration, with),
    writing a throttled plain line instead of redrawing. `clock` and `write` are seams for tests."""

    def __init__(self, *, enabled: bool = True, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", iterable=None, every_fraction: float = EVERY_FRACTION, every_s: float = EVERY_S,
                 clock=time.monotonic, write=None):
        self.enabled, self.iterable = enabled, iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.desc, self.unit, self.postfix = initial, desc, unit, ""
        self.every_fraction, self.every_s, self.clock = every_fraction, every_s, clock
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._start = self._last = clock()
        self._next_fraction = self._fraction_after(initial)
        self._closed = False

    def _fraction_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        done = n / self.total
        return (int(done / self.every_fraction + 1e-9) + 1) * self.every_fraction

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = self.clock()
        due_fraction = self.total and self.n / self.total >= self._next_fraction - 1e-9
        if due_fraction or now - self._last >= self.every_s:
            self._emit(now)

    def _emit(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        head = f"{self.desc}: " if self.desc else ""
        self._write(f"{head}{done} {self.unit}{pct} {now - self._start:.0f}s{self.postfix}")
        self._last = now
        self._next_fraction = self._fraction_after(self.n)

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def close(self) -> None:
        self._closed = True

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
