"""NYUv2's labelled `.mat` (MATLAB v7.3, i.e. HDF5), read one image at a time by both stages.

h5py handles survive neither pickling nor fork, so the file is opened on first use in each
process (data-loader workers and the executor's spawned processes included). Every failure is
one line naming the file and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from bench.core.errors import UserError, one_line


class ProcessLocalHDF5:
    """`file()` opens `path` once per process and runs `check` (a layout check raising
    UserError) on it; `read(var, index)` reads one image of a variable."""

    def __init__(self, path, fix: str, check: Callable[[h5py.File], None] | None = None):
        self.path, self.fix, self.check = Path(path), fix, check
        self._file, self._pid = None, None

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r")
            except OSError as exc:
                raise UserError(f"{self.path}: unreadable MATLAB v7.3/HDF5 file ({one_line(exc)}); {self.fix}") from None
            if self.check is not None:
                self.check(f)
            self._file, self._pid = f, os.getpid()
        return self._file

    def read(self, var: str, index: int) -> np.ndarray:
        try:
            return self.file()[var][index]
        except (OSError, ValueError, IndexError) as exc:
            raise UserError(f"{self.path}: image {index + 1:04d} unreadable ({one_line(exc)}); {self.fix}") from None
