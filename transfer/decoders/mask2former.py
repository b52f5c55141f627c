"""Mask2Former (Cheng et al., 2022) on the harness encoder: Hugging Face `transformers`' model,
its backbone slot filled by the features the decoder is handed.

`Mask2FormerForUniversalSegmentation` always builds a backbone from its config. We build the
config offline from a tiny local Swin config (no hub name, nothing downloaded), then replace
the pixel-level module's backbone with `FeatureBackbone`, a parameter-free adapter that exposes
`channels` and returns the harness features as `feature_maps`, and rebuild the pixel decoder for
the harness channels. The encoder thus stays outside the decoder (freezing and feature caching
work as for every head) and no throwaway backbone weights remain in the state dict.

The four levels at strides 4, 8, 16 and 32 (for ResNets) feed the pixel decoder: the coarsest
three its deformable-attention encoder, the finest its FPN level and the mask features.
Training uses the model's own loss (Hungarian matching, point-sampled mask BCE + dice, class
cross-entropy with a down-weighted no-object class, deep supervision on every decoder layer);
inference is Mask2Former's semantic inference. Always a fresh head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.errors import UserError
from transfer.decoders.base import DecoderOptions, SegmentationDecoder, register_decoder


class FeatureBackbone(nn.Module):
    """Stands in the pixel-level module's backbone slot: returns the features it was handed."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = list(channels)
        self.pending: list[torch.Tensor] | None = None

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        from transformers.modeling_outputs import BackboneOutput

        if self.pending is None:
            raise RuntimeError("FeatureBackbone has no features: call Mask2FormerDecoder.run, not the HF model")
        return BackboneOutput(feature_maps=tuple(self.pending))


@register_decoder
class Mask2FormerDecoder(SegmentationDecoder):
    name = "mask2former"
    description = "Hugging Face Mask2Former (pixel decoder + transformer decoder) on the harness features"

    class Options(DecoderOptions):
        hidden_dim: int = Field(256, ge=32, multiple_of=32,
                                description="width of pixel decoder, queries and mask embeddings (GroupNorm needs a "
                                            "multiple of 32); the FFNs are 4x (pixel decoder) and 8x (transformer "
                                            "decoder) this")
        num_queries: int = Field(100, ge=1, description="object queries (masks predicted per image)")
        decoder_layers: int = Field(10, ge=1, description="transformer decoder predictions as HF counts them: "
                                                          "N-1 masked-attention layers after the initial queries")
        pixel_decoder_layers: int = Field(6, ge=0, description="deformable-attention layers of the pixel decoder")
        train_points: int = Field(12544, ge=1, description="points sampled per mask for matching and the mask loss")
        class_weight: float = Field(2.0, ge=0, description="weight of the classification loss (and matching cost)")
        mask_weight: float = Field(5.0, ge=0, description="weight of the mask BCE loss (and matching cost)")
        dice_weight: float = Field(5.0, ge=0, description="weight of the dice loss (and matching cost)")
        no_object_weight: float = Field(0.1, ge=0, description="class-loss weight of the no-object class")

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

        levels = [i for i, s in enumerate(strides) if s >= 4][-4:]
        picked = [strides[i] for i in levels]
        # The pixel decoder assumes one FPN level below three transformer levels, each twice as coarse.
        if len(levels) < 4 or any(b != 2 * a for a, b in zip(picked, picked[1:])):
            raise UserError(f"mask2former needs four encoder levels at doubling strides (e.g. 4, 8, 16, 32); "
                            f"this encoder has strides {list(strides)}")
        self.levels = levels
        h = options.hidden_dim
        # Tiny and local: only there because the HF model insists on building some backbone.
        placeholder = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                                 out_features=["stage1", "stage2", "stage3", "stage4"])
        self.config = Mask2FormerConfig(
            backbone_config=placeholder, num_labels=num_classes, hidden_dim=h, feature_size=h, mask_feature_size=h,
            encoder_feedforward_dim=4 * h, dim_feedforward=8 * h, encoder_layers=options.pixel_decoder_layers,
            decoder_layers=options.decoder_layers, num_queries=options.num_queries,
            train_num_points=options.train_points, class_weight=options.class_weight,
            mask_weight=options.mask_weight, dice_weight=options.dice_weight,
            no_object_weight=options.no_object_weight, feature_strides=picked, common_stride=picked[0])
        self.m2f = Mask2FormerForUniversalSegmentation(self.config)
        pixel_level = self.m2f.model.pixel_level_module
        self.backbone = FeatureBackbone([channels[i] for i in levels])
        pixel_level.encoder = self.backbone
        pixel_level.decoder = Mask2FormerPixelDecoder(self.config, feature_channels=self.backbone.channels)
        # Initialises only the new pixel decoder: HF marks the modules it already initialised.
        self.m2f.init_weights()

    def used_levels(self, num_levels: int) -> list[int]:
        return list(self.levels)

    def run(self, features: list[torch.Tensor], mask_labels: list[torch.Tensor] | None = None,
            class_labels: list[torch.Tensor] | None = None, **kwargs):
        """The HF model's output on these features (its loss too when labels are given)."""
        picked = [features[i] for i in self.levels]
        self.backbone.pending = picked
        try:
            # pixel_values only sets the batch size and an unused pixel mask; the adapter ignores it.
            return self.m2f(pixel_values=picked[0], mask_labels=mask_labels, class_labels=class_labels, **kwargs)
        finally:
            self.backbone.pending = None

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        out = self.run(features)
        return semantic_scores(out.class_queries_logits, out.masks_queries_logits, tuple(size))

    def loss(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        mask_labels, class_labels = label_map_targets(labels, ignore_index)
        out = self.run(features, output_auxiliary_logits=True)
        # The model's own loss (what `forward(mask_labels=..., class_labels=...)` computes), but in float32
        # outside autocast, as the original Mask2Former's matcher runs: bf16 costs are too coarse to match on.
        device_type = labels.device.type
        with torch.autocast(device_type, enabled=False):
            aux = [{k: v.float() for k, v in a.items()} for a in out.auxiliary_logits or []]
            loss_dict = self.m2f.get_loss_dict(out.masks_queries_logits.float(), out.class_queries_logits.float(),
                                               mask_labels, class_labels, aux or None)
            return self.m2f.get_loss(loss_dict)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask2Former's semantic inference: per class, the sum over queries of P(class) (no-object
    dropped) times the sigmoid of the mask logits, upsampled to `size` before the sigmoid as the
    original and HF's post-processing do. One image at a time bounds the Q×H×W memory."""
    probs = class_logits.softmax(-1)[..., :-1]
    out = []
    for p, m in zip(probs, mask_logits):
        m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0].sigmoid()
        out.append(torch.einsum("qc,qhw->chw", p, m))
    return torch.stack(out)


def label_map_targets(labels: torch.Tensor, ignore_index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: one binary mask per class present (float K'×H×W) and its class ids (K').
    Ignored pixels are in no mask; an image without valid pixels gets zero masks."""
    masks, classes = [], []
    for label in labels:
        ids = torch.unique(label)
        ids = ids[ids != ignore_index]
        masks.append((label[None] == ids[:, None, None]).float())
        classes.append(ids.long())
    return masks, classes
