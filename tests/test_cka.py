"""bench.core.cka against the published formulas, written out literally here in numpy float64.

The references below deliberately take the most direct route -- an explicit centring matrix
H = I - 11^T/n and the unbiased HSIC formula of Song et al. 2012 term by term -- so they share no
code or tricks (feature centring, projection-style unbiased centring, einsum batching) with the
module under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.cka import (
    CKAAccumulator,
    cka,
    layer_hooks,
    layer_presets,
    minibatch_cka,
    reduce_spatial,
)
from bench.core.errors import UserError

# ---------------------------------------------------------------------------------------------
# Literal references
# ---------------------------------------------------------------------------------------------


def ref_linear_gram(x):
    return x @ x.T


def ref_rbf_gram(x, threshold=1.0):
    """Kornblith et al. 2019: sigma^2 = threshold^2 * median of all n x n squared distances."""
    n = x.shape[0]
    sq = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    return np.exp(-sq / (2 * threshold**2 * np.median(sq)))


def ref_hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased(k, l):
    """Song et al. 2012, eq. 5: [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def ref_cka(x, y, kernel="linear", debiased=False, threshold=1.0):
    gram = ref_linear_gram if kernel == "linear" else (lambda a: ref_rbf_gram(a, threshold))
    hsic = ref_hsic_unbiased if debiased else ref_hsic_biased
    k, l = gram(np.asarray(x, np.float64)), gram(np.asarray(y, np.float64))
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def ref_minibatch_cka(batches_x, batches_y):
    """Nguyen et al. 2021: sum the unbiased HSIC of each minibatch, then take the ratio."""
    xy = xx = yy = 0.0
    for bx, by in zip(batches_x, batches_y):
        k, l = ref_linear_gram(np.asarray(bx, np.float64)), ref_linear_gram(np.asarray(by, np.float64))
        xy += ref_hsic_unbiased(k, l)
        xx += ref_hsic_unbiased(k, k)
        yy += ref_hsic_unbiased(l, l)
    return xy / np.sqrt(xx * yy)


def related_pair(n=40, dx=12, dy=7, seed=0):
    """Two representations sharing structure (so CKA is neither 0 nor 1) with non-zero means."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) + 3.0
    y = np.tanh(x @ rng.normal(size=(dx, dy))) + 0.5 * rng.normal(size=(n, dy))
    return x, y


def random_orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


VARIANTS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]

# ---------------------------------------------------------------------------------------------
# cka()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,debiased", VARIANTS)
def test_matches_literal_formulas(kernel, debiased):
    x, y = related_pair()
    got = cka(x, y, kernel=kernel, debiased=debiased)
    want = ref_cka(x, y, kernel, debiased)
    assert 0.05 < want < 0.99  # a discriminating case, not a trivial 0 or 1
    assert got == pytest.approx(want, abs=1e-10)


def test_rbf_threshold_is_used():
    x, y = related_pair(seed=1)
    for threshold in (0.5, 2.0):
        assert cka(x, y, "rbf", threshold=threshold) == pytest.approx(ref_cka(x, y, "rbf", threshold=threshold), abs=1e-10)
    assert abs(cka(x, y, "rbf", threshold=0.5) - cka(x, y, "rbf", threshold=2.0)) > 1e-3


@pytest.mark.parametrize("kernel,debiased", VARIANTS)
def test_self_similarity_is_one(kernel, debiased):
    x, _ = related_pair()
    assert cka(x, x, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    x, y = related_pair()
    base = cka(x, y, debiased=debiased)
    q = random_orthogonal(x.shape[1], seed=3)
    assert cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(x, 7.5 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(0.01 * (x @ q), 30.0 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    # ...but not to an arbitrary invertible linear map: the test can tell the difference.
    a = np.diag(np.linspace(0.1, 10.0, x.shape[1]))
    assert abs(cka(x @ a, y, debiased=debiased) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_invariant_to_orthogonal_transform(debiased):
    x, y = related_pair()
    q = random_orthogonal(x.shape[1], seed=4)
    assert cka(x @ q, y, "rbf", debiased) == pytest.approx(cka(x, y, "rbf", debiased), abs=1e-10)


def test_debiased_is_near_zero_for_independent_inputs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 64)), rng.normal(size=(500, 32))
    for kernel in ("linear", "rbf"):
        biased, debiased = cka(x, y, kernel), cka(x, y, kernel, debiased=True)
        assert abs(debiased) < 0.01
        assert biased > 0.05 and biased > 10 * abs(debiased)


def test_accepts_torch_tensors_of_any_float_dtype():
    x, y = related_pair()
    want = cka(x, y, debiased=True)
    got = cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), debiased=True)
    assert isinstance(got, float) and got == pytest.approx(want, abs=1e-5)


def test_row_count_mismatch_is_a_clear_error():
    x, y = related_pair()
    for call in (lambda: cka(x, y[:-1]), lambda: minibatch_cka([x], [y[:-1]])):
        with pytest.raises((ValueError, UserError)) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "40" in msg and "39" in msg


def test_other_bad_inputs():
    x, y = related_pair()
    with pytest.raises(UserError, match="kernel"):
        cka(x, y, kernel="cosine")
    with pytest.raises(UserError, match="at least 4"):
        cka(x[:3], y[:3], debiased=True)
    with pytest.raises(UserError, match="examples x features"):
        cka(x.reshape(40, 3, 4), y)


# ---------------------------------------------------------------------------------------------
# minibatch_cka and the accumulator
# ---------------------------------------------------------------------------------------------


def test_minibatch_single_batch_equals_debiased_full_batch():
    x, y = related_pair(n=64)
    assert minibatch_cka([x], [y]) == pytest.approx(cka(x, y, debiased=True), abs=1e-12)


def test_minibatch_matches_literal_reference_with_unequal_batches():
    x, y = related_pair(n=90)
    cuts = [0, 32, 64, 84, 90]  # last batch smaller, as a DataLoader's can be
    bx = [x[a:b] for a, b in zip(cuts, cuts[1:])]
    by = [y[a:b] for a, b in zip(cuts, cuts[1:])]
    want = ref_minibatch_cka(bx, by)
    assert minibatch_cka(bx, by) == pytest.approx(want, abs=1e-10)
    assert abs(want - ref_cka(x, y, debiased=True)) > 1e-4  # minibatching really is different


def test_minibatch_rejects_tiny_batches():
    x, y = related_pair()
    with pytest.raises((ValueError, UserError), match="at least 4"):
        minibatch_cka([x[:20], x[20:23]], [y[:20], y[20:23]])


def _layer_batches(n_batches=3, batch=16, seed=0):
    """Fake per-layer features: 4-D maps and 2-D vectors of different widths, correlated."""
    g = torch.Generator().manual_seed(seed)
    out_a, out_b = [], []
    for _ in range(n_batches):
        base = torch.randn(batch, 8, 5, 5, generator=g)
        a = [torch.relu(base), torch.relu(base[:, :4] * 2 + 1), torch.randn(batch, 6, generator=g)]
        b = [base.flatten(1)[:, :30] + 0.3 * torch.randn(batch, 30, generator=g), torch.relu(-base)]
        out_a.append(a)
        out_b.append(b)
    return out_a, out_b


@pytest.mark.parametrize("reduction", ["mean", "flatten", "subsample"])
def test_accumulator_equals_per_pair_minibatch_cka(reduction):
    feats_a, feats_b = _layer_batches()
    acc = CKAAccumulator(3, 2, reduction=reduction, max_positions=7)
    for fa, fb in zip(feats_a, feats_b):
        acc.update(fa, fb)
    matrix = acc.compute()
    assert matrix.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            xs = [reduce_spatial(fa[i], reduction, 7) for fa in feats_a]
            ys = [reduce_spatial(fb[j], reduction, 7) for fb in feats_b]
            assert matrix[i, j] == pytest.approx(minibatch_cka(xs, ys), abs=1e-10)
            assert matrix[i, j] == pytest.approx(ref_minibatch_cka([t.numpy() for t in xs], [t.numpy() for t in ys]), abs=1e-8)


def test_accumulator_same_network_is_symmetric_with_unit_diagonal():
    feats_a, _ = _layer_batches(n_batches=4)
    acc = CKAAccumulator(3, same=True)
    for fa in feats_a:
        acc.update(fa)
    m = acc.compute()
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), np.ones(3))
    for i in range(3):
        for j in range(3):
            xs = [reduce_spatial(fa[i]) for fa in feats_a]
            ys = [reduce_spatial(fa[j]) for fa in feats_a]
            assert m[i, j] == pytest.approx(minibatch_cka(xs, ys), abs=1e-10)


def test_accumulator_bad_input():
    feats_a, feats_b = _layer_batches(n_batches=1)
    acc = CKAAccumulator(3, 2)
    with pytest.raises(UserError, match="expected 3 layer"):
        acc.update(feats_a[0][:2], feats_b[0])
    with pytest.raises((ValueError, UserError), match="16 and 15"):
        acc.update(feats_a[0], [f[:15] for f in feats_b[0]])
    with pytest.raises(UserError, match="at least 4"):
        acc.update([f[:3] for f in feats_a[0]], [f[:3] for f in feats_b[0]])
    with pytest.raises(UserError, match="before any update"):
        acc.compute()


# ---------------------------------------------------------------------------------------------
# Robustness: ReLU feature maps in float32
# ---------------------------------------------------------------------------------------------


def _plain_relu_convnet(seed=0):
    """8 conv + ReLU layers, He-initialised, no normalisation: large positive activations."""
    layers, c = [], 3
    with torch.random.fork_rng():  # seeded weights without touching the global generator
        torch.manual_seed(seed)
        for i, width in enumerate([16, 16, 32, 32, 64, 64, 64, 64]):
            conv = nn.Conv2d(c, width, 3, padding=1, stride=2 if i in (2, 4, 6) else 1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            c = width
    return nn.Sequential(*layers).eval()


def _naive_float32_minibatch_matrix(batches):
    """The textbook float32 route (uncentred features, float32 Grams, Song's formula term by
    term) -- used only to show this test's data is the hard case."""
    xy = torch.zeros(8, 8)
    for feats in batches:
        grams = torch.stack([f @ f.T for f in feats])
        n = grams.shape[-1]
        g = grams * (1 - torch.eye(n))
        tr = torch.einsum("aij,bij->ab", g, g)
        sums = g.sum(dim=(1, 2))
        rows = g.sum(dim=2)
        xy += (tr + torch.outer(sums, sums) / ((n - 1) * (n - 2)) - 2 / (n - 2) * rows @ rows.T) / (n * (n - 3))
    d = torch.sqrt(torch.diag(xy))
    return (xy / d[:, None] / d[None, :]).numpy()


# Mean pooling gets more images: pooled features of random images are nearly unrelated across
# distant layers, and the estimator's spread around 0 shrinks with n. Flatten is costlier.
@pytest.mark.parametrize("reduction,n_images", [("mean", 256), ("flatten", 64)])
def test_float32_relu_features_give_valid_accurate_cka(reduction, n_images):
    net = _plain_relu_convnet()
    images = torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    names = [str(i) for i in range(1, 16, 2)]  # the ReLUs
    acc = CKAAccumulator(8, same=True, reduction=reduction)
    batches = []
    with layer_hooks(net, names) as out, torch.no_grad():
        for xb in images.split(32):
            net(xb)
            feats = list(out.values())
            assert all(f.dtype == torch.float32 for f in feats)
            acc.update(feats)
            batches.append([reduce_spatial(f, reduction) for f in feats])
    m = acc.compute()

    # Reference: the same float32 features, everything after that in numpy float64, literally.
    ref_xy = np.zeros((8, 8))
    for feats in batches:
        grams = [ref_linear_gram(f.double().numpy()) for f in feats]
        ref_xy += np.array([[ref_hsic_unbiased(grams[i], grams[j]) for j in range(8)] for i in range(8)])
    d = np.sqrt(np.diag(ref_xy))
    ref = ref_xy / d[:, None] / d[None, :]

    assert np.all(np.isfinite(m))
    # Debiased CKA of nearly unrelated layers estimates ~0 and can dip a little below it.
    assert m.min() > -0.01 and m.max() <= 1 + 1e-9
    np.testing.assert_allclose(m, ref, atol=1e-6)
    # The case is genuinely hard: the naive float32 computation is far off (or NaN) here.
    naive = _naive_float32_minibatch_matrix(batches)
    assert not np.all(np.isfinite(naive)) or np.abs(naive - ref).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# reduce_spatial, hooks and presets
# ---------------------------------------------------------------------------------------------


def test_reduce_spatial_modes():
    f = torch.randn(5, 3, 4, 6)
    assert torch.allclose(reduce_spatial(f), f.mean(dim=(2, 3)))
    assert torch.equal(reduce_spatial(f, "flatten"), f.reshape(5, -1))
    sub = reduce_spatial(f, "subsample", max_positions=7)
    assert sub.shape == (5, 3 * 7)
    assert torch.equal(sub, reduce_spatial(f, "subsample", max_positions=7))  # same positions every call
    # The columns are a subset of the flattened map's, the same positions in every channel.
    flat = f.reshape(5, 3, 24)
    keep = [p for p in range(24) if torch.equal(flat[:, 0, p], sub.reshape(5, 3, 7)[:, 0, 0])]
    assert len(keep) == 1
    assert torch.equal(reduce_spatial(f, "subsample", max_positions=100), f.reshape(5, -1))
    tokens = torch.randn(5, 10, 8)  # ViT: B x N x C
    assert torch.allclose(reduce_spatial(tokens), tokens.mean(dim=1))
    with pytest.raises(UserError, match="mean, flatten, subsample"):
        reduce_spatial(f, "max")


def test_resnet_presets_on_harness_encoders():
    from bench.core.models.backbones import create_encoder

    enc = create_encoder("resnet18")
    assert layer_presets(enc, "stages") == ["act1", "layer1", "layer2", "layer3", "layer4"]
    blocks = layer_presets(enc, "blocks")
    assert blocks == ["act1"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    enc10 = create_encoder("resnet10t")
    assert layer_presets(enc10, "blocks") == ["act1", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]

    with layer_hooks(enc10, layer_presets(enc10, "stages")) as out, torch.no_grad():
        levels = enc10(torch.rand(2, 3, 64, 64))
    assert [tuple(t.shape) for t in out.values()] == [tuple(t.shape) for t in levels]
    assert not any(m._forward_hooks for m in enc10.modules())  # hooks removed on exit


def test_vit_blocks_preset():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
    assert layer_presets(vit, "blocks") == ["blocks.0", "blocks.1", "blocks.2"]
    with pytest.raises(UserError, match="available: blocks"):
        layer_presets(vit, "stages")
    with layer_hooks(vit, ["blocks.0", "blocks.2"]) as out, torch.no_grad():
        vit(torch.rand(4, 3, 32, 32))
    assert [reduce_spatial(t).shape for t in out.values()] == [(4, 192), (4, 192)]


def test_unknown_preset_and_names_are_one_line_user_errors():
    from bench.core.models.backbones import create_encoder

    enc = create_encoder("resnet10t")
    with pytest.raises(UserError) as err:
        layer_presets(enc, "layers")
    assert "stages" in str(err.value) and "blocks" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        with layer_hooks(enc, ["layer1", "layer9"]):
            pass
    assert "'layer9'" in str(err.value) and "layer1.0" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no layer presets"):
        layer_presets(nn.Sequential(nn.Linear(2, 2)), "blocks")
