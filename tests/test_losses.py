import math

import pytest
import torch

from pretrain.losses import scale_invariant_log_loss, silog_from_differences


def _from_d(d):
    target = torch.ones(len(d))
    return torch.exp(torch.tensor(d, dtype=torch.float64)) * target, target, torch.ones(len(d), dtype=torch.bool)


def test_worked_example_from_the_nan_paper():
    # d = {1, 3}, lambda = 0.5: biased estimator gives D = 3, unbiased gives 4.
    pred, target, valid = _from_d([1.0, 3.0])
    assert float(scale_invariant_log_loss(pred, target, valid, lam=0.5, eps=0)) == pytest.approx(3.0)
    assert float(scale_invariant_log_loss(pred, target, valid, lam=0.5, eps=0, unbiased=True)) == pytest.approx(4.0)
    assert float(scale_invariant_log_loss(pred, target, valid, lam=0.5, eps=1e-24)) == pytest.approx(3.0)
    assert float(scale_invariant_log_loss(pred, target, valid, lam=0.5, sqrt=True)) == pytest.approx(math.sqrt(3.0))


def test_var_form_equals_mean_form():
    d = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pred, target, valid = torch.exp(d), torch.ones_like(d), torch.ones_like(d, dtype=torch.bool)
    for lam in (0.0, 0.5, 0.85, 1.0):
        assert float(scale_invariant_log_loss(pred, target, valid, lam=lam, eps=0)) == pytest.approx(
            float(silog_from_differences(d, lam)))


def test_empty_mask_is_skipped_and_single_pixel_is_safe():
    pred, target = torch.rand(4) + 0.5, torch.rand(4) + 0.5
    empty = scale_invariant_log_loss(pred.requires_grad_(), target, torch.zeros(4, dtype=torch.bool))
    assert float(empty) == 0.0 and not empty.requires_grad  # finite, and the loop skips the update
    assert float(scale_invariant_log_loss(target, target)) == 0.0  # default mask: every pixel
    one = torch.tensor([True, False, False, False])
    assert math.isfinite(float(scale_invariant_log_loss(pred, target, one)))
    # The unbiased estimator the paper warns about is NaN for a single valid pixel.
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert math.isnan(float(scale_invariant_log_loss(pred, target, one, unbiased=True)))


def test_eps_guards_log_of_a_saturated_sigmoid():
    pred = 80.0 * torch.sigmoid(torch.tensor([-120.0, 0.0]))  # underflows to exactly 0 in fp32
    assert float(pred[0]) == 0.0
    valid = torch.ones(2, dtype=torch.bool)
    assert math.isfinite(float(scale_invariant_log_loss(pred, torch.tensor([5.0, 5.0]), valid)))
    assert not math.isfinite(float(scale_invariant_log_loss(pred, torch.tensor([5.0, 5.0]), valid, eps=0)))
