"""The scale-and-shift-invariant losses of the NimbleD distillation: NimbleD's own form (median /
mean-absolute-deviation normalisation of both maps, its eq. 6-7, the default) against a
transcription of the published loss, and the least-squares form (`ssi_loss=midas_lsq`)."""

import pytest
import torch

from pretrain.losses import nimbled_ssi_loss
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


# --- NimbleD's form (the default) ------------------------------------------------------------------

def nimbled_transcription(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """NimbleD eq. 6-7 as its published code evaluates it, on B×1×H×W disparities, every pixel:
    each map min-max normalised per image (range + 1e-6), then d' = (d - t) / s with t the
    median (torch.median: the lower middle value) and s = mean |d - t| per image, and the loss is
    the per-image mean |pred' - gt'|, averaged over the batch."""
    def min_max(x):
        flat = x.reshape(x.shape[0], -1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        return (x - lo) / (hi - lo + 1e-6)

    def shift_scale(x):
        t = x.reshape(x.shape[0], 1, -1).median(dim=2).values.view(-1, 1, 1, 1)
        s = (x - t).abs().mean(dim=(2, 3), keepdim=True)
        return (x - t) / s

    return (shift_scale(min_max(pred)) - shift_scale(min_max(gt))).abs().mean(dim=(2, 3)).mean()


def test_nimbled_hand_computed_examples():
    # Odd count: pred 0 1 4 -> median 1, s = (1 + 0 + 3) / 3 = 4/3 -> -0.75 0 2.25;
    # target 2 3 4 -> median 3, s = 2/3 -> -1.5 0 1.5; |difference| 0.75 0 0.75, mean 0.5.
    pred, target = torch.tensor([[0.0, 1.0, 4.0]]), torch.tensor([[2.0, 3.0, 4.0]])
    assert float(nimbled_ssi_loss(pred, target)) == pytest.approx(0.5, abs=1e-7)
    # Even count, lower median (torch.median, as NimbleD's code): pred 0 1 2 7 -> t = 1, s = 2 ->
    # -0.5 0 0.5 3; target 1 2 2 5 -> t = 2, s = 1 -> -1 0 0 3; |difference| 0.5 0 0.5 0 -> 0.25.
    pred, target = torch.tensor([[[0.0, 1.0], [2.0, 7.0]]]), torch.tensor([[[1.0, 2.0], [2.0, 5.0]]])
    assert float(nimbled_ssi_loss(pred, target)) == pytest.approx(0.25, abs=1e-7)
    assert float(nimbled_transcription(pred[:, None], target[:, None])) == pytest.approx(0.25, abs=1e-6)
    # The least-squares form gives another value on the same pair (it is not NimbleD's loss):
    # centred p -2.5 -1.5 -0.5 4.5, g -1.5 -0.5 -0.5 2.5, s = cov / var = 16/29; residuals
    # s p_c - g_c = (3.5, -9.5, 6.5, -0.5) / 29, mean |.| = 5/29.
    assert float(ssi(pred, target)) == pytest.approx(5 / 29, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nimbled_equals_the_transcription_with_gradients(dtype):
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(4, 1, 12, 20, generator=gen, dtype=dtype).requires_grad_(True)
    target = 5.0 * torch.rand(4, 1, 12, 20, generator=gen, dtype=dtype) + 3.0 * pred.detach()
    expected = nimbled_transcription(pred, target)
    ours = nimbled_ssi_loss(pred[:, 0], target[:, 0])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(ours, expected, **tol)
    (g_expected,) = torch.autograd.grad(expected, pred)
    (g_ours,) = torch.autograd.grad(ours, pred)
    assert float(g_expected.abs().max()) > 1e-3  # a real gradient, compared element by element
    torch.testing.assert_close(g_ours, g_expected, **tol)
    # The least-squares form is another loss, with a gradient that points elsewhere.
    (g_lsq,) = torch.autograd.grad(ssi(pred[:, 0], target[:, 0]), pred)
    cosine = torch.nn.functional.cosine_similarity(g_lsq.flatten(), g_ours.flatten(), dim=0)
    assert float(cosine) < 0.9


def test_nimbled_with_a_mask_is_the_transcription_on_each_images_valid_pixels():
    gen = torch.Generator().manual_seed(4)
    pred = torch.rand(3, 6, 10, generator=gen, dtype=torch.float64).requires_grad_(True)
    target = torch.rand(3, 6, 10, generator=gen, dtype=torch.float64) + pred.detach()
    mask = torch.rand(3, 6, 10, generator=gen) > 0.4
    target = torch.where(mask, target, torch.full_like(target, float("nan")))  # missing labels
    ours = nimbled_ssi_loss(pred, target, mask)
    per_image = [nimbled_transcription(pred[i][mask[i]].view(1, 1, 1, -1), target[i][mask[i]].view(1, 1, 1, -1))
                 for i in range(3)]
    expected = torch.stack(per_image).mean()
    torch.testing.assert_close(ours, expected)
    (g_ours,) = torch.autograd.grad(ours, pred)
    (g_expected,) = torch.autograd.grad(expected, pred)
    torch.testing.assert_close(g_ours, g_expected)
    assert torch.isfinite(g_ours).all() and float(g_ours[~mask].abs().max()) == 0.0


@pytest.mark.parametrize("a,b", [(3.0, -2.0), (0.01, 5.0), (250.0, 0.5)])
def test_nimbled_is_invariant_to_scale_and_shift_of_both_maps(a, b):
    pred, target, mask = _pair(torch.float64)
    base = nimbled_ssi_loss(pred, target, mask)
    assert float(base) > 0.05
    torch.testing.assert_close(nimbled_ssi_loss(a * pred + b, target, mask), base)
    torch.testing.assert_close(nimbled_ssi_loss(pred, a * target + b, mask), base)
    assert float(nimbled_ssi_loss(pred, 4.0 * pred + 0.3, mask)) < 1e-12


def test_nimbled_degenerate_images():
    pred, target, mask = _pair()
    assert nimbled_ssi_loss(pred, target, torch.zeros_like(mask)) is None
    # An image whose valid targets are all equal has no relative depth: it leaves the mean.
    flat = target.clone()
    flat[0] = 2.0
    torch.testing.assert_close(nimbled_ssi_loss(pred, flat, mask), nimbled_ssi_loss(pred[1:], target[1:], mask[1:]))
    # A constant prediction normalises to 0: the loss is mean |target'| = 1, with a finite gradient.
    constant = torch.full((1, 4), 0.3, requires_grad=True)
    loss = nimbled_ssi_loss(constant, torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(constant.grad).all()
    # No usable image at all: a zero still tied to the graph.
    lone = torch.zeros_like(mask)
    lone[0, 3, 4] = True
    p = pred.clone().requires_grad_(True)
    alone = nimbled_ssi_loss(p, target, lone)
    assert float(alone.detach()) == 0.0 and alone.requires_grad
