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
        total = None
        for slot, level in enumerate(heads[0].parts_levels()):
            x = features[level]
            bns = [h.parts()[slot][0] for h in heads]
            classifiers = [h.parts()[slot][1] for h in heads]
            if training:  # one batch, so one mean and variance for every head
                sums = None if keys is None else self._channel_sums(x, slot, keys)
                mean, inv_std = _batch_statistics(x, bns, sums)
                mean, inv_std = mean[None], inv_std[None]
            else:
                mean = torch.stack([bn.running_mean for bn in bns])
                inv_std = torch.rsqrt(torch.stack([bn.running_var for bn in bns]) + bns[0].eps)
            # All heads folded at once (K × classes × channels): a handful of tensor operations
            # whatever K is, where a loop over the heads would be K times as many.
            w = torch.stack([c.weight.flatten(1) for c in classifiers])
            scale = torch.stack([bn.weight for bn in bns]) * inv_std  # K × channels
            shift = torch.stack([bn.bias for bn in bns]) - scale * mean
            folded = (w * scale[:, None, :]).flatten(0, 1)  # (K·classes) × channels
            bias = torch.bmm(w, shift[:, :, None])[..., 0]  # K × classes
            if classifiers[0].bias is not None:
                bias = bias + torch.stack([c.bias for c in classifiers])
            # The 1×1 convolution as a batched matrix product over each sample's pixels (no transposed
            # copy of the features, which torch.matmul would make); its backward is one too.
            n, c, h, w = x.shape
            s = torch.bmm(folded.expand(n, *folded.shape), x.reshape(n, c, h * w)) + bias.reshape(-1, 1)
            s = s.view(n, -1, h, w)
            total = s if total is None else total + resize_bilinear(s, total.shape[-2:])
        n, _, gh, gw = total.shape
        return total.view(n, len(heads), -1, gh, gw)

    def losses(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int,
               active: list[int], keys: list | None = None) -> torch.Tensor:
        """The grid cross-entropy of each active head (a vector), each the loss of `LinearHead.loss`;
        `keys` name the samples' views, whose histograms are then remembered."""
        scores = self.grid_scores(features, active, training=True, keys=keys)
        counts, labelled = self._histograms_of(labels, tuple(scores.shape[-2:]), scores.shape[2], ignore_index, keys)
        log_p = F.log_softmax(scores.float(), dim=2)
        return -(counts.unsqueeze(1) * log_p).sum(dim=(0, 2, 3, 4)) / max(int(labelled), 1)

    def _channel_sums(self, x: torch.Tensor, slot: int, keys: list) -> torch.Tensor:
        """Per sample of `x` (N×C×h×w, the features of the views `keys`), its channel sums and sums of
        squares in float64 (N×2×C), each view's counted once: a cached view's features never change."""
        out = []
        for j, key in enumerate(keys):
            memo = self._sums.get((key, slot))
            if memo is None or memo.shape[-1] != x.shape[1]:
                v = x[j].detach().reshape(x.shape[1], -1).double()
                memo = torch.stack([v.sum(1), (v * v).sum(1)])
                self._sums[(key, slot)] = memo
            out.append(memo)
        return torch.stack(out)

    def _histograms_of(self, labels, grid, num_classes, ignore_index, keys):
        stride = self.heads[0].grid_stride
        if keys is None:
            return cell_histograms(labels, grid, stride, num_classes, ignore_index)
        per_sample = []
        for j, key in enumerate(keys):
            memo = self._histograms.get(key)
            if memo is None or memo[0].shape[-2:] != grid:
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
def _batch_statistics(x: torch.Tensor, bns: list, sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean and 1/sqrt(biased variance + eps) per channel, what training-mode BatchNorm
    normalises with, folded into each BatchNorm's running statistics as `nn.BatchNorm2d` does:
    momentum (or the cumulative average when momentum is None) and the unbiased variance. From
    the samples' float64 channel `sums` (N×2×C) when given, else from BatchNorm's own kernel
    (which also moves the first BatchNorm's running statistics); every head of a bank sees the
    same batches, so the others copy the first one's."""
    lead = bns[0]
    momentum = lead.momentum
    if lead.track_running_stats:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average
            momentum = 1.0 / float(lead.num_batches_tracked)
    if sums is None:
        _, mean, inv_std = torch.native_batch_norm(x, None, None, lead.running_mean, lead.running_var, True,
                                                   momentum or 0.0, lead.eps)
    else:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        total = sums.sum(0)
        mean64 = total[0] / n
        var64 = (total[1] / n - mean64 * mean64).clamp(min=0)
        mean, inv_std = mean64.to(x.dtype), torch.rsqrt(var64 + lead.eps).to(x.dtype)
        if lead.track_running_stats:
            m = momentum or 0.0
            lead.running_mean.mul_(1 - m).add_(mean64.to(lead.running_mean.dtype), alpha=m)
            unbiased = var64 * (n / max(n - 1, 1))
            lead.running_var.mul_(1 - m).add_(unbiased.to(lead.running_var.dtype), alpha=m)
    for bn in bns[1:]:
        if bn.track_running_stats:
            bn.running_mean.copy_(lead.running_mean)
            bn.running_var.copy_(lead.running_var)
    return mean, inv_std
