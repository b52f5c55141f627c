"""Cross-entropy of scores predicted on a coarse grid, against full-resolution labels, exactly.

A head whose scores live on a grid of `stride` × `stride` pixel cells (the stride-4 level of a
CNN, a ViT's token grid) can be trained at the labels' resolution in two ways: upsample the
scores bilinearly to the image and take the per-pixel cross-entropy (mmseg's decode heads,
DINOv2's linear probe), or treat each cell's scores as the prediction of every pixel in it. The
second is the per-pixel cross-entropy of the nearest-upsampled scores, and it is computed here on
the grid itself: per cell, the class histogram of its labelled pixels weights the cell's
log-probabilities, and the sum is divided by the number of labelled pixels. The result equals
`F.cross_entropy(nearest_upsample(scores), labels, ignore_index=...)` (tests/test_grid_loss.py),
at a cost that does not grow with the image: for a stride-4 grid about 1/16 of the per-pixel
loss, which is what makes K linear-probe candidates cost little more than one (the labels'
histograms are integers, shared by every candidate in the way the labels are).

Two differences from `F.cross_entropy`: a batch with no labelled pixel gives 0, not NaN (an
empty mask is skipped, as the NaN-divergence report recommends), and labels must cover the grid
(a grid cell may extend past the image's bottom/right edge, as a ViT's padded patches do)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_histograms(labels: torch.Tensor, grid: tuple[int, int], stride: tuple[int, int], num_classes: int,
                    ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per grid cell, how many of its pixels carry each class: N×classes×gh×gw counts (float32,
    exact below 2**24 per cell), and the number of labelled pixels."""
    n, h, w = labels.shape
    (gh, gw), (sh, sw) = grid, stride
    if not ((gh - 1) * sh < h <= gh * sh and (gw - 1) * sw < w <= gw * sw):
        raise ValueError(f"labels of {h}x{w} pixels are not covered by a {gh}x{gw} grid of {sh}x{sw} cells")
    valid = labels != ignore_index
    y = torch.where(valid, labels.long(), 0)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"a label is outside 0..{num_classes - 1} and is not the ignore index {ignore_index}")
    rows = (torch.arange(h, device=labels.device) // sh).view(1, h, 1)
    cols = (torch.arange(w, device=labels.device) // sw).view(1, 1, w)
    batch = torch.arange(n, device=labels.device).view(n, 1, 1)
    size = n * num_classes * gh * gw
    # Unlabelled pixels go to one bin past the end, dropped after counting (no boolean indexing).
    index = torch.where(valid, ((batch * num_classes + y) * gh + rows) * gw + cols, size)
    counts = torch.bincount(index.flatten(), minlength=size + 1)[:size]
    return counts.view(n, num_classes, gh, gw).float(), valid.sum()


def grid_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, stride: tuple[int, int],
                       ignore_index: int) -> torch.Tensor:
    """Mean per-pixel cross-entropy of N×classes×gh×gw `scores`, each cell's scores standing for
    every pixel of its `stride` cell of the N×H×W `labels`."""
    counts, labelled = cell_histograms(labels, tuple(scores.shape[-2:]), stride, scores.shape[1], ignore_index)
    # Half-precision scores (autocast) are scored in float32, as F.cross_entropy does under autocast.
    log_p = F.log_softmax(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=1)
    return -(counts.to(log_p.dtype) * log_p).sum() / labelled.clamp(min=1)
