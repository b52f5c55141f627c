"""`CpuShare`: how much CPU other processes took while a timed block ran, so that a benchmark
can say when its figures were measured on a busy machine (shared by the benchmarks here)."""

from __future__ import annotations

import os
import time


class CpuShare:
    """How much of the machine's CPU time other processes took while the block ran: all CPUs' busy
    time (/proc/stat) minus this process's and its finished children's (Linux; None elsewhere)."""

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        self._end = self._sample()

    @staticmethod
    def _sample():
        import resource

        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
        own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return time.perf_counter(), busy, own

    @property
    def others(self) -> float | None:
        """Other processes' share of all CPUs over the block, 0..1."""
        if self._start is None or self._end is None:
            return None
        (t0, b0, o0), (t1, b1, o1) = self._start, self._end
        return max(0.0, ((b1 - b0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1)))
