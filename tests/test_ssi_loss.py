"""The scale-and-shift-invariant loss of the NimbleD distillation (MiDaS least-squares form)."""

import pytest
import torch

from pretrain.losses import scale_and_shift_invariant_loss as ssi


def _pair(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 12, 20, generator=gen, dtype=dtype)
    target = torch.rand(3, 12, 20, generator=gen, dtype=dtype) + pred
    mask = torch.rand(3, 12, 20, generator=gen) > 0.3
    return pred, target, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a,b", [(3.0, -2.0), (0.01, 5.0), (250.0, 0.5)])
def test_invariant_to_scale_and_shift_of_the_prediction(dtype, a, b):
    pred, target, mask = _pair(dtype)
    base = ssi(pred, target, mask)
    assert float(base) > 0.05  # not trivially zero
    torch.testing.assert_close(ssi(a * pred + b, target, mask), base, rtol=0, atol=1e-5)


def test_zero_for_an_exact_affine_relation():
    pred, _, mask = _pair()
    assert float(ssi(pred, 4.0 * pred + 0.3, mask)) < 1e-6
    # Pixels outside the mask may break the relation, even with non-finite values.
    target = 4.0 * pred + 0.3
    target[~mask] = float("nan")
    assert float(ssi(pred, target, mask)) < 1e-6


def test_hand_computed_2x2():
    # mean p = 1.5, mean g = 2.5, cov = 6, var = 5: s = 1.2, t = 0.7; fit 0.7 1.9 3.1 4.3;
    # |residuals| 0.3 0.1 1.1 0.7, mean 0.55.
    pred = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    target = torch.tensor([[[1.0, 2.0], [2.0, 5.0]]])
    assert float(ssi(pred, target)) == pytest.approx(0.55, abs=1e-6)


def test_empty_mask_is_none():
    pred, target, _ = _pair()
    assert ssi(pred, target, torch.zeros_like(pred, dtype=torch.bool)) is None


def test_one_valid_pixel_contributes_nothing():
    pred, target, mask = _pair()
    pred.requires_grad_(True)
    lone = torch.zeros_like(mask)
    lone[0, 3, 4] = True
    alone = ssi(pred, target, lone)
    assert torch.isfinite(alone) and float(alone.detach()) == 0.0
    alone.backward()
    assert torch.isfinite(pred.grad).all()
    # Next to a well-posed image, the lone-pixel image leaves the mean unchanged.
    mixed = mask.clone()
    mixed[0] = lone[0]
    expected = ssi(pred[1:], target[1:], mask[1:])
    torch.testing.assert_close(ssi(pred, target, mixed), expected)


def test_constant_prediction_fits_the_target_mean_and_has_finite_gradients():
    target = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    pred = torch.full((1, 4), 0.1, requires_grad=True)
    loss = ssi(pred, target)
    assert float(loss.detach()) == pytest.approx(1.5)  # mean |g - 3|
    loss.backward()
    assert torch.isfinite(pred.grad).all()
