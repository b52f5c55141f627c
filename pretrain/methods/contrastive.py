"""Contrastive pre-training: MoCo v2 (Chen, Fan, Girshick, He 2020).

Two augmented views of each image (`pretrain.moco_views`): the query goes through the encoder and an
MLP projection head (last level, global average pooled → 512 → ReLU → 128), the key through
momentum copies of both, and InfoNCE (temperature 0.2) asks each query to pick its own key
among the keys of earlier batches held in a queue.

- The key networks are never optimised (requires_grad False); after each optimiser step they
  move towards the query networks, key = m·key + (1 - m)·query. The default m = 0.99 rather than
  the paper's 0.999: the paper trains for 200-800 ImageNet epochs (hundreds of thousands of
  steps), while a benchmark cell trains thousands; at 0.999 the key encoder would still be
  largely its random initialisation after a short run (0.999^1000 = 0.37 of it remains, 0.99^1000
  = 4e-5), and the negatives would come from a network the query has long left.
- The queue (default 1024 keys rather than the paper's 65536: the pre-training sets of the
  benchmark hold thousands of images, and a queue longer than the data holds stale copies of the
  query's own image as negatives) and its pointer are buffers of a module in `modules`, so a
  resumed run restores them. Keys are enqueued after the step's update, in `after_step`: a step
  skipped as non-finite enqueues nothing, so a NaN key can never poison the queue.
- Batch-norm leak: with BN computed over a batch, queries and keys of the same images share
  statistics, and the model can find its positive through them instead of the content. MoCo
  shuffles the key batch across GPUs so each GPU's BN sees other images than the matching query
  sub-batch. In one process we emulate those GPUs: the batch is split into `bn_groups` sub-batches
  with their own BN statistics, and the key batch is shuffled before the split and unshuffled
  after (the shuffle alone, with one group, would change nothing). bn_groups=1 disables it.
- The key networks start as copies of the query networks at the first step (after `--init`
  has loaded its weights), recorded in a buffer so a resume does not copy again.

Only the encoder goes in the checkpoint: the projection head is specific to the pretext task.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.errors import UserError
from bench.core.models.backbones import normalize
from bench.core.options import ImageSizeOption
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method
from pretrain.moco_views import moco_v2_view


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float):
    """InfoNCE of L2-normalised queries q (N×D) against their keys k (N×D) and shared negatives
    (M×D): cross-entropy with the positive at index 0 of each row's logits. Returns (loss,
    logits N×(1+M))."""
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.t()], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


class KeyQueue(nn.Module):
    """A ring buffer of L2-normalised keys, its write pointer, and whether the key networks have
    been copied from the query networks yet: all buffers, so snapshots hold them."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        # Random unit vectors as the initial negatives, as MoCo: uninformative but well-scaled.
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("synced", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size = self.keys.shape[0]
        index = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys[index] = keys.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)


def projection_head(cin: int, hidden: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


@register_method
class MoCo(PretrainMethod):
    name = "contrastive"
    description = "MoCo v2 contrastive learning with a momentum encoder and a queue of negatives"
    kind = "image"

    class Options(MethodOptions):
        dim: int = Field(128, ge=1, description="projection (embedding) dimension")
        hidden: int = Field(512, ge=1, description="hidden width of the MLP projection head")
        queue_size: int = Field(1024, ge=1, description="keys kept as negatives (paper: 65536, for ImageNet)")
        momentum: float = Field(0.99, ge=0, lt=1, description="key-encoder momentum m (paper: 0.999, for long runs)")
        temperature: float = Field(0.2, gt=0, description="InfoNCE temperature")
        bn_groups: int = Field(2, ge=1, description="sub-batches with their own BN statistics, keys shuffled "
                                                     "across them (MoCo's shuffling BN in one process; 1: off)")
        view_size: ImageSizeOption = Field(None, description="HxW of the augmented views "
                                           "(default: the training size, or --crop)")

    def __init__(self, config, source):
        super().__init__(config, source)
        o = self.options
        batch_size = int(config.get("batch_size", 1))
        if o.queue_size < batch_size:
            raise UserError(f"--method contrastive option queue_size={o.queue_size} is smaller than the batch "
                            f"size {batch_size}; set -o queue_size to at least the batch size")
        self.view_size = tuple(o.view_size) if o.view_size else tuple(self.batches.out_size)
        self.head = projection_head(self.encoder.channels[-1], o.hidden, o.dim)
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_head = copy.deepcopy(self.head)
        for p in (*self.key_encoder.parameters(), *self.key_head.parameters()):
            p.requires_grad_(False)
        self.queue = KeyQueue(o.queue_size, o.dim)
        self.modules.update(head=self.head, key_encoder=self.key_encoder, key_head=self.key_head, queue=self.queue)
        self._pending: torch.Tensor | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.view_size  # the encoder sees the augmented views, not the batches' size

    def _query_key_pairs(self):
        return [(self.key_encoder, self.encoder), (self.key_head, self.head)]

    @torch.no_grad()
    def _sync_keys(self) -> None:
        for key, query in self._query_key_pairs():
            key.load_state_dict(query.state_dict())
        self.queue.synced.fill_(True)

    def _embed(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
        """Unit embeddings; each of the `groups` sub-batches goes through BN on its own."""
        out = [head(encoder(chunk)[-1].mean(dim=(2, 3))) for chunk in torch.tensor_split(x, groups)]
        return F.normalize(torch.cat(out), dim=1)

    def loss(self, gen, batch_size):
        if not bool(self.queue.synced):
            self._sync_keys()
        images = self.batches.draw(gen, batch_size)["image"]
        norm = self.encoder.normalization
        x_q = normalize(moco_v2_view(gen, images, self.view_size), norm)
        x_k = normalize(moco_v2_view(gen, images, self.view_size), norm)
        n = x_q.shape[0]
        groups = min(self.options.bn_groups, n)
        q = self._embed(self.encoder, self.head, x_q, groups)
        perm = torch.randperm(n, generator=gen).to(x_k.device)
        with torch.no_grad():
            shuffled = self._embed(self.key_encoder, self.key_head, x_k[perm], groups)
            k = torch.empty_like(shuffled)
            k[perm] = shuffled  # back to the query order
        # Negatives as a copy: the in-place enqueue must never invalidate a graph awaiting backward.
        loss, logits = info_nce(q, k, self.queue.keys.clone(), self.options.temperature)
        self._pending = k
        acc = (logits.detach().argmax(dim=1) == 0).float().mean()
        return loss, {"info_nce": loss.detach(), "contrastive_acc": acc}

    @torch.no_grad()
    def after_step(self):
        m = self.options.momentum
        for key, query in self._query_key_pairs():
            for pk, pq in zip(key.parameters(), query.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        if self._pending is not None:
            self.queue.enqueue(self._pending)
            self._pending = None

    def extra_meta(self):
        o = self.options
        return {"moco": {"dim": o.dim, "queue_size": o.queue_size, "momentum": o.momentum,
                         "temperature": o.temperature, "bn_groups": o.bn_groups, "view_size": list(self.view_size)}}
