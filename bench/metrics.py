"""Segmentation metrics from a dataset-level confusion matrix.

Follows the MMSegmentation `IoUMetric` convention: pixels labelled `ignore_index` are dropped,
IoU and accuracy are computed once over the whole dataset (never averaged per image), and a class
absent from both prediction and ground truth is excluded from the mean (NaN, not 0).
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows: truth

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(-1).to(torch.int64).cpu()
        target = target.reshape(-1).to(torch.int64).cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"label values outside 0..{self.num_classes - 1} (and not {self.ignore_index})")
        n = self.num_classes
        self.mat += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def compute(self) -> dict:
        mat = self.mat.double()
        tp = mat.diag()
        truth = mat.sum(1)
        predicted = mat.sum(0)
        union = truth + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(truth > 0, tp / truth.clamp(min=1), torch.full_like(tp, float("nan")))
        total = mat.sum()
        return {
            "miou": _nanmean(iou),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_class_acc": _nanmean(acc),
            "per_class_iou": [None if math.isnan(v) else float(v) for v in iou.tolist()],
        }


def _nanmean(x: torch.Tensor) -> float:
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")
