"""Centered Kernel Alignment (CKA): how similar are two networks' layer representations?

Public API
----------
``cka(X, Y, kernel="linear" | "rbf", debiased=False, threshold=1.0) -> float``
    CKA of two example x feature matrices (numpy arrays or torch tensors; same number of rows n,
    any widths), Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited":

        CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L)),   K, L = Gram matrices of X, Y.

    ``debiased=False`` uses the biased HSIC (centring H K H, H = I - 11^T/n); ``debiased=True``
    the unbiased HSIC_1 estimator of Song et al. 2012 (as in Nguyen et al. 2021), which removes
    the positive bias that makes biased CKA of *unrelated* wide representations far from 0 at
    small n. ``kernel="rbf"``: K_ij = exp(-d_ij^2 / (2 sigma^2)) with sigma = threshold x the
    median pairwise distance -- Kornblith's heuristic, taken exactly as their reference code does:
    sigma^2 = threshold^2 x median of the n x n squared-distance matrix (zero diagonal included).

``minibatch_cka(batches_X, batches_Y) -> float``
    Linear-kernel CKA estimated from minibatches (Nguyen et al. 2021, "Do Wide and Deep Networks
    Learn the Same Things?"): HSIC_1 of each minibatch pair is summed over minibatches, then
    CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L)). Memory is O(batch^2), not
    O(n^2), and with one batch it equals ``cka(X, Y, debiased=True)``. Batches need >= 4 rows.

``CKAAccumulator(n_layers_a, n_layers_b, same=False, reduction="mean")``
    Streaming layer x layer CKA matrix between two networks (or one with itself, ``same=True``)
    in one pass over a data loader: ``update(feats_a, feats_b)`` per batch, ``compute()`` at the
    end. Per batch it forms one B x B Gram per layer, prepares it once (unbiased centring), stacks
    each side into (L, B, B) and gets every HSIC(K_i, L_j) from a single einsum. It runs on the
    device of the features it is given.

``reduce_spatial(feature, mode="mean" | "flatten" | "subsample", max_positions=64)``
    Turns a B x C x H x W map (or ViT tokens B x N x C) into a B x D matrix. The accumulator
    uses it on every feature it is fed.

``layer_hooks(model, names)`` / ``layer_presets(model, preset)``
    Forward hooks collecting named submodules' outputs of any torch model, and the usual layer
    lists ("stages", "blocks") of timm ResNets and ViTs (the harness's ``create_encoder``).

``layer_cka(encoder_a, encoder_b, batches, layers="stages", reduce="mean")``
    The layer x layer matrix of two harness encoders (or one with itself) over uint8 image
    batches. Here, on the ground floor, because both the transfer stage (the pre-trained vs
    fine-tuned matrix at the end of a full cell, while its weights are in memory) and `bench cka`
    / `bench aggregate` (from checkpoint files) compute it, and must compute it the same way.
    ``encoder_from_checkpoint(path)`` loads a harness checkpoint's encoder for it.

Numerical note
--------------
ReLU feature maps (and mean-pooled ones above all) are large positive numbers that vary little
from example to example, so their Gram entries are nearly equal and the unbiased-HSIC terms
(trace, sum-of-sums, row-sum products) cancel to a tiny difference of huge numbers; in float32
that difference is rounding noise, and published float32 code returns garbage, clamped values
or NaN. Here features are centred per batch (every HSIC used here is exactly invariant to
adding a constant vector to all examples) and Grams are formed and accumulated in float64.
Measured: on two random-init resnet18s (benchmarks/cka_vs_pytorch_cka.py) the float32 package
pytorch-cka is off by up to 0.055 from a float64 evaluation of its own formula, this module by
~2e-9; on the tests' plain ReLU conv net the textbook float32 formula gives NaN.

Debiased / minibatch CKA is an unbiased-HSIC ratio, not a squared cosine: for unrelated layers it
scatters around 0 and can be slightly negative (it is never clamped here).

Example::

    names = layer_presets(model_a, "blocks")
    acc = CKAAccumulator(len(names), len(names))
    with layer_hooks(model_a, names) as out_a, layer_hooks(model_b, names) as out_b, \\
            torch.inference_mode():
        for images in loader:
            model_a(images); model_b(images)
            acc.update(list(out_a.values()), list(out_b.values()))
    matrix = acc.compute()   # numpy, n_a x n_b
"""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bench.core.checkpoint import load_checkpoint, load_encoder_weights
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder, normalize

__all__ = [
    "CKAInputError",
    "cka",
    "minibatch_cka",
    "CKAAccumulator",
    "reduce_spatial",
    "layer_hooks",
    "layer_presets",
    "layer_cka",
    "encoder_from_checkpoint",
]

REDUCTIONS = ("mean", "flatten", "subsample")
PRESETS = ("stages", "blocks")


class CKAInputError(UserError, ValueError):
    """Bad input to a CKA function: a `UserError` (one-line message) that is also a `ValueError`,
    so both the CLI's handler and ordinary numeric code catch it."""


# ---------------------------------------------------------------------------------------------
# Core: Grams, centring, HSIC
# ---------------------------------------------------------------------------------------------

def _as_matrix(x, name: str) -> torch.Tensor:
    """numpy / torch -> float64 tensor (n x d) on the input's device; 1-D means one feature."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise CKAInputError(
            f"{name} must be an examples x features matrix, got shape {tuple(t.shape)}; "
            "reduce feature maps first, e.g. with bench.core.cka.reduce_spatial"
        )
    return t.to(torch.float64)


def _check_rows(n_x: int, n_y: int, what: str = "X and Y") -> None:
    if n_x != n_y:
        raise CKAInputError(
            f"{what} must describe the same examples: got {n_x} and {n_y} rows"
        )


def _centre_columns(x: torch.Tensor) -> torch.Tensor:
    """Subtract the per-feature mean. Leaves every HSIC used here unchanged (biased: H absorbs it;
    unbiased: the Gram changes by a_i + a_j + c, which unbiased centring annihilates) and removes
    the large common component that causes cancellation. The mean is taken as a (1 x n) @ (n x D)
    product: on CPU that measured ~3x faster than a dim-0 reduction of a wide flattened map."""
    weights = torch.full((1, x.shape[0]), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    return x - weights @ x


def _gram_linear(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def _gram_rbf(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Kornblith's RBF Gram: bandwidth from the median squared distance over all n x n pairs."""
    sq_norms = (x * x).sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min_(0.0)
    sq_dist.fill_diagonal_(0.0)
    flat = sq_dist.flatten().sort().values
    m = flat.numel()
    sq_median = 0.5 * (flat[(m - 1) // 2] + flat[m // 2])  # numpy's median (mean of the middle two)
    if sq_median <= 0:
        raise CKAInputError("rbf kernel: median pairwise distance is 0 (most examples identical)")
    return torch.exp(-sq_dist / (2.0 * threshold**2 * sq_median))


def _centre_biased(gram: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T/n, without forming H."""
    g = gram - gram.mean(dim=0, keepdim=True)
    return g - g.mean(dim=1, keepdim=True)


def _centre_unbiased(grams: torch.Tensor) -> torch.Tensor:
    """Map each (..., n, n) symmetric Gram K to P(K) such that <P(K), P(L)>_F / (n (n - 3)) equals
    the unbiased HSIC_1 of Song et al. 2012:

        [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3)),  K~ = K, diag 0.

    P zeroes the diagonal and removes the "row effect + column effect" part of the off-diagonal
    entries (it is the orthogonal projection that makes the estimator a plain inner product),
    which is what lets a whole stack of layers be compared with one einsum.
    """
    n = grams.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=grams.device)
    g = grams.masked_fill(eye, 0.0)
    means = g.sum(dim=-2) / (n - 2)
    means = means - means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    g = g - means[..., :, None] - means[..., None, :]
    return g.masked_fill(eye, 0.0)


def _prepared_grams(feats: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(L, B, B) float64: unbiased-centred linear Grams of B x D_l features (centred, then
    multiplied in `dtype`), scaled so that Frobenius inner products of two of them are HSIC_1
    values -- so batches of different sizes add up with the right weights."""
    n = feats[0].shape[0]
    grams = torch.stack([_gram_linear(_centre_columns(f.to(dtype))).to(torch.float64) for f in feats])
    return _centre_unbiased(grams) / np.sqrt(n * (n - 3))


def _ratio(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    denom = np.sqrt(hsic_xx * hsic_yy) if hsic_xx > 0 and hsic_yy > 0 else 0.0
    return float(hsic_xy / denom) if denom > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Full-batch and minibatch CKA
# ---------------------------------------------------------------------------------------------

def cka(X, Y, kernel: str = "linear", debiased: bool = False, threshold: float = 1.0) -> float:
    """CKA between two representations of the same n examples (rows); see the module docstring.

    Computed in float64 on the inputs' device. Returns NaN when a representation is constant
    across examples (its HSIC with itself is 0, so CKA is undefined).
    """
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    _check_rows(x.shape[0], y.shape[0])
    y = y.to(x.device)
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise CKAInputError(
            f"CKA needs at least {4 if debiased else 2} examples"
            f"{' for the debiased estimator' if debiased else ''}, got {n}"
        )
    x, y = _centre_columns(x), _centre_columns(y)
    if kernel == "linear":
        k, l = _gram_linear(x), _gram_linear(y)
    elif kernel == "rbf":
        if not threshold > 0:
            raise CKAInputError(f"rbf threshold must be > 0, got {threshold}")
        k, l = _gram_rbf(x, threshold), _gram_rbf(y, threshold)
    else:
        raise CKAInputError(f"unknown kernel {kernel!r}; choose 'linear' or 'rbf'")
    centre = _centre_unbiased if debiased else _centre_biased
    kc, lc = centre(k), centre(l)
    # The common 1/(n-1)^2 or 1/(n(n-3)) HSIC normaliser cancels in the ratio.
    return _ratio(float((kc * lc).sum()), float((kc * kc).sum()), float((lc * lc).sum()))


def minibatch_cka(batches_X: Iterable, batches_Y: Iterable) -> float:
    """Linear CKA from paired minibatches (Nguyen et al. 2021), accumulating HSIC_1 per batch.

    ``batches_X`` and ``batches_Y`` yield matrices for the same examples in the same order
    (numpy or torch, B_i x D_x and B_i x D_y, every B_i >= 4).
    """
    acc = CKAAccumulator(1, 1, reduction="flatten")
    pairs = 0
    sentinel = object()
    for bx, by in itertools.zip_longest(batches_X, batches_Y, fillvalue=sentinel):
        if bx is sentinel or by is sentinel:
            raise CKAInputError("batches_X and batches_Y have different numbers of batches")
        bx, by = _as_matrix(bx, "batch of X"), _as_matrix(by, "batch of Y")
        _check_rows(bx.shape[0], by.shape[0], f"batch {pairs} of X and Y")
        acc.update([bx], [by.to(bx.device)])
        pairs += 1
    if not pairs:
        raise CKAInputError("minibatch_cka got no batches")
    return float(acc.compute()[0, 0])


# ---------------------------------------------------------------------------------------------
# Feature maps -> matrices
# ---------------------------------------------------------------------------------------------

def reduce_spatial(feature: torch.Tensor, mode: str = "mean", max_positions: int = 64,
                   seed: int = 0) -> torch.Tensor:
    """B x C x H x W (or ViT tokens B x N x C, or already B x D) -> B x D.

    mode="mean" (default): global average pool, B x C. Cheap (D = C, so a Gram costs B^2 C),
        comparable across layers of any resolution, and invariant to where in the image a
        pattern occurs; it measures similarity of what channels respond to, not of their
        spatial layout. The usual choice for CNN-wide similarity matrices at low cost.
    mode="flatten": B x (C H W), Kornblith et al.'s setting (and pytorch-cka's), spatially exact
        but D can be ~10^6 for early layers: costlier, and Grams of high-D ReLU maps are large.
    mode="subsample": B x (C k), a fixed subset of k = min(max_positions, H W) spatial positions
        (tokens), drawn with ``seed`` and depending only on (H, W, k, seed), so every batch uses
        the same positions: a flatten-like estimate at bounded cost.
    """
    if mode not in REDUCTIONS:
        raise CKAInputError(f"unknown reduction {mode!r}; choose one of {', '.join(REDUCTIONS)}")
    if feature.ndim == 2:
        return feature
    if feature.ndim == 3:  # transformer tokens B x N x C -> B x C x N
        feature = feature.transpose(1, 2)
    elif feature.ndim != 4:
        raise CKAInputError(f"expected a B x C x H x W map, B x N x C tokens or B x D, "
                            f"got shape {tuple(feature.shape)}")
    b, c = feature.shape[:2]
    positions = feature.reshape(b, c, -1)  # B x C x P
    if mode == "mean":
        return positions.mean(dim=2)
    if mode == "subsample" and positions.shape[2] > max_positions:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(positions.shape[2], generator=gen)[:max_positions].sort().values
        positions = positions[:, :, keep.to(positions.device)]
    return positions.reshape(b, -1)


# ---------------------------------------------------------------------------------------------
# Streaming layer x layer matrix
# ---------------------------------------------------------------------------------------------

class CKAAccumulator:
    """Layer x layer minibatch CKA matrix of two networks, accumulated one batch at a time.

    Per batch: each layer's features are reduced (``reduce_spatial``), centred, turned into one
    B x B Gram in ``dtype`` (float64 by default; see the module's numerical note), unbiased-centred
    and stacked to (L, B, B); one einsum then gives all HSIC_1(K_i, L_j). Nothing of size n x n
    (dataset) is ever formed. State lives on the device of the first batch's features.

    ``same=True``: one network against itself (``update(feats)``); the Grams are formed once and
    the result is exactly symmetric with a unit diagonal.

    ``dtype`` is the precision of feature centring and Gram products; the B x B Grams and all sums
    are float64 regardless. float32 roughly halves the CPU cost for flattened maps and, thanks to
    the centring, stays within ~1e-7 of float64 on the tests' ReLU network; float64 is the default
    because it has no such caveat (and the cost is small next to the forward passes).
    """

    def __init__(self, n_layers_a: int, n_layers_b: int | None = None, same: bool = False,
                 reduction: str = "mean", max_positions: int = 64,
                 dtype: torch.dtype = torch.float64):
        if n_layers_b is None:
            n_layers_b = n_layers_a
        if same and n_layers_b != n_layers_a:
            raise CKAInputError(f"same=True compares a network with itself: n_layers_a "
                                f"({n_layers_a}) and n_layers_b ({n_layers_b}) must agree")
        if reduction not in REDUCTIONS:
            raise CKAInputError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        self.n_a, self.n_b, self.same = n_layers_a, n_layers_b, same
        self.reduction, self.max_positions, self.dtype = reduction, max_positions, dtype
        self.hsic_ab: torch.Tensor | None = None  # (n_a, n_b) sums of HSIC_1(K_i, L_j)
        self.hsic_aa: torch.Tensor | None = None  # (n_a,)
        self.hsic_bb: torch.Tensor | None = None  # (n_b,)
        self.examples = 0

    def _prepare(self, feats: Sequence[torch.Tensor], n_expected: int, side: str) -> torch.Tensor:
        if len(feats) != n_expected:
            raise CKAInputError(f"network {side}: expected {n_expected} layer features, got {len(feats)}")
        mats = [reduce_spatial(f.detach(), self.reduction, self.max_positions).reshape(f.shape[0], -1)
                for f in feats]
        rows = {m.shape[0] for m in mats}
        if len(rows) != 1:
            raise CKAInputError(f"network {side}: layer features have different batch sizes {sorted(rows)}")
        b = rows.pop()
        if b < 4:
            raise CKAInputError(f"minibatch CKA needs batches of at least 4 examples "
                                f"(unbiased HSIC needs n > 3), got {b}")
        return _prepared_grams(mats, self.dtype)

    @torch.no_grad()
    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor] | None = None) -> None:
        """Add one batch: per-layer features (B x ...) of the same B examples from each network."""
        pa = self._prepare(feats_a, self.n_a, "a")
        if self.same:
            if feats_b is not None and feats_b is not feats_a:
                raise CKAInputError("same=True: call update(feats) with one network's features")
            pb = pa
        else:
            if feats_b is None:
                raise CKAInputError("update needs the features of network b (or use same=True)")
            pb = self._prepare(feats_b, self.n_b, "b")
            _check_rows(pa.shape[-1], pb.shape[-1], "the two networks' features")
            pb = pb.to(pa.device)
        if self.hsic_ab is None:
            zeros = dict(dtype=pa.dtype, device=pa.device)
            self.hsic_ab = torch.zeros(self.n_a, self.n_b, **zeros)
            self.hsic_aa = torch.zeros(self.n_a, **zeros)
            self.hsic_bb = self.hsic_aa if self.same else torch.zeros(self.n_b, **zeros)
        self.hsic_ab += torch.einsum("aij,bij->ab", pa, pb)
        self.hsic_aa += torch.einsum("aij,aij->a", pa, pa)
        if not self.same:  # with same=True, hsic_bb *is* hsic_aa
            self.hsic_bb += torch.einsum("aij,aij->a", pb, pb)
        self.examples += pa.shape[-1]

    def compute(self) -> np.ndarray:
        """n_a x n_b float64 matrix of CKA values; NaN where a layer was constant over the data."""
        if self.hsic_ab is None:
            raise CKAInputError("CKAAccumulator.compute() called before any update()")
        ab = self.hsic_ab.cpu().numpy()
        aa, bb = self.hsic_aa.cpu().numpy(), self.hsic_bb.cpu().numpy()
        denom = np.sqrt(np.clip(aa, 0.0, None)[:, None] * np.clip(bb, 0.0, None)[None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(denom > 0, ab / np.where(denom > 0, denom, 1.0), np.nan)
        if self.same:  # exact symmetry and unit diagonal despite rounding
            out = 0.5 * (out + out.T)
            np.fill_diagonal(out, np.where(aa > 0, 1.0, np.nan))
        return out


# ---------------------------------------------------------------------------------------------
# Getting per-layer features out of a model
# ---------------------------------------------------------------------------------------------

def _list_for_message(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


@contextlib.contextmanager
def layer_hooks(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of the named submodules while the context is open.

    Yields a dict keyed by ``names`` in that order; each forward pass overwrites its values with
    that pass's (detached) outputs, so ``list(out.values())`` is the per-layer feature list to give
    ``CKAAccumulator.update``. A module returning a tuple contributes its first element. Hooks are
    removed on exit, even after an exception.
    """
    modules = dict(model.named_modules())
    if len(set(names)) != len(names):
        raise UserError(f"layer names repeat: {', '.join(names)}")
    missing = [n for n in names if n not in modules]
    if missing:
        available = [n for n in modules if n]
        raise UserError(f"no module named {', '.join(map(repr, missing))} in "
                        f"{type(model).__name__}; available: {_list_for_message(available)}")
    outputs: dict[str, torch.Tensor | None] = {n: None for n in names}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            outputs[name] = output.detach() if isinstance(output, torch.Tensor) else output
        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _find_container(names: Sequence[str], leaf: str) -> str | None:
    """Prefix ('' or 'model.') of the first module called `leaf`, e.g. 'model.blocks' -> 'model.'."""
    for n in names:
        if n == leaf or n.endswith("." + leaf):
            return n[: -len(leaf)]
    return None


def _numbered_children(names: Sequence[str], parent: str) -> list[str]:
    pattern = re.compile(re.escape(parent) + r"\.(\d+)$")
    children = [n for n in names if pattern.match(n)]
    return sorted(children, key=lambda n: int(n.rsplit(".", 1)[1]))


def layer_presets(model: nn.Module, preset: str) -> list[str]:
    """Module names for a standard set of layers of a timm ResNet or ViT.

    ResNets (timm, ``features_only`` or not): "stages" = stem activation ``act1`` then ``layer1``
    ... ``layer4`` (the features_only levels); "blocks" = ``act1`` then every residual block
    ``layer1.0``, ``layer1.1``, .... ViTs: "blocks" = ``blocks.0`` ... ``blocks.N-1``. Names carry
    any wrapper prefix (timm's ``FeatureGetterNet`` uses ``model.``). Works on whatever stages
    the model actually has (an encoder built with fewer ``out_indices`` has fewer).
    """
    names = [n for n, _ in model.named_modules() if n]
    resnet = _find_container(names, "layer1")
    vit = _find_container(names, "blocks")
    if resnet is not None:
        family, available = "ResNet", PRESETS
    elif vit is not None:
        family, available = "ViT", ("blocks",)
    else:
        raise UserError(f"no layer presets for {type(model).__name__} (not a timm ResNet or ViT); "
                        f"pass module names to layer_hooks, e.g. {_list_for_message(names, 12)}")
    if preset not in available:
        raise UserError(f"unknown layer preset {preset!r} for a {family}; available: {', '.join(available)}")
    if family == "ViT":
        return _numbered_children(names, vit + "blocks")
    stages = [f"{resnet}layer{i}" for i in range(1, 5) if f"{resnet}layer{i}" in names]
    stem = [f"{resnet}act1"] if f"{resnet}act1" in names else []
    if preset == "stages":
        return stem + stages
    return stem + [block for stage in stages for block in _numbered_children(names, stage)]


# ---------------------------------------------------------------------------------------------
# Two harness encoders
# ---------------------------------------------------------------------------------------------

def encoder_from_checkpoint(path, device=None) -> nn.Module:
    """The encoder of a harness checkpoint file, with its input normalisation, in eval mode."""
    ckpt = load_checkpoint(path)
    encoder = create_encoder(ckpt.meta["arch"])
    load_encoder_weights(encoder, ckpt.encoder, source=str(ckpt.path))
    encoder.normalization = ckpt.meta["normalization"]
    return encoder.to(device).eval() if device is not None else encoder.eval()


@torch.no_grad()
def layer_cka(encoder_a: nn.Module, encoder_b: nn.Module | None, batches, layers: str | list[str] = "stages",
              reduce: str = "mean") -> tuple[np.ndarray, list[str], list[str]]:
    """CKA matrix (layers of a x layers of b) over uint8 image batches (B x 3 x H x W, B >= 4);
    `encoder_b=None`: a against itself. Each encoder sees the images on its own device, scaled to
    0..1 and normalised its way; callers put encoders in eval mode (BatchNorm's running stats)."""
    matrix, names_a, names_b, _ = _layer_cka(encoder_a, encoder_b, batches, layers, reduce, within=False)
    return matrix, names_a, names_b


def layer_cka_with_within(encoder_a: nn.Module, encoder_b: nn.Module, batches, layers: str | list[str] = "stages",
                          reduce: str = "mean") -> tuple[np.ndarray, list[str], list[str], tuple[np.ndarray, np.ndarray]]:
    """`layer_cka(a, b)` plus each network against itself (a x a, b x b), from the same forward
    passes (MeSa's within-network "layer 0 versus all" is the first row of those)."""
    return _layer_cka(encoder_a, encoder_b, batches, layers, reduce, within=True)


def _layer_cka(encoder_a, encoder_b, batches, layers, reduce, within):
    def names(encoder):
        return layer_presets(encoder, layers) if isinstance(layers, str) else list(layers)

    def run(encoder, images):
        device = next(encoder.parameters()).device
        encoder(normalize(images.to(device).float() / 255.0, encoder.normalization))

    same = encoder_b is None
    names_a = names(encoder_a)
    names_b = names_a if same else names(encoder_b)
    # The accumulator reduces the feature maps itself (`reduce_spatial`).
    acc = CKAAccumulator(len(names_a), len(names_b), same=same, reduction=reduce)
    # Within-network matrices: the same features, each network against itself (same=True: symmetric,
    # unit diagonal); the Grams are recomputed per accumulator, B x B, cheap next to the forward passes.
    acc_aa = CKAAccumulator(len(names_a), same=True, reduction=reduce) if within and not same else None
    acc_bb = CKAAccumulator(len(names_b), same=True, reduction=reduce) if within and not same else None
    with contextlib.ExitStack() as stack:
        feats_a = stack.enter_context(layer_hooks(encoder_a, names_a))
        feats_b = None if same else stack.enter_context(layer_hooks(encoder_b, names_b))
        for images in batches:
            run(encoder_a, images)
            if not same:
                run(encoder_b, images)
            fa = list(feats_a.values())
            fb = None if same else [f.to(feats_a[names_a[0]].device) for f in feats_b.values()]
            acc.update(fa, fb)
            if acc_aa is not None:
                acc_aa.update(fa)
                acc_bb.update(fb)
    return acc.compute(), names_a, names_b, (acc_aa.compute(), acc_bb.compute()) if acc_aa is not None else None
