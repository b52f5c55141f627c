"""Self-supervised depth from rectified stereo pairs with a known baseline (Monodepth-style).

The depth net predicts the left view's depth; the right image is warped into the left view
through it and the fixed camera motion, and the photometric + smoothness loss of `depth_video`
(shared code, multi-scale, auto-masking optional) trains it. No pose net is needed: the right
camera sits at +baseline along the left camera's x axis, so a point X in left-camera coordinates
is X - (baseline, 0, 0) in right-camera coordinates, T = translation(-baseline, 0, 0).

With a known baseline the scale is real: the predicted depth is metric (the checkpoint records
that, and the baseline). No flip augmentation, for the same reason as depth_video (a mirrored
pair would need left and right swapped and mirrored intrinsics). The colour jitter of
depth_video (`color_jitter`, on by default) applies to the left view the depth net sees.
"""

from __future__ import annotations

import torch
from pydantic import Field

from bench.core.errors import UserError
from pretrain.geometry import inverse_warp
from pretrain.methods.base import register_method
from pretrain.methods.depth_video import SelfSupervisedDepth, as_float


def left_to_right(baseline: torch.Tensor) -> torch.Tensor:
    """N×4×4 transforms from left-camera to right-camera coordinates for baselines N (metres)."""
    T = torch.eye(4, dtype=baseline.dtype, device=baseline.device).repeat(baseline.shape[0], 1, 1)
    T[:, 0, 3] = -baseline
    return T


@register_method
class DepthStereo(SelfSupervisedDepth):
    name = "depth_stereo"
    description = "self-supervised depth from rectified stereo pairs (monodepth2's stereo losses)"
    kind = "stereo"

    # With one source view, min_reprojection changes nothing. Auto-masking is off by default:
    # both views are taken at the same instant, so there is no object moving with the camera
    # for it to remove; the pixels the unwarped right image explains are those at infinity
    # (sky), which the depth net should learn are far, and early in training the mask would
    # hide most of the image (the initial disparities are far too large).
    class Options(SelfSupervisedDepth.Options):
        min_depth: float | None = Field(None, gt=0, description="nearest depth the disparity head can express "
                                                                "(metres; default: the stereo baseline)")
        automask: bool = Field(False, description="mask pixels the unwarped right image explains as well")

    def __init__(self, config, source):
        self.baseline: float | None = None
        super().__init__(config, source)
        self._stereo_baseline()  # an uncalibrated source fails here, before any training

    def default_min_depth(self) -> float:
        # The sigmoid head starts near disparity 0.5, i.e. depth about 2 x min_depth. At
        # monodepth2's 0.1 m, a 0.54 m baseline would shift the right image by more than its
        # width (0.58 W x 0.54 / 0.2), every sample would clamp to the border and no gradient
        # would reach the depth. Monodepth2 avoids that by training stereo with a 0.1 baseline
        # and a 0.1 depth floor; in metres that is a floor of one baseline, used here.
        return self._stereo_baseline()

    def _stereo_baseline(self) -> float:
        if self.baseline is None:
            probe = self.probe()
            self._require_calibration(probe)
            self.baseline = float(probe["baseline"][0])
        return self.baseline

    def _require_calibration(self, batch: dict) -> None:
        if batch.get("K") is None:
            raise UserError(f"--method {self.name}: dataset {self.batches.source.name!r} gives stereo pairs "
                            f"without intrinsics; stereo training needs the calibration")

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        self._require_calibration(batch)
        left, right = as_float(batch["left"]), as_float(batch["right"])
        K, T = batch["K"], left_to_right(batch["baseline"])
        # The depth net sees the (colour-jittered) left view; the loss compares the original images.
        disps = self.disparities(self.network_inputs(batch["left"][:, None], gen)[:, 0])
        return self.view_synthesis_loss(left, disps, lambda depth: [inverse_warp(right, depth, T, K)], [right], gen)

    def extra_meta(self):
        return {"metric_depth": True, "stereo_baseline": self._stereo_baseline()}
