"""Depth losses.

The scale-invariant log loss follows "Analysis of NaN Divergence in Training Monocular Depth
Estimation": D = Var[d] + (1 - lambda) E[d]^2 with d = log(y + eps) - log(y*), the *biased*
variance, no square root, eps = 1e-24, and batches without a valid pixel skipped. The unsafe
variants the paper analyses stay selectable so a user can reproduce the instability.
"""

from __future__ import annotations

import torch


def scale_invariant_log_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    *,
    lam: float = 0.85,
    eps: float = 1e-24,
    unbiased: bool = False,
    sqrt: bool = False,
) -> torch.Tensor | None:
    """Loss over the valid pixels of the whole batch, or None when there are none (skip the step)."""
    if not bool(valid.any()):
        return None
    d = torch.log(pred[valid] + eps) - torch.log(target[valid])
    loss = torch.var(d, unbiased=unbiased) + (1.0 - lam) * d.mean() ** 2
    return torch.sqrt(loss) if sqrt else loss


def silog_from_differences(d: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean-style form (1/n) sum d^2 - (lambda/n^2) (sum d)^2, used to cross-check the var form."""
    n = d.numel()
    return (d**2).sum() / n - lam * d.sum() ** 2 / n**2
