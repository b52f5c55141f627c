"""Paired intervals of a backbone's difference to the baseline, and clipped mIoU intervals."""

import math

import numpy as np
import pytest
import torch

from bench.core.metrics import PerImageCounts, segmentation_metrics
from bench.report.statistics import miou_percent, paired_bootstrap, paired_difference, paired_t, t_interval


def test_t_intervals_are_clipped_to_the_percent_range():
    # Two seeds far apart: the Student-t interval (t = 12.7) would be [-262, 372].
    mean, _, lo, hi = t_interval([30.0, 80.0], clip=(0.0, 100.0))
    assert mean == 55.0 and (lo, hi) == (0.0, 100.0)
    assert t_interval([99.0, 100.0, 100.0], clip=(0.0, 100.0))[3] == 100.0
    assert t_interval([30.0, 80.0])[2] < 0  # unclipped when not asked


def test_paired_t_by_hand():
    # Differences 10, 9: mean 9.5, std 0.70711, t(0.975, 1) = 12.7062 -> half-width 6.35310.
    diff, lo, hi = paired_t([70.0, 71.0], [60.0, 62.0])
    assert (diff, lo, hi) == pytest.approx((9.5, 9.5 - 6.35310, 9.5 + 6.35310), abs=1e-4)


def _counts(pred, target, k=3):
    counts = PerImageCounts(len(pred), k)
    for i, (p, t) in enumerate(zip(pred, target)):
        counts.update(i, torch.as_tensor(p), torch.as_tensor(t))
    return {"stems": [f"im{i}" for i in range(len(pred))], "intersection": counts.intersection.tolist(),
            "union": counts.union.tolist()}


def _images(seed, n=20, k=3, noise=0.3):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=(n, 8, 8))
    pred = np.where(rng.random((n, 8, 8)) < noise, rng.integers(0, k, size=(n, 8, 8)), target)
    target[:, 0, 0] = 255  # an ignored pixel per image
    return pred, target


def test_per_image_counts_give_the_dataset_level_miou():
    pred, target = _images(0)
    per_image = _counts(pred, target)
    whole = segmentation_metrics(torch.as_tensor(pred), torch.as_tensor(target), 3)["miou"]
    assert miou_percent(per_image["intersection"], per_image["union"]) == pytest.approx(100 * whole, abs=1e-9)


def test_paired_bootstrap_properties():
    pred, target = _images(1)
    base = _counts(pred, target)
    assert paired_bootstrap(base, base) == (0.0, 0.0, 0.0)  # the same network: every resample agrees
    better = _counts(target, target)  # perfect on every image
    diff, lo, hi = paired_bootstrap(better, base)
    assert diff == pytest.approx(100.0 - miou_percent(base["intersection"], base["union"]))
    assert 0 < lo <= diff <= hi
    assert paired_bootstrap(better, base) == (diff, lo, hi)  # seeded: the same records, the same interval
    assert paired_bootstrap(better, {**base, "stems": base["stems"][::-1]}) is None  # other images: not paired
    assert paired_bootstrap(better, None) is None


def test_paired_bootstrap_of_a_swap_is_centred_on_zero():
    # Row and baseline are the same two networks with the images' roles swapped half the time:
    # no difference on average, and the interval must say so.
    pa, ta = _images(2, noise=0.1)
    pb, _ = _images(3, noise=0.5)
    pb = np.where(np.random.default_rng(4).random(pa.shape) < 0.5, pb, ta)
    first, second = _counts(pa, ta), _counts(pb, ta)
    half = len(ta) // 2
    row = {k: (v[:half] + second[k][half:] if k != "stems" else v) for k, v in first.items()}
    base = {k: (second[k][:half] + v[half:] if k != "stems" else v) for k, v in first.items()}
    diff, lo, hi = paired_bootstrap(row, base)
    assert lo < 0 < hi


def test_paired_difference_chooses_its_interval():
    pred, target = _images(5)
    per_image = _counts(pred, target)
    perfect = _counts(target, target)
    two = paired_difference({0: (70.0, None), 1: (71.0, None), 2: (99.0, None)}, {0: (60.0, None), 1: (62.0, None)})
    assert two["interval"] == "paired t, n = 2 seeds" and two["diff"] == pytest.approx(9.5) and two["significant"]
    boot = paired_difference({0: (100.0, perfect)}, {0: (50.0, per_image)})
    assert boot["interval"] == "paired bootstrap, n = 1 seed, 20 images" and boot["significant"] is True
    bare = paired_difference({0: (70.0, None)}, {0: (60.0, None)})
    assert bare["diff"] == 10.0 and math.isnan(bare["low"]) and bare["significant"] is None
    assert paired_difference({1: (70.0, None)}, {0: (60.0, None)})["interval"] == "no seed in common"
