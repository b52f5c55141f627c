"""Depth losses.

The scale-invariant log loss follows "Analysis of NaN Divergence in Training Monocular Depth
Estimation": D = Var[d] + (1 - lambda) E[d]^2 with d = log(y + eps) - log(y*), the *biased*
variance, no square root, eps = 1e-24, and batches without a valid pixel skipped. The unsafe
variants the paper analyses stay selectable so a user can reproduce the instability.

Two scale-and-shift-invariant (SSI) losses for relative (pseudo-)disparities:
- `nimbled_ssi_loss`, NimbleD's eq. 6-7 (the MiDaS "ssimae" normalisation): prediction and target
  are each brought to zero median and unit mean absolute deviation per image, then compared by L1;
- `scale_and_shift_invariant_loss`, the least-squares form: the prediction is aligned to the
  target by the scale and shift minimising the squared error, then compared by L1.
"""

from __future__ import annotations

import torch


def scale_invariant_log_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    lam: float = 0.85,
    eps: float = 1e-24,
    sqrt: bool = False,
    *,
    unbiased: bool = False,
) -> torch.Tensor:
    """Loss over the pixels of the whole batch where `mask` is true (default: all of them).

    An empty mask gives a finite zero that is not connected to the graph: the training loop
    treats a loss without gradient as an empty batch and skips the update (a zero *gradient*
    would still move the weights through AdamW's momentum and weight decay)."""
    if mask is None:
        mask = torch.ones_like(target, dtype=torch.bool)
    if not bool(mask.any()):
        return torch.zeros((), dtype=pred.dtype, device=pred.device)
    d = torch.log(pred[mask] + eps) - torch.log(target[mask])
    loss = torch.var(d, unbiased=unbiased) + (1.0 - lam) * d.mean() ** 2
    return torch.sqrt(loss) if sqrt else loss


def silog_from_differences(d: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean-style form (1/n) sum d^2 - (lambda/n^2) (sum d)^2, used to cross-check the var form."""
    n = d.numel()
    return (d**2).sum() / n - lam * d.sum() ** 2 / n**2


def scale_and_shift_invariant_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Least-squares-aligned scale-and-shift-invariant L1 (the alignment of MiDaS' MSE-based
    losses; depth_distill's `ssi_loss=midas_lsq`, not NimbleD's default, see `nimbled_ssi_loss`).

    Per image, the scale s and shift t minimising sum_mask (s * pred + t - target)^2 are solved in
    closed form, then the loss is the mean |s * pred + t - target| over the image's valid pixels.
    s and t stay in the graph, as in MiDaS, so the gradient sees the alignment. Images are
    averaged; one with fewer than 2 valid pixels has no defined alignment and contributes
    nothing. Returns None when no image has a valid pixel (skip the step).

    pred, target: N×... (flattened per image); mask: bool of the same shape, None = all pixels.
    """
    n = pred.shape[0]
    p = pred.reshape(n, -1)
    g = target.reshape(n, -1)
    m = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.reshape(n, -1).bool()
    if not bool(m.any()):
        return None
    # torch.where, not multiplication: a masked-out NaN/inf (missing pseudo-label) must not leak in.
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    p = torch.where(m, p, zero)
    g = torch.where(m, g.to(p.dtype), zero)
    count = m.sum(dim=1).to(p.dtype)
    denom = count.clamp(min=1)
    # Centred form of the 2×2 normal equations: s = cov(p, g) / var(p), t = mean(g) - s mean(p).
    # Centring keeps float32 accurate where the raw sums of p^2 would cancel catastrophically.
    mean_p = p.sum(dim=1) / denom
    mean_g = g.sum(dim=1) / denom
    pc = torch.where(m, p - mean_p[:, None], zero)
    gc = torch.where(m, g - mean_g[:, None], zero)
    var_p = (pc * pc).sum(dim=1)
    # A constant prediction (or a single pixel) leaves s undetermined: its least-squares fit is
    # s = 0, t = mean(target). The threshold is rounding noise of the centring, relative to |p|.
    noise = (16 * torch.finfo(p.dtype).eps) ** 2 * (p * p).sum(dim=1)
    solvable = var_p > noise
    s = torch.where(solvable, (pc * gc).sum(dim=1) / torch.where(solvable, var_p, torch.ones_like(var_p)), zero)
    t = mean_g - s * mean_p
    residual = torch.where(m, (s[:, None] * p + t[:, None] - g).abs(), zero)
    per_image = residual.sum(dim=1) / denom
    used = count >= 2
    if not bool(used.any()):
        # Valid pixels exist but no image can be aligned: a zero loss still tied to the graph.
        return p.sum() * 0
    return per_image[used].mean()


def _median_mad(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of N×P over `mask`: ((x - t) / s, s) with t the median (the lower of the two middle
    values for an even count, as torch.median) and s = mean |x - t|. Rows with s = 0 (constant, or
    a single pixel) and pixels outside the mask give 0; `x` must already be finite everywhere."""
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    count = mask.sum(dim=1).clamp(min=1).to(x.dtype)
    t = torch.where(mask, x, nan).nanmedian(dim=1).values
    t = torch.where(mask.any(dim=1), t, zero)  # an empty row: no median (its NaN must not reach the graph)
    centred = x - t[:, None]
    s = torch.where(mask, centred.abs(), zero).sum(dim=1) / count
    spread = s > 0
    safe = torch.where(spread, s, torch.ones_like(s))
    return torch.where(mask & spread[:, None], centred / safe[:, None], zero), s


def nimbled_ssi_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """NimbleD's scale-and-shift-invariant L1 (its eq. 6-7, after MiDaS), in disparity space.

    Per image, over its valid pixels, both maps are normalised as d' = (d - t(d)) / s(d) with
    t(d) = median(d) and s(d) = mean |d - t(d)|, and the loss is mean |pred' - target'|; images
    are averaged. t and s of the prediction stay in the graph (as in NimbleD's code). An image
    whose valid target values are all equal (or that has no valid pixel) carries no relative
    depth and is left out; a constant prediction normalises to 0 (loss 1 for that image, no
    gradient). Returns None when no pixel is valid (skip the step), and a zero tied to the graph
    when pixels are valid but no image is usable.

    pred, target: N×... (flattened per image); mask: bool of the same shape, None = all pixels.
    """
    n = pred.shape[0]
    p = pred.reshape(n, -1)
    g = target.reshape(n, -1).to(p.dtype)
    m = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.reshape(n, -1).bool()
    if not bool(m.any()):
        return None
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    # torch.where, not multiplication: a masked-out NaN/inf (missing pseudo-label) must not leak in.
    p = torch.where(m, p, zero)
    g = torch.where(m, g, zero)
    pn, _ = _median_mad(p, m)
    gn, spread = _median_mad(g, m)
    count = m.sum(dim=1).clamp(min=1).to(p.dtype)
    per_image = torch.where(m, (pn - gn).abs(), zero).sum(dim=1) / count
    used = spread > 0
    if not bool(used.any()):
        return p.sum() * 0
    return per_image[used].mean()
