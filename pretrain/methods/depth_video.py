"""Self-supervised monocular depth from video (monodepth2), and the view-synthesis machinery
that stereo training (`depth_stereo`) shares.

The depth net is the harness encoder + the monodepth2 U-Net with sigmoid disparity heads at
four scales. A pose net looks at (previous, current) and (current, next); the previous and next
frames are warped into the current view through the predicted depth and motion, and the loss is
their photometric error (0.85 SSIM + 0.15 L1) with
- per-pixel minimum over the source frames (occlusions: a pixel hidden in one source is usually
  visible in the other), or their mean for the ablation;
- auto-masking: the unwarped sources' errors take part in the minimum, so pixels that do not
  change between frames (a camera at rest, objects moving with the camera) teach nothing;
- every scale's disparity upsampled to full resolution before warping (monodepth2's fix for
  texture-copy artefacts of low-resolution photometric losses);
- edge-aware smoothness of the mean-normalised disparity at the scale's own resolution,
  weighted smoothness / 2^scale; the loss is the mean over scales.
Intrinsics are the dataset's (`intrinsics=known`) or predicted per clip by a camera head on the
pose net (`intrinsics=learned`, for uncalibrated video).

Colour augmentation as monodepth2's data loader does it (`color_jitter`, on by default): with
probability 0.5 per training sample, brightness, contrast and saturation factors in [0.8, 1.2]
and a hue shift in [-0.1, 0.1], applied in a random order, the same to every frame of the sample.
Only the networks (depth and pose) see the jittered frames; the photometric loss, its
auto-masking and the smoothness term use the original ones. The parameters come from the step's
generator, so a resumed run replays them.

The depth range is monodepth2's on KITTI (0.1 to 100 m, the source's `self_supervised_max_depth`),
else the dataset's; `-o max_depth=...` sets it.

There is no flip augmentation: a mirrored clip is only consistent with mirrored intrinsics
(cx -> W-1-cx), and monodepth2's flips rely on a centred principal point, which cropped batches
(`--crop`) and real calibrations do not have.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.core.errors import UserError
from bench.core.models.unet_decoder import UNetDecoder
from pretrain.color_jitter import apply_jitter, jitter_params
from pretrain.geometry import inverse_warp, pose_from_axisangle
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method
from pretrain.pose_nets import IntrinsicsHead, PoseNet, disp_to_depth
from pretrain.photometric import edge_aware_smoothness, photometric_error

# Monodepth2's depth floor: the sigmoid disparity spans [1/max_depth, 1/MIN_DEPTH].
MIN_DEPTH = 0.1
# Monodepth2's tie-breaking noise on the identity errors: where a warped source matches exactly
# as well as the unwarped one, neither consistently wins the minimum.
TIE_NOISE = 1e-5
# Monodepth2's colour augmentation (its data loader): probability, brightness = contrast =
# saturation strength, hue strength.
JITTER_P, JITTER_STRENGTH, JITTER_HUE = 0.5, 0.2, 0.1


def as_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 255.0


def monodepth2_color_jitter(gen: torch.Generator, samples: torch.Tensor) -> torch.Tensor:
    """float N×F×3×H×W in [0, 1] (F images per training sample: frames, or a stereo view) → the
    same, each sample jittered with probability JITTER_P, all its F images alike. Every sample
    draws the same numbers whether jittered or not, so one sample never shifts the next one's."""
    out = []
    for images in samples:
        apply = float(torch.rand((), generator=gen)) < JITTER_P
        params = jitter_params(gen, JITTER_STRENGTH, JITTER_STRENGTH, JITTER_STRENGTH, JITTER_HUE)
        out.append(apply_jitter(images, params).clamp(0.0, 1.0) if apply else images)
    return torch.stack(out)


class SelfSupervisedDepth(PretrainMethod):
    """Depth net and view-synthesis loss shared by the video and stereo methods (not a method of
    its own: it has no name and is not registered)."""

    class Options(MethodOptions):
        min_depth: float | None = Field(MIN_DEPTH, gt=0, description="nearest depth the disparity head can "
                                                                     "express (metres)")
        max_depth: float | None = Field(None, gt=0, description="farthest depth (default: monodepth2's 100 m on "
                                                               "kitti_raw, else the dataset's)")
        ssim_weight: float = Field(0.85, ge=0, le=1, description="weight of SSIM against L1 in the photometric error")
        smoothness: float = Field(1e-3, ge=0, description="edge-aware smoothness weight (divided by 2^scale)")
        automask: bool = Field(True, description="mask pixels the unwarped source explains as well (static pixels)")
        min_reprojection: bool = Field(True, description="per-pixel minimum over source views (False: their mean, "
                                                         "for ablation)")
        scales: int = Field(4, ge=1, le=5, description="decoder output scales in the loss (1/2^0 .. 1/2^(scales-1))")
        color_jitter: bool = Field(True, description="monodepth2's colour jitter of the network inputs (p 0.5; the "
                                                     "photometric loss sees the original images)")

    def __init__(self, config, source):
        super().__init__(config, source)
        o = self.options
        self.min_depth = float(o.min_depth if o.min_depth is not None else self.default_min_depth())
        self.max_depth = float(o.max_depth or getattr(source, "self_supervised_max_depth", None) or source.max_depth)
        if self.min_depth >= self.max_depth:
            raise UserError(f"--method {self.name} option min_depth={self.min_depth} must be below "
                            f"max_depth={self.max_depth}")
        self.scales = tuple(range(o.scales))
        self.decoder = UNetDecoder(self.encoder.channels, out_channels=1, scales=self.scales)
        self.modules["decoder"] = self.decoder

    def default_min_depth(self) -> float:
        return MIN_DEPTH

    def probe(self) -> dict:
        """One item drawn with a private generator (the training generators stay untouched), to
        check the data before the first step."""
        return self.batches.draw(torch.Generator().manual_seed(0), 1)

    def network_inputs(self, samples_uint8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 N×F×3×H×W → the float images the networks see: colour-jittered (`color_jitter`)
        or as they are."""
        x = as_float(samples_uint8)
        return monodepth2_color_jitter(gen, x) if self.options.color_jitter else x

    def disparities(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Sigmoid disparity N×1×h×w of every scale, at that scale's own resolution (images uint8,
        or float in [0, 1])."""
        x = self.normalized(images)
        logits = self.decoder(self.encoder(x), size=x.shape[-2:])
        return {s: torch.sigmoid(logits[s]) for s in self.scales}

    def to_depth(self, disp: torch.Tensor) -> torch.Tensor:
        return disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    def view_synthesis_loss(self, target: torch.Tensor, disps: dict[int, torch.Tensor],
                            synthesize: Callable[[torch.Tensor], list[torch.Tensor]], sources: list[torch.Tensor],
                            gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Multi-scale photometric + smoothness loss of the target view (float N×3×H×W).

        `synthesize(depth N×1×H×W)` returns the source images warped into the target view;
        `sources` are the same images unwarped (the identity reprojection of auto-masking)."""
        o = self.options
        size = target.shape[-2:]

        def errors(images: list[torch.Tensor]) -> torch.Tensor:
            err = torch.cat([photometric_error(im, target, o.ssim_weight) for im in images], 1)
            return err if o.min_reprojection else err.mean(1, keepdim=True)

        identity = None
        if o.automask:
            identity = errors(sources)
            identity = identity + TIE_NOISE * torch.randn(identity.shape, generator=gen).to(identity)
        photometric, smoothness, terms = [], [], {}
        for s, disp in disps.items():
            full = disp if disp.shape[-2:] == size else F.interpolate(disp, size=size, mode="bilinear",
                                                                      align_corners=False)
            reprojection = errors(synthesize(self.to_depth(full)))
            candidates = reprojection if identity is None else torch.cat([identity, reprojection], 1)
            best, choice = candidates.min(1)
            photometric.append(best.mean())
            if o.smoothness > 0:
                # Smoothness at the scale's own resolution, against the image resized to it; the
                # disparity is divided by its mean so that shrinking all depths cannot lower it.
                image = target if disp.shape[-2:] == size else F.interpolate(target, size=disp.shape[-2:], mode="area")
                norm = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
                smoothness.append(o.smoothness * edge_aware_smoothness(norm, image) / 2 ** s)
            else:  # weight 0 (depth_distill's default, as NimbleD): not computed
                smoothness.append(torch.zeros((), dtype=best.dtype, device=best.device))
            if s == 0 and identity is not None:
                # Fraction of pixels the auto-mask removed: an unwarped source explained them best.
                terms["automask_fraction"] = (choice < identity.shape[1]).float().mean()
        photo, smooth = torch.stack(photometric).mean(), torch.stack(smoothness).mean()
        # The terms are the loss's two parts (weighted), so photometric + smoothness = loss.
        terms.update(photometric=photo.detach(), smoothness=smooth.detach())
        return photo + smooth, terms

    def decoder_meta(self):
        return {"kind": "monodepth2", "out_channels": 1, "scales": list(self.scales), "activation": "sigmoid",
                "output": "disparity", "min_depth": self.min_depth, "max_depth": self.max_depth}


@register_method
class DepthVideo(SelfSupervisedDepth):
    name = "depth_video"
    description = "self-supervised depth from video: view synthesis with a pose net (monodepth2)"
    kind = "video"

    class Options(SelfSupervisedDepth.Options):
        intrinsics: Literal["known", "learned"] = Field(
            "known", description="camera intrinsics: the dataset's calibration, or learned by a camera head "
                                 "(for uncalibrated video)")
        pose_arch: str = Field("resnet18", description="backbone of the pose net (6-channel input)")
        pose_init: Literal["random", "init"] = Field(
            "random", description="pose encoder start: random, or the --init weights (pose_arch must equal --arch; "
                                  "first conv repeated for both frames and halved, as monodepth2)")

    def __init__(self, config, source):
        super().__init__(config, source)
        if self.options.pose_init == "init":
            if not config.get("init"):
                raise UserError(f"--method {self.name} option pose_init=init needs --init FILE (manifest `init:`), "
                                f"the weights the encoder and the pose encoder start from")
            if self.options.pose_arch != config["arch"]:
                raise UserError(f"--method {self.name} option pose_init=init: pose_arch={self.options.pose_arch} "
                                f"differs from --arch {config['arch']}, whose --init weights cannot fit it; "
                                f"set -o pose_arch={config['arch']}")
        self.pose_net = PoseNet(self.options.pose_arch)
        self.modules["pose"] = self.pose_net
        self.camera: IntrinsicsHead | None = None
        if self.options.intrinsics == "learned":
            self.camera = IntrinsicsHead(self.pose_net.channels)
            self.modules["camera"] = self.camera
        else:
            self._require_calibration(self.probe())

    def _require_calibration(self, batch: dict) -> None:
        if batch["K"] is None:
            raise UserError(f"--method {self.name}: dataset {self.batches.source.name!r} has no camera calibration; "
                            f"pass -o intrinsics=learned to learn the intrinsics")

    def intrinsics(self, batch: dict, bottleneck: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """K N×3×3 at the training size: the batch's, or the camera head's for the clip."""
        if self.camera is None:
            self._require_calibration(batch)
            return batch["K"].to(bottleneck.dtype)
        per_pair = self.camera(bottleneck, size)
        n = per_pair.shape[0] // 2
        # One camera filmed the clip: average the estimates of its two pairs.
        K = (per_pair[:n] + per_pair[n:]) / 2
        if self.camera.training:
            self.camera.track(K, size)
        return K

    def after_init(self) -> None:
        if self.options.pose_init == "init":  # the --init weights are in the encoder now
            self.pose_net.load_encoder_from(self.encoder, f"--init {self.config.get('init')} (option pose_init=init)")

    def self_supervised(self, batch: dict, gen: torch.Generator | None = None):
        """(loss, terms, disparity N×1×H×W of the centre frame at scale 0, sigmoid, with its graph)."""
        loss, terms, disps = self.self_supervised_scales(batch, gen)
        return loss, terms, disps[0]

    def self_supervised_scales(self, batch: dict, gen: torch.Generator | None = None):
        """(loss, terms, {scale: sigmoid disparity N×1×h×w of the centre frame at the scale's own
        resolution, with its graph}).

        `gen` draws the colour jitter and the auto-mask's tie-breaking noise; without one a fixed
        generator is used, so the result stays deterministic (and a resumed run identical)."""
        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        frames = batch["frames"]
        # The photometric loss compares the original frames; the networks see the jittered ones.
        prev, cur, nxt = (as_float(frames[:, i]) for i in range(3))
        n, _, h, w = cur.shape
        seen = self.network_inputs(frames, gen)
        seen_prev, seen_cur, seen_next = seen[:, 0], seen[:, 1], seen[:, 2]
        disps = self.disparities(seen_cur)
        # Both pairs in one pass, each in temporal order (monodepth2): (prev, cur) gives the
        # motion prev -> cur, inverted to carry current-camera points into the previous camera;
        # (cur, next) gives current -> next directly.
        axisangle, translation, bottleneck = self.pose_net(torch.cat([seen_prev, seen_cur]),
                                                           torch.cat([seen_cur, seen_next]))
        to_prev = pose_from_axisangle(axisangle[:n], translation[:n], invert=True)
        to_next = pose_from_axisangle(axisangle[n:], translation[n:])
        K = self.intrinsics(batch, bottleneck, (h, w))

        def synthesize(depth):
            return [inverse_warp(prev, depth, to_prev, K), inverse_warp(nxt, depth, to_next, K)]

        loss, terms = self.view_synthesis_loss(cur, disps, synthesize, [prev, nxt], gen)
        return loss, terms, disps

    def loss(self, gen, batch_size):
        return self.self_supervised(self.batches.draw(gen, batch_size), gen)[:2]

    def extra_meta(self):
        # Monocular video fixes depth only up to an unknown scale.
        meta = {"metric_depth": False, "intrinsics": self.options.intrinsics}
        if self.camera is not None:
            fx, fy, cx, cy = (round(float(v), 6) for v in self.camera.normalized)
            meta["learned_intrinsics"] = {"fx": fx, "fy": fy, "cx": cx, "cy": cy,
                                          "normalized_by": "image width (fx, cx) and height (fy, cy)",
                                          "training_steps_averaged": int(self.camera.updates)}
        return meta
