"""The linear probe's grid loss, its stride-4 geometry, and the bank that trains K probe heads as
one (what makes a linear-probe sweep cheap: benchmarks/sweep_cost.py).

- `grid_cross_entropy` is exactly the per-pixel cross-entropy of the nearest-upsampled scores;
- `resize_bilinear` is `F.interpolate(..., "bilinear", align_corners=False)`, forward and backward;
- the per-level head sums its levels on the stride-4 grid, as mmseg's `resize_concat`;
- a `LinearHeadBank` of K heads gives each head the loss, gradients and running statistics it
  gets alone with `nn.BatchNorm2d`, and the same predictions."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.core.models.backbones import create_encoder
from tests.conftest import cell_config
from transfer.api import Cell
from transfer.decoders import decoder_class, parse_decoder_options
from transfer.decoders.grid_loss import cell_histograms, grid_cross_entropy
from transfer.decoders.linear import resize_bilinear
from transfer.decoders.linear_bank import LinearHeadBank

pytestmark = pytest.mark.usefixtures("one_thread")
IGNORE = 255


def _labels(n, h, w, classes, seed=0, ignored=0.2):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n, h, w), generator=g)
    y[torch.rand(n, h, w, generator=g) < ignored] = IGNORE
    return y


@pytest.mark.parametrize("h, w, stride", [(96, 320, (4, 4)), (97, 318, (4, 4)), (30, 45, (16, 16)), (28, 41, (14, 7))])
def test_grid_loss_is_the_cross_entropy_of_nearest_upsampled_scores(h, w, stride):
    gh, gw = -(-h // stride[0]), -(-w // stride[1])
    scores = torch.randn(3, 5, gh, gw, dtype=torch.float64, requires_grad=True)
    y = _labels(3, h, w, 5)
    ours = grid_cross_entropy(scores, y, stride, IGNORE)
    nearest = scores.repeat_interleave(stride[0], 2).repeat_interleave(stride[1], 3)[..., :h, :w]
    want = F.cross_entropy(nearest, y, ignore_index=IGNORE)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=0)
    g_ours, = torch.autograd.grad(ours, scores)
    g_want, = torch.autograd.grad(want, scores)
    torch.testing.assert_close(g_ours, g_want, rtol=1e-9, atol=1e-12)


def test_cell_histograms_count_by_hand():
    y = torch.tensor([[[0, 0, 1, IGNORE], [2, 0, 1, 1]]])  # 1×2×4, cells of 2×2
    counts, labelled = cell_histograms(y, (1, 2), (2, 2), 3, IGNORE)
    assert counts[0, :, 0, 0].tolist() == [3, 0, 1] and counts[0, :, 0, 1].tolist() == [0, 3, 0]
    assert int(labelled) == 7


def test_grid_loss_edges():
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    empty = grid_cross_entropy(scores, torch.full((1, 8, 8), IGNORE), (4, 4), IGNORE)
    assert float(empty.detach()) == 0.0  # an empty mask is skipped, not NaN
    empty.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    with pytest.raises(ValueError, match="outside 0..2"):
        grid_cross_entropy(scores, torch.full((1, 8, 8), 3), (4, 4), IGNORE)
    with pytest.raises(ValueError, match="not covered by a 2x2 grid"):
        grid_cross_entropy(scores, torch.zeros(1, 9, 8, dtype=torch.long), (4, 4), IGNORE)


@pytest.mark.parametrize("src, dst", [((12, 40), (24, 80)), ((3, 10), (24, 80)), ((5, 7), (17, 9)), ((6, 6), (6, 6))])
def test_resize_bilinear_is_torchs_bilinear_interpolation(src, dst):
    x = torch.randn(2, 4, *src, dtype=torch.float64, requires_grad=True)
    ours, want = resize_bilinear(x, dst), F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-12)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               rtol=0, atol=1e-12)


def _cnn_heads(k, options=None, classes=6):
    encoder = create_encoder("resnet10t").eval()
    heads = []
    for i in range(k):
        torch.manual_seed(i)
        heads.append(decoder_class("linear")(encoder.channels, encoder.strides, classes,
                                              parse_decoder_options("linear", options or {})))
    with torch.no_grad():
        features = heads[0].prepare(encoder(torch.randn(4, 3, 64, 96)))
    for h in heads:  # distinct BatchNorm affines, as after some training
        for bn, _ in h.parts():
            torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
            torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    return heads, features


def test_the_per_level_head_sums_its_levels_on_the_stride_4_grid():
    (head,), features = _cnn_heads(1)
    head.eval()
    assert head.loss_at == "grid" and head.grid_stride == (4, 4)
    with torch.no_grad():
        grid = None
        for (bn, conv), i in zip(head.parts(), head.parts_levels()):
            s = conv(bn(features[i]))
            grid = s if grid is None else grid + F.interpolate(s, size=grid.shape[-2:], mode="bilinear",
                                                               align_corners=False)
        want = F.interpolate(grid, size=(64, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(head(features, (64, 96)), want, rtol=0, atol=1e-5)
    assert grid.shape[-2:] == (16, 24)


def test_loss_at_image_is_the_per_pixel_loss_of_the_upsampled_scores(tiny_world):
    (head,), features = _cnn_heads(1, {"loss_at": "image"})
    y = _labels(4, 64, 96, 6)
    torch.testing.assert_close(head.loss(features, y, IGNORE),
                               F.cross_entropy(head(features, (64, 96)), y, ignore_index=IGNORE))
    assert not LinearHeadBank.fits([head])  # the bank trains grid-loss heads only
    cell = Cell("b", "m", "resnet10t", "synth", "linear", "linear", 4, 0)
    chosen = cell_config(tiny_world, cell, decoder_options={"linear": {"loss_at": "image"}})
    assert chosen["decoder_options"] == {"loss_at": "image"}
    assert chosen["fingerprint"] != cell_config(tiny_world, cell)["fingerprint"]


@pytest.mark.parametrize("keys", [None, [0, 1, 2, 3]])  # keys: each view's sums and histograms remembered
def test_a_bank_trains_each_head_as_it_trains_alone(keys):
    heads, features = _cnn_heads(3)
    alone = copy.deepcopy(heads)
    y = _labels(4, 64, 96, 6)
    bank = LinearHeadBank(heads)
    for h in heads + alone:
        h.train()
    for _ in range(2):  # two steps: the running statistics accumulate
        losses = bank.losses(features, y, IGNORE, active=[0, 1, 2], keys=keys)
        for h in heads:
            h.zero_grad()
        losses.sum().backward()
        for k, h in enumerate(alone):
            h.zero_grad()
            loss = h.loss(features, y, IGNORE)  # nn.BatchNorm2d in training mode, grid loss
            loss.backward()
            torch.testing.assert_close(losses[k], loss.detach(), rtol=1e-5, atol=1e-6)
            for (name, p), q in zip(h.named_parameters(), heads[k].parameters()):
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
            for name, buf in h.named_buffers():
                torch.testing.assert_close(dict(heads[k].named_buffers())[name], buf, rtol=1e-5, atol=1e-6, msg=name)
    # Evaluation: the running statistics normalise, and the bank places the scores as `forward`.
    for h in heads + alone:
        h.eval()
    with torch.no_grad():
        predicted = bank.predict(features, (64, 96), active=[2, 0])
        for scores, k in zip(predicted, [2, 0]):
            torch.testing.assert_close(scores, alone[k](features, (64, 96)), rtol=1e-5, atol=1e-5)


def test_a_bank_takes_only_heads_of_one_form():
    heads, _ = _cnn_heads(2)
    vit = create_encoder("vit_tiny_patch16_224")
    token_head = decoder_class("linear")(vit.channels, vit.strides, 6, parse_decoder_options("linear",
                                                                                             {"loss_at": "grid"}))
    assert LinearHeadBank.fits(heads) and LinearHeadBank.fits([token_head])
    assert not LinearHeadBank.fits(heads + [token_head]) and not LinearHeadBank.fits([])
    with pytest.raises(ValueError, match="one form"):
        LinearHeadBank(heads + [token_head])


def test_a_bank_renders_a_views_labels_only_until_its_histograms_are_remembered():
    # A cached view's labels never change: the training loop hands the bank a renderer, called
    # only while some view of the batch has no remembered histograms.
    heads, features = _cnn_heads(1)
    reference = LinearHeadBank(copy.deepcopy(heads))
    y = _labels(4, 64, 96, 6)
    rendered = []

    def render():
        rendered.append(1)
        return y

    bank = LinearHeadBank(heads)
    first = bank.losses(features, render, IGNORE, active=[0], keys=["a", "b", "c", "d"])
    torch.testing.assert_close(first, reference.losses(features, y, IGNORE, active=[0]), rtol=1e-6, atol=1e-7)
    again = bank.losses(features, render, IGNORE, active=[0], keys=["d", "c", "b", "a"])
    assert len(rendered) == 1  # the second batch's four views were all remembered
    assert again.shape == first.shape and torch.isfinite(again).all()
    bank.losses(features, render, IGNORE, active=[0], keys=["a", "b", "c", "new"])
    assert len(rendered) == 2  # a view not seen before needs its labels
