"""Supervised classification: the ImageNet stand-in (object crops of the generated world, or a
real ImageNet-layout folder `train/<class>/*.jpg`).

Global-average-pooled last encoder level into a linear classifier with cross-entropy, random
crops (`--crop`) and flips. Only the encoder is kept: like ImageNet weights, the checkpoint
carries no dense decoder.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.seeding import flip_batch
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method


@register_method
class Classification(PretrainMethod):
    name = "classification"
    description = "supervised classification on object-centric crops (the ImageNet stand-in)"
    kind = "label"

    class Options(MethodOptions):
        label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")

    def __init__(self, config, source):
        super().__init__(config, source)
        self.num_classes = len(source.class_names)
        self.head = nn.Linear(self.encoder.channels[-1], self.num_classes)
        self.modules["head"] = self.head

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        (images,) = flip_batch(gen, batch["image"])
        logits = self.head(self.encoder(self.normalized(images))[-1].mean(dim=(2, 3)))
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.options.label_smoothing)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return loss, {"cross_entropy": loss.detach(), "train_acc": acc}

    def extra_meta(self):
        return {"classes": self.num_classes}
