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


class LinearHeadBank:
    def __init__(self, heads: list[LinearHead]):
        if not self.fits(heads):
            raise ValueError("a LinearHeadBank takes LinearHeads of one form, over the same levels, with the grid loss")
        self.heads = heads

    @staticmethod
    def fits(decoders: list) -> bool:
        if not decoders or not all(isinstance(d, LinearHead) for d in decoders):
            return False
        first = decoders[0]
        return all(d.loss_at == "grid" and d.form == first.form and d.parts_levels() == first.parts_levels()
                   and d.grid_stride == first.grid_stride for d in decoders)

    def grid_scores(self, features: list[torch.Tensor], active: list[int], training: bool) -> torch.Tensor:
        """N×len(active)×classes×gh×gw scores of the `active` heads on the grid. In training, the
        batch's statistics normalise (and every active head's running statistics take them in)."""
        heads = [self.heads[k] for k in active]
        total = None
        for slot, level in enumerate(heads[0].parts_levels()):
            x = features[level]
            bns = [h.parts()[slot][0] for h in heads]
            if training:
                stats = [_batch_statistics(x, bns)] * len(heads)
            else:
                stats = [(bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)) for bn in bns]
            weights, biases = [], []
            for h, bn, (mean, inv_std) in zip(heads, bns, stats):
                classifier = h.parts()[slot][1]
                w = classifier.weight.flatten(1)  # classes × channels
                scale = bn.weight * inv_std
                weights.append(w * scale)
                b = w @ (bn.bias - scale * mean)
                biases.append(b if classifier.bias is None else b + classifier.bias)
            s = F.conv2d(x, torch.cat(weights)[:, :, None, None], torch.cat(biases))
            total = s if total is None else total + resize_bilinear(s, total.shape[-2:])
        n, _, gh, gw = total.shape
        return total.view(n, len(heads), -1, gh, gw)

    def losses(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int,
               active: list[int]) -> torch.Tensor:
        """The grid cross-entropy of each active head (a vector), each the loss of `LinearHead.loss`."""
        scores = self.grid_scores(features, active, training=True)
        counts, labelled = cell_histograms(labels, tuple(scores.shape[-2:]), self.heads[0].grid_stride,
                                           scores.shape[2], ignore_index)
        log_p = F.log_softmax(scores.float(), dim=2)
        return -(counts.unsqueeze(1) * log_p).sum(dim=(0, 2, 3, 4)) / labelled.clamp(min=1)

    def predict(self, features: list[torch.Tensor], size: tuple[int, int], active: list[int]) -> list[torch.Tensor]:
        """Each active head's scores at `size`, as its `forward` in evaluation mode places them."""
        scores = self.grid_scores(features, active, training=False)
        return [self.heads[k].place(scores[:, j], size) for j, k in enumerate(active)]


@torch.no_grad()
def _batch_statistics(x: torch.Tensor, bns: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean and 1/sqrt(biased variance + eps) per channel, what training-mode BatchNorm
    normalises with, from BatchNorm's own kernel; that kernel also moves the first BatchNorm's
    running statistics (momentum, unbiased variance) and the others copy them, since every head
    of a bank sees the same batches."""
    lead = bns[0]
    momentum = lead.momentum
    if lead.track_running_stats:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average
            momentum = 1.0 / float(lead.num_batches_tracked)
    _, mean, inv_std = torch.native_batch_norm(x, None, None, lead.running_mean, lead.running_var, True,
                                               momentum or 0.0, lead.eps)
    for bn in bns[1:]:
        if bn.track_running_stats:
            bn.running_mean.copy_(lead.running_mean)
            bn.running_var.copy_(lead.running_var)
    return mean, inv_std
