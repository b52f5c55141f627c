"""NimbleD-style distillation: self-supervised video depth plus pseudo-disparities of a teacher.

The loss is lambda * (monodepth2 video loss) + (1 - lambda) * PSL, where PSL is a
scale-and-shift-invariant loss between the centre frame's predicted disparity and the teacher's
pseudo-disparity (`bench pseudo-label`), in disparity space; lambda = 0.9 is NimbleD's choice.
As in NimbleD, PSL is computed at every output scale, each disparity upsampled (bilinear) to the
full training resolution the pseudo-labels have, and averaged over the scales, as the
self-supervised loss is (lambda weighs the two per scale, which is the same as weighing the two
scale means). NimbleD trains without the edge-aware smoothness term, so its weight defaults to 0
here (`-o smoothness=...` brings it back).

`ssi_loss` picks the form of PSL:
- `nimbled` (default): NimbleD's eq. 6-7 (`pretrain.losses.nimbled_ssi_loss`): prediction and
  pseudo-label each normalised per image by their median and mean absolute deviation, then L1;
- `midas_lsq`: the prediction aligned to the pseudo-label by least squares
  (`pretrain.losses.scale_and_shift_invariant_loss`), then L1; the pseudo-label is normalised
  (median / mean absolute deviation) first, so that the loss does not scale with the teacher's
  units, which differ by orders of magnitude between teachers.

Pixels count where the pseudo-label is finite. NimbleD uses every pixel, including Depth
Anything's zero disparity at the sky (far away, which is what the student should learn there);
a missing label (NaN) is the only thing left out. The sigmoid disparity of the harness's decoder
is an affine function of the scaled disparity 1/depth, so either form sees the same loss as on
the disparity itself (NimbleD's decoder uses a ReLU head instead).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.core.errors import UserError
from pretrain.losses import nimbled_ssi_loss, scale_and_shift_invariant_loss
from pretrain.methods.base import parse_options, register_method
from pretrain.methods.depth_video import DepthVideo
from pretrain.pseudo_label import PseudoLabelled, read_pseudo_info


def normalize_pseudo(pseudo: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (N×H×W): (d - median) / mean|d - median| over `valid`; an image whose valid
    pseudo-labels are all equal carries no relative depth and drops out of the mask."""
    out, keep = torch.zeros_like(pseudo), valid.clone()
    for i in range(pseudo.shape[0]):
        values = pseudo[i][valid[i]]
        if values.numel() == 0:
            continue
        median = values.median()
        spread = (values - median).abs().mean()
        if not bool(spread > 0):
            keep[i] = False
            continue
        out[i] = torch.where(valid[i], (pseudo[i] - median) / spread, torch.zeros_like(pseudo[i]))
    return out, keep


def pseudo_label_loss(disps: dict[int, torch.Tensor], pseudo: torch.Tensor, form: str = "nimbled"):
    """PSL over all scales: the mean over `disps` ({scale: N×1×h×w}) of the SSI loss `form`
    between each disparity, upsampled to the pseudo-labels' size, and `pseudo` (N×H×W), over the
    pixels whose pseudo-label is finite. Returns (loss or None when no image is usable, valid mask)."""
    valid = torch.isfinite(pseudo)
    size = pseudo.shape[-2:]
    if form == "midas_lsq":
        target, mask = normalize_pseudo(torch.where(valid, pseudo, torch.zeros_like(pseudo)), valid)
        ssi = scale_and_shift_invariant_loss
    elif form == "nimbled":
        target, mask, ssi = pseudo, valid, nimbled_ssi_loss
    else:
        raise ValueError(form)
    losses = []
    for disp in disps.values():
        full = disp if disp.shape[-2:] == size else F.interpolate(disp, size=size, mode="bilinear",
                                                                  align_corners=False)
        loss = ssi(full[:, 0], target, mask)
        if loss is None:
            return None, valid
        losses.append(loss)
    return torch.stack(losses).mean(), valid


@register_method
class DepthDistill(DepthVideo):
    name = "depth_distill"
    description = "self-supervised video depth plus a scale-and-shift-invariant loss on a teacher's pseudo-labels (NimbleD)"
    kind = "video"

    class Options(DepthVideo.Options):
        # Required; None only so that --help shows it plainly and its absence gets a clear line.
        pseudo_labels: str | None = Field(None, description="folder written by `bench pseudo-label` for this "
                                                            "dataset (required)")
        distill_lambda: float = Field(0.9, ge=0, le=1, description="weight of the self-supervised loss; the "
                                                                   "pseudo-label term gets 1 - lambda")
        ssi_loss: Literal["nimbled", "midas_lsq"] = Field(
            "nimbled", description="pseudo-label loss: NimbleD's median / mean-absolute-deviation normalisation of "
                                   "both maps, or least-squares alignment of the prediction (MiDaS)")
        smoothness: float = Field(0.0, ge=0, description="edge-aware smoothness weight (divided by 2^scale); "
                                                         "NimbleD trains without it")

    def __init__(self, config, source):
        # The source must carry the pseudo-labels before the base class builds its batches.
        options = parse_options(type(self), config.get("options") or {})
        if not options.pseudo_labels:
            raise UserError(f"--method {self.name} needs -o pseudo_labels=DIR, a folder made by `bench pseudo-label "
                            f"--teacher CKPT --dataset {source.name} --root {source.root} --out DIR`")
        super().__init__(config, PseudoLabelled(source, options.pseudo_labels))

    @classmethod
    def content_ids(cls, options):
        # Labels regenerated by another teacher in the same folder are another training.
        if not options.pseudo_labels:
            return {}
        return {"pseudo_labels_teacher": read_pseudo_info(options.pseudo_labels).get("teacher_sha256")}

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        ssl, ssl_terms, disps = self.self_supervised_scales(batch, gen)
        pseudo = batch["pseudo"].to(disps[0])
        pseudo_loss, valid = pseudo_label_loss(disps, pseudo, self.options.ssi_loss)
        lam = float(self.options.distill_lambda)
        terms = {**ssl_terms, "self_supervised": ssl.detach(), "pseudo_valid_fraction": valid.float().mean()}
        if pseudo_loss is None:  # no usable pseudo-label in the batch: the video loss alone, same weight
            return lam * ssl, terms
        terms["pseudo_ssi"] = pseudo_loss.detach()
        return lam * ssl + (1.0 - lam) * pseudo_loss, terms

    def extra_meta(self):
        info = self.batches.source.info
        return {**super().extra_meta(),
                "pseudo_labels": {"folder": str(self.options.pseudo_labels), "teacher": info.get("teacher"),
                                  "teacher_kind": info.get("teacher_kind"),
                                  "teacher_sha256": info.get("teacher_sha256"),
                                  "distill_lambda": float(self.options.distill_lambda),
                                  "ssi_loss": self.options.ssi_loss}}
