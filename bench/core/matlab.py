"""MATLAB files both stages read: NYUv2's labelled `.mat` and its small companions.

- `ProcessLocalHDF5`: the labelled file (MATLAB v7.3, i.e. HDF5), read one image at a time.
  h5py handles survive neither pickling nor fork, so the file is opened on first use in each
  process (data-loader workers and the executor's spawned processes included).
- `read_small_mat`: vector variables of a small file (`splits.mat`, `classMapping40.mat`),
  distributed as MATLAB v5; a v7.3 re-save is HDF5, which scipy refuses, so h5py reads those.
- `read_nyuv2_splits`: the official train/test split of NYUv2 (`trainNdxs`, `testNdxs`), the
  one reader the segmentation dataset and the depth pre-training source share.

Every failure is one line naming the file and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import scipy.io

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


def read_small_mat(path, names: tuple[str, ...], fix: str) -> dict:
    """Vector variables of a small .mat: numeric ones flat, cell arrays of strings as lists of str."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing file ({fix})")
    try:
        raw = scipy.io.loadmat(path, variable_names=names)
        values = {k: _from_v5(raw[k]) for k in names if k in raw}
    except NotImplementedError:  # v7.3 is HDF5, which scipy leaves to h5py
        values = _read_v73(path, names, fix)
    except Exception as exc:  # noqa: BLE001 -- scipy raises all sorts on a damaged file
        raise UserError(f"{path}: unreadable MATLAB file ({one_line(exc)}); {fix}") from None
    missing = [k for k in names if k not in values]
    if missing:
        raise UserError(f"{path}: variable {missing[0]} not found (expected {', '.join(names)}); {fix}")
    return values


def _from_v5(value: np.ndarray):
    if value.dtype == object:
        return [str(np.asarray(cell).ravel()[0]) if np.size(cell) else "" for cell in value.ravel()]
    return value.ravel()


def _read_v73(path: Path, names: tuple[str, ...], fix: str) -> dict:
    try:
        with h5py.File(path, "r") as f:
            values = {}
            for k in (k for k in names if k in f):
                data = f[k][()]
                if data.dtype == object:  # a cell array: references to uint16 char arrays
                    values[k] = ["".join(map(chr, np.asarray(f[ref][()]).ravel())) for ref in data.ravel()]
                else:
                    values[k] = np.asarray(data).ravel()
            return values
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable MATLAB v7.3 file ({one_line(exc)}); {fix}") from None


def integers(values: np.ndarray, where: str) -> np.ndarray:
    """Whole numbers stored as any numeric type (MATLAB saves indices as doubles)."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise UserError(f"{where} holds non-integer values")
    return values.astype(np.int64)


NYUV2_SPLITS = {"train": "trainNdxs", "test": "testNdxs"}


def read_nyuv2_splits(path, num_images: int, fix: str, labelled: str = "nyu_depth_v2_labeled.mat") -> dict[str, list[int]]:
    """NYUv2's `splits.mat`: {"train": [...], "test": [...]}, sorted 1-based image indices, each
    checked to lie in 1..num_images of the labelled file and to appear once."""
    path = Path(path)
    values = read_small_mat(path, tuple(NYUV2_SPLITS.values()), fix)
    splits = {}
    for split, var in NYUV2_SPLITS.items():
        idx = integers(values[var], f"{path}: {var}")
        if idx.size == 0:
            raise UserError(f"{path}: {var} is empty; {fix}")
        bad = idx[(idx < 1) | (idx > num_images)]
        if bad.size:
            raise UserError(f"{path}: {var} holds index {bad[0]}, outside 1..{num_images} of {labelled}; {fix}")
        if len(np.unique(idx)) != len(idx):
            raise UserError(f"{path}: {var} lists an image twice; {fix}")
        splits[split] = sorted(int(i) for i in idx)
    return splits
