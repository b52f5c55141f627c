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

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add these pixels; returns their own confusion matrix (e.g. one image's)."""
        pred = pred.reshape(-1).to(torch.int64).cpu()
        target = target.reshape(-1).to(torch.int64).cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"label values outside 0..{self.num_classes - 1} (and not {self.ignore_index})")
        n = self.num_classes
        mat = torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        self.mat += mat
        return mat

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


def confusion_matrices(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int = 255) -> torch.Tensor:
    """K×N×classes×classes confusion matrices (rows: truth) of K predictions (K×N×H×W) of the same
    N×H×W labels, per prediction and image, in one count; pixels labelled `ignore_index` dropped."""
    k, n = preds.shape[:2]
    target = target.to(torch.int64)
    valid = target != ignore_index
    truth = torch.where(valid, target, 0)
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_classes):
        raise ValueError(f"label values outside 0..{num_classes - 1} (and not {ignore_index})")
    c, size = num_classes, k * n * num_classes * num_classes
    which = torch.arange(k * n).view(k, n, *[1] * (preds.dim() - 2))
    index = ((which * c + truth) * c + preds.to(torch.int64))
    index = torch.where(valid.expand_as(index), index, size)  # unlabelled pixels: one bin past the end
    return torch.bincount(index.flatten(), minlength=size + 1)[:size].view(k, n, c, c)


class PerImageCounts:
    """Intersection and union pixel counts per evaluation image and class (images x classes x 2
    integers). Summed over any set of images they give that set's dataset-level IoUs exactly
    (the union is additive: sum of predicted + true - intersection), so the mIoU of a resampled
    evaluation set -- a paired bootstrap over images -- is computed from them, not re-scored."""

    def __init__(self, num_images: int, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.intersection = torch.zeros(num_images, num_classes, dtype=torch.int64)
        self.union = torch.zeros(num_images, num_classes, dtype=torch.int64)

    def update(self, image: int, pred: torch.Tensor, target: torch.Tensor) -> None:
        cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.set_from_matrix(image, cm.update(pred, target))

    def set_from_matrix(self, image: int, mat: torch.Tensor) -> None:
        """The counts of `image` from its confusion matrix (rows: truth)."""
        tp = mat.diag()
        self.intersection[image] = tp
        self.union[image] = mat.sum(0) + mat.sum(1) - tp


def miou_from_counts(intersection, union) -> float:
    """Dataset-level mIoU from per-image counts summed over images (last axis: classes); classes
    with no union (absent from prediction and truth) are left out, as `ConfusionMatrix` does."""
    inter = torch.as_tensor(intersection, dtype=torch.float64)
    uni = torch.as_tensor(union, dtype=torch.float64)
    if inter.dim() > 1:
        inter, uni = inter.sum(0), uni.sum(0)
    iou = torch.where(uni > 0, inter / uni.clamp(min=1), torch.full_like(inter, float("nan")))
    return _nanmean(iou)


def _nanmean(x: torch.Tensor) -> float:
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def segmentation_metrics(pred, target, num_classes: int, ignore_index: int = 255) -> dict:
    """Metrics of predictions against targets, both label maps of any shape (one image or a
    stack): `miou`, `pixel_acc`, `mean_acc` as fractions in [0, 1] and `per_class_iou` with NaN
    for classes absent from both prediction and target -- one confusion matrix over all pixels,
    so a stack of images is scored as a dataset, not as a mean of per-image scores."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(torch.as_tensor(pred), torch.as_tensor(target))
    m = cm.compute()
    return {"miou": m["miou"], "pixel_acc": m["pixel_acc"], "mean_acc": m["mean_class_acc"],
            "per_class_iou": [float("nan") if v is None else v for v in m["per_class_iou"]]}
