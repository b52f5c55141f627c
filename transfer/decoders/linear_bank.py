"""K linear-probe heads evaluated as one: what makes a learning-rate sweep of a linear cell cheap.

The candidates of a linear cell's sweep (transfer/train.py) train on the same cached features and
the same batches; only their weights and optimisers differ. Run one after another, each head's
step is a few dozen small tensor operations whose fixed cost, not their arithmetic, dominates on a
CPU -- 8 candidates cost about 8 times one. `LinearHeadBank` computes all K heads' scores with one
convolution per level: each head's BatchNorm is folded into its 1×1 classifier (the batch's
statistics in training, the running ones in evaluation, exactly as `nn.BatchNorm2d` would
normalise), the folded weights of the K heads are stacked along the output channels, and the
coarser levels' scores are resampled to the grid once for all heads. The K grid losses
(`transfer.decoders.grid_loss`) share the labels' cell histograms. Gradients reach every head's
own BatchNorm affine and classifier through the folding, and each head's running statistics are
updated as its `nn.BatchNorm2d` would update them, so a head trained in a bank of K is the same
network, trained on the same batches, as the head trained alone (tests/test_sweep.py) -- a bank
of one is how a single linear candidate trains, so the two paths share their arithmetic.

Heads qualify when they are `LinearHead`s of one form over the same levels that train with the
grid loss (`LinearHeadBank.fits`); the others train one by one (transfer/train.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from transfer.decoders.grid_loss import cell_histograms
from transfer.decoders.linear import LinearHead, resize_bilinear


HISTOGRAM_MEMO_BYTES = 512 * 1024**2


class LinearHeadBank:
    def __init__(self, heads: list[LinearHead]):
        if not self.fits(heads):
            raise ValueError("a LinearHeadBank takes LinearHeads of one form, over the same levels, with the grid loss")
        self.heads = heads
        # A training view's labels never change: its cell histograms are counted once (up to a budget).
        self._histograms: dict = {}
        self._memo_bytes = 0
        self._sums: dict = {}  # (view, level slot) -> its float64 channel sums and sums of squares

    @staticmethod
    def fits(decoders: list) -> bool:
        if not decoders or not all(isinstance(d, LinearHead) for d in decoders):
            return False
        first = decoders[0]
        return all(d.loss_at == "grid" and d.form == first.form and d.parts_levels() == first.parts_levels()
                   and d.grid_stride == first.grid_stride for d in decoders)

    def grid_scores(self, features: list[torch.Tensor], active: list[int], training: bool,
                    keys: list | None = None) -> torch.Tensor:
        """N×len(active)×classes×gh×gw scores of the `active` heads on the grid. In training, the
        batch's statistics normalise (and every active head's running statistics take them in);
        with `keys`, from the samples' remembered channel sums."""
        heads = [self.heads[k] for k in active]
        levels = heads[0].parts_levels()
        widths = [features[i].shape[1] for i in levels]
        # Every level of every head at once: the heads' BatchNorm parameters and classifier weights
        # concatenated along channels (head-major), so that folding them costs a handful of tensor
        # operations whatever the number of heads and levels -- a loop over either would cost
        # that many times as many, and their arithmetic is too small to be what a step costs.
        parts = [part for h in heads for part in h.parts()]
        bns, classifiers = [bn for bn, _ in parts], [c for _, c in parts]
        k, width = len(heads), sum(widths)
        if training:  # one batch, so one mean and variance for every head
            mean, inv_std = _batch_statistics(features, levels, bns, len(levels),
                                              None if keys is None else self._channel_sums(features, levels, keys))
            mean, inv_std = mean[None], inv_std[None]
        else:
            mean = torch.cat([bn.running_mean for bn in bns]).view(k, width)
            inv_std = torch.rsqrt(torch.cat([bn.running_var for bn in bns]).view(k, width) + bns[0].eps)
        w = torch.cat([c.weight.flatten(1) for c in classifiers], dim=1)  # classes × (K·channels)
        w = w.view(w.shape[0], k, width).transpose(0, 1)  # K × classes × channels
        scale = torch.cat([bn.weight for bn in bns]).view(k, width) * inv_std
        shift = torch.cat([bn.bias for bn in bns]).view(k, width) - scale * mean
        folded = (w * scale[:, None, :]).flatten(0, 1)  # (K·classes) × channels
        # One bias per head for the sum of its levels' scores: bilinear resampling keeps constants.
        bias = torch.bmm(w, shift[:, :, None])[..., 0]  # K × classes
        if classifiers[0].bias is not None:
            bias = bias + torch.stack([h.parts()[0][1].bias for h in heads])
        total, start = None, 0
        for level, c in zip(levels, widths):
            x = features[level]
            n, _, h, w_ = x.shape
            # The 1×1 convolution as a batched matrix product over each sample's pixels (no transposed
            # copy of the features, which torch.matmul would make); its backward is one too.
            f = folded[:, start:start + c]
            s = torch.bmm(f.expand(n, *f.shape), x.reshape(n, c, h * w_)).view(n, -1, h, w_)
            total = s if total is None else total + resize_bilinear(s, total.shape[-2:])
            start += c
        total = total + bias.reshape(-1, 1, 1)
        n, _, gh, gw = total.shape
        return total.view(n, k, -1, gh, gw)

    def losses(self, features: list[torch.Tensor], labels, ignore_index: int,
               active: list[int], keys: list | None = None) -> torch.Tensor:
        """The grid cross-entropy of each active head (a vector), each the loss of `LinearHead.loss`;
        `keys` name the samples' views, whose histograms are then remembered. `labels` is the N×H×W
        tensor, or a callable that renders it, called only when a view's histograms are not
        remembered (a cached view's labels, like its features, never change)."""
        scores = self.grid_scores(features, active, training=True, keys=keys)
        counts, labelled = self._histograms_of(labels, tuple(scores.shape[-2:]), scores.shape[2], ignore_index, keys)
        log_p = F.log_softmax(scores.float(), dim=2)
        return -(counts.unsqueeze(1) * log_p).sum(dim=(0, 2, 3, 4)) / max(int(labelled), 1)

    def _channel_sums(self, features: list[torch.Tensor], levels: list[int], keys: list) -> torch.Tensor:
        """Per sample (the views `keys`), its channel sums and sums of squares of every read level
        in float64, levels concatenated along channels (N×2×C): each view's counted once, since a
        cached view's features never change."""
        width = sum(features[i].shape[1] for i in levels)
        out = []
        for j, key in enumerate(keys):
            memo = self._sums.get(key)
            if memo is None or memo.shape[-1] != width:
                per_level = []
                for i in levels:
                    v = features[i][j].detach().reshape(features[i].shape[1], -1).double()
                    per_level.append(torch.stack([v.sum(1), (v * v).sum(1)]))
                memo = self._sums[key] = torch.cat(per_level, dim=1)
            out.append(memo)
        return torch.stack(out)

    def _histograms_of(self, labels, grid, num_classes, ignore_index, keys):
        stride = self.heads[0].grid_stride
        if keys is None:
            return cell_histograms(labels() if callable(labels) else labels, grid, stride, num_classes, ignore_index)
        per_sample = []
        for j, key in enumerate(keys):
            memo = self._histograms.get(key)
            if memo is None or memo[0].shape[-2:] != grid:
                if callable(labels):
                    labels = labels()
                memo = cell_histograms(labels[j:j + 1], grid, stride, num_classes, ignore_index)
                size = memo[0].numel() * memo[0].element_size()
                if self._memo_bytes + size <= HISTOGRAM_MEMO_BYTES:
                    self._histograms[key] = memo
                    self._memo_bytes += size
            per_sample.append(memo)
        return torch.cat([c for c, _ in per_sample]), sum(int(n) for _, n in per_sample)

    def predict(self, features: list[torch.Tensor], size: tuple[int, int], active: list[int]) -> list[torch.Tensor]:
        """Each active head's scores at `size`, as its `forward` in evaluation mode places them."""
        scores = self.grid_scores(features, active, training=False)
        n, k, c = scores.shape[:3]
        placed = self.heads[0].place(scores.flatten(1, 2), size)  # every head's scores in one resampling
        return list(placed.view(n, k, c, *placed.shape[-2:]).unbind(1))


@torch.no_grad()
def _batch_statistics(features: list[torch.Tensor], levels: list[int], bns: list, per_head: int,
                      sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean and 1/sqrt(biased variance + eps) per channel of every read level (levels
    concatenated), what training-mode BatchNorm normalises with, folded into the BatchNorms'
    running statistics as `nn.BatchNorm2d` does: momentum (or the cumulative average when
    momentum is None) and the unbiased variance. `bns` are the heads' BatchNorms, `per_head` (one
    per level) after another. From the samples' float64 channel `sums` (N×2×C) when given, else
    from BatchNorm's own kernel (which also moves the first head's running statistics); every
    head of a bank sees the same batches, so the others copy the first one's."""
    lead, first = bns[0], bns[:per_head]
    momentum = lead.momentum
    if lead.track_running_stats:
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
        if momentum is None:  # a cumulative average
            momentum = 1.0 / float(lead.num_batches_tracked)
    dtype = features[levels[0]].dtype
    if sums is None:
        stats = [torch.native_batch_norm(features[i], None, None, bn.running_mean, bn.running_var, True,
                                         momentum or 0.0, bn.eps)[1:] for i, bn in zip(levels, first)]
        mean, inv_std = torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])
    else:
        # The levels differ in resolution: each channel's count of pixels is its own level's.
        counts = _pixel_counts(tuple(tuple(features[i].shape) for i in levels))
        total = sums.sum(0)
        mean64 = total[0] / counts
        var64 = (total[1] / counts - mean64 * mean64).clamp(min=0)
        mean, inv_std = mean64.to(dtype), torch.rsqrt(var64 + lead.eps).to(dtype)
        if lead.track_running_stats:
            m = momentum or 0.0
            widths = [bn.num_features for bn in first]
            unbiased = var64 * (counts / (counts - 1).clamp(min=1))
            running_means = [bn.running_mean for bn in first]
            running_vars = [bn.running_var for bn in first]
            torch._foreach_mul_(running_means, 1 - m)
            torch._foreach_add_(running_means, list(mean64.to(lead.running_mean.dtype).split(widths)), alpha=m)
            torch._foreach_mul_(running_vars, 1 - m)
            torch._foreach_add_(running_vars, list(unbiased.to(lead.running_var.dtype).split(widths)), alpha=m)
    if len(bns) > per_head and lead.track_running_stats:
        others = bns[per_head:]
        torch._foreach_copy_([bn.running_mean for bn in others], [first[j % per_head].running_mean for j in range(len(others))])
        torch._foreach_copy_([bn.running_var for bn in others], [first[j % per_head].running_var for j in range(len(others))])
    return mean, inv_std


@functools.lru_cache(maxsize=16)
def _pixel_counts(shapes: tuple) -> torch.Tensor:
    """Per channel of the concatenated levels of N×C×h×w `shapes`, its number of values N·h·w."""
    return torch.cat([torch.full((c,), float(n * h * w), dtype=torch.float64) for n, c, h, w in shapes])
