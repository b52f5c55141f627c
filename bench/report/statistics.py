"""Intervals for leaderboards: of one backbone's mean, and of its difference to a baseline.

Every backbone of a comparison trains on the same few-shot subset for a given seed and is
scored on the same evaluation images, so its difference to the baseline is paired:

- with two or more seeds both have, the per-seed differences get a paired Student-t interval
  (`paired_t`): the subset-to-subset variation that both backbones share cancels out;
- with one seed, a paired bootstrap over evaluation images (`paired_bootstrap`): each resample
  draws the same images for both backbones, and each backbone's dataset-level mIoU is
  recomputed from the per-image intersection and union counts its record stores.

A difference is significant when its paired 95 % interval excludes zero. mIoU intervals are in
percent and clipped to [0, 100] (a Student-t interval of few seeds can reach past either end).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same records always give the same interval


def t_interval(values, clip: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high) of the mean at 95 %, Student t over the values (NaNs
    skipped; with one value the std and interval are NaN). `clip` bounds the interval."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1)) * std / math.sqrt(len(x))
    lo, hi = mean - half, mean + half
    if clip is not None:
        lo, hi = max(lo, clip[0]), min(hi, clip[1])
    return mean, std, lo, hi


def paired_t(values, baseline_values) -> tuple[float, float, float]:
    """(mean difference, CI low, CI high): a paired t interval over per-seed differences."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline_values, dtype=float)
    mean, _, lo, hi = t_interval(diffs)
    return mean, lo, hi


def _miou_of_resamples(weights: np.ndarray, intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU (percent) of each resample; `weights` (resamples x images) counts each image's draws."""
    inter = weights @ intersection  # resamples x classes
    uni = weights @ union
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(uni > 0, inter / np.maximum(uni, 1), np.nan)
    return 100.0 * np.nanmean(iou, axis=1)


def miou_percent(intersection, union) -> float:
    """Dataset-level mIoU in percent from per-image counts (images x classes)."""
    return float(_miou_of_resamples(np.ones((1, len(intersection))), np.asarray(intersection, float),
                                    np.asarray(union, float))[0])


def paired_bootstrap(row: dict, baseline: dict, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float] | None:
    """(difference, CI low, CI high) in mIoU points of `row` minus `baseline`, each a record's
    `per_image` ({stems, intersection, union}); None when they were not scored on the same images.
    The interval is the percentile interval of the resampled differences."""
    if not row or not baseline or row.get("stems") != baseline.get("stems") or not row.get("stems"):
        return None
    a_i, a_u = np.asarray(row["intersection"], float), np.asarray(row["union"], float)
    b_i, b_u = np.asarray(baseline["intersection"], float), np.asarray(baseline["union"], float)
    if a_i.shape != b_i.shape:
        return None  # another class set
    n = len(a_i)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    diffs = _miou_of_resamples(weights, a_i, a_u) - _miou_of_resamples(weights, b_i, b_u)
    diffs = diffs[np.isfinite(diffs)]
    point = miou_percent(a_i, a_u) - miou_percent(b_i, b_u)
    tail = 100.0 * (1 - LEVEL) / 2
    lo, hi = np.percentile(diffs, [tail, 100.0 - tail])
    return point, float(lo), float(hi)


def paired_difference(row: dict[int, tuple[float, dict | None]], baseline: dict[int, tuple[float, dict | None]]
                      ) -> dict:
    """The paired difference of a leaderboard row to its baseline. Both map seed -> (mIoU in
    percent, the record's per_image counts or None). Returns diff, low, high (NaN when there is no
    interval), `interval` (which one, in words) and `significant` (None without an interval)."""
    seeds = sorted(set(row) & set(baseline))
    out = {"diff": math.nan, "low": math.nan, "high": math.nan, "interval": "no seed in common",
           "significant": None}
    if len(seeds) >= 2:
        diff, lo, hi = paired_t([row[s][0] for s in seeds], [baseline[s][0] for s in seeds])
        out.update(diff=diff, low=lo, high=hi, interval=f"paired t, n = {len(seeds)} seeds")
    elif len(seeds) == 1:
        s = seeds[0]
        out.update(diff=row[s][0] - baseline[s][0], interval="n = 1, no per-image counts")
        boot = paired_bootstrap(row[s][1], baseline[s][1])
        if boot is not None:
            diff, lo, hi = boot
            images = len(row[s][1]["stems"])
            out.update(diff=diff, low=lo, high=hi, interval=f"paired bootstrap, n = 1 seed, {images} images")
    if not math.isnan(out["low"]):
        out["significant"] = bool(out["low"] > 0 or out["high"] < 0)
    return out
