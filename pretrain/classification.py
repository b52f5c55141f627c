"""Supervised classification on the object-centric crops: the ImageNet stand-in.

Global-average-pooled last encoder level into a linear classifier with cross-entropy. Only the
encoder is kept: like ImageNet weights, the checkpoint carries no dense decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.backbones import create_encoder, normalize
from bench.augment import flip_batch
from pretrain.data import load_crops


class Classification:
    method = "classification"

    def __init__(self, config: dict):
        self.config = config
        self.data = load_crops(config["root"])
        self.encoder = create_encoder(config["arch"])
        self.head = nn.Linear(self.encoder.channels[-1], self.data["num_classes"])
        self.modules = {"encoder": self.encoder, "head": self.head}

    def logits(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = normalize(images_uint8.float() / 255.0, self.encoder.normalization)
        return self.head(self.encoder(x)[-1].mean(dim=(2, 3)))

    def loss(self, gen: torch.Generator, batch_size: int):
        n = self.data["images"].shape[0]
        idx = torch.randint(n, (batch_size,), generator=gen)
        (images,) = flip_batch(gen, self.data["images"][idx])
        logits = self.logits(images)
        loss = F.cross_entropy(logits, self.data["labels"][idx])
        acc = (logits.argmax(1) == self.data["labels"][idx]).float().mean()
        return loss, {"cross_entropy": loss.detach(), "train_acc": acc}

    def decoder_meta(self) -> None:
        return None
