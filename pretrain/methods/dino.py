"""DINO self-distillation (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"), for ViT and CNN encoders alike.

A student (the encoder + a projection head) and a teacher of the same architecture see
multi-crop views of each image (`pretrain.dino_views`: 2 global crops and `local_crops_number`
local ones). The teacher sees the two globals only; the student sees every crop. The loss is the
cross-entropy between the teacher's distribution over `out_dim` prototypes and the student's,
summed over every (teacher crop, student crop) pair with different crop indices and averaged over
the pairs.

- **Head** (`DINOHead`): a 3-layer MLP (in → hidden_dim → hidden_dim → bottleneck_dim, GELU, an
  optional BatchNorm after the hidden layers: `use_bn_in_head`), l2-normalised, then a
  weight-normalised linear layer to `out_dim` without bias whose norms start at 1 and stay 1
  (`norm_last_layer`) or are trained. MLP weights start from a truncated normal of std 0.02,
  biases from 0.
- **Features**: a ViT's class token after the final norm (what DINO's ViT returns); a CNN's last
  level, global-average pooled (torchvision's ResNet with its `fc` replaced by the identity).
  Crops of one size go through the backbone together, then all features through the head, as
  DINO's `MultiCropWrapper`: a CNN's BatchNorm normalises the globals together and the locals
  together.
- **Teacher**: never optimised; after each optimiser step it moves towards the student,
  teacher = m·teacher + (1 − m)·student over the parameters, with m rising from
  `momentum_teacher` to 1 on a cosine over the run (`teacher_momentum`). It runs in training
  mode as DINO's does (a CNN teacher's BatchNorm uses batch statistics and keeps its own running
  averages); its drop path is off (the ViT student's is `drop_path_rate`).
- **Centring and sharpening**: the teacher's output minus a centre, over the teacher temperature
  (`teacher_temperature`: linear warm-up from `warmup_teacher_temp` to `teacher_temp`); the
  student's over `student_temp`. The centre, a buffer, is an EMA (`center_momentum`) of the
  batch mean of the teacher's outputs (over every rank's slice under data parallelism), updated
  after the loss.
- **Gradients**: each student parameter's gradient is clipped to norm `clip_grad` on its own
  (DINO's `clip_gradients`, not a global norm), and the last layer's gradients are dropped for
  the first `freeze_last_layer_steps` steps, so the optimiser does not touch it.

The checkpoint keeps the teacher's encoder: DINO evaluates the teacher, which its authors found
better than the student throughout training. The heads and the student stay out of it.

Where the schedules of DINO run per epoch (teacher temperature, frozen last layer), they run per
step here: a benchmark pre-training is a number of steps. The deviations from DINO's recipe are
listed in docs/pretraining.md ("DINO").
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from bench.core.distributed import rank_and_world
from bench.core.models.backbones import backbone_spec, create_encoder, normalize
from bench.core.options import ImageSizeOption
from pretrain.dino_views import GLOBAL_SCALE, LOCAL_SCALE, local_size, multi_crop, recipes
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method

# Defaults that DINO gives in epochs, here as fractions of the run: 30 of 100 epochs of teacher
# temperature warm-up, and a frozen last layer for one epoch but never more than this share.
TEACHER_TEMP_WARMUP_FRACTION = 0.3
FREEZE_LAST_LAYER_MAX_FRACTION = 0.1
CLIP_EPS = 1e-6  # DINO's clip coefficient clip / (norm + 1e-6)


# ------------------------------------------------------------------------------------ schedules

def teacher_momentum(step: int, steps: int, base: float) -> float:
    """The teacher's EMA momentum after optimiser step `step` (0-based) of `steps`: a cosine from
    `base` at step 0 towards 1 at the end of the run (DINO's cosine_scheduler(base, 1))."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * step / steps)) / 2.0


def teacher_temperature(step: int, warmup_steps: int, start: float, final: float) -> float:
    """Linear warm-up over `warmup_steps` steps, the first at `start` and the last at `final`
    (numpy's linspace, as DINO's schedule), then `final`."""
    if step >= warmup_steps:
        return final
    if warmup_steps == 1:
        return start
    return start + (final - start) * step / (warmup_steps - 1)


# ----------------------------------------------------------------------------------------- loss

def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float, n_crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's loss of student outputs ((n_crops·N)×K, crop-major: crop 0's N rows first) against
    teacher outputs of the two global crops ((2·N)×K, the same images in the same order).
    Returns (loss, the teacher's distributions (2·N)×K, without gradient)."""
    student_log = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(n_crops)
    teacher = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach()
    teacher_chunks = teacher.chunk(2)
    total, pairs = 0.0, 0
    for t, q in enumerate(teacher_chunks):
        for s, log_p in enumerate(student_log):
            if s == t:  # the same view: no information to distil
                continue
            total = total + (-q * log_p).sum(dim=-1).mean()
            pairs += 1
    return total / pairs, teacher


class Center(nn.Module):
    """The running centre of the teacher's outputs (a buffer, so snapshots hold it and a skipped
    step restores it)."""

    def __init__(self, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_out: torch.Tensor) -> None:
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if rank_and_world()[1] > 1:  # the mean over the whole batch, as DINO's all_reduce
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.momentum).add_(batch_sum / count, alpha=1.0 - self.momentum)


# ----------------------------------------------------------------------------------------- head

class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, use_bn: bool = False, norm_last_layer: bool = True,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            layers.append(nn.Linear(cin, cout))
            if use_bn:
                layers.append(nn.BatchNorm1d(cout))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Weight norm: weight = g · v / ||v|| per output row; g (original0) starts at 1.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """N×C image features: a ViT's normed class token of its last block (the mean of its patch
    tokens for a ViT without one), else the last level, global-average pooled."""
    levels = encoder(x)
    tokens = getattr(levels, "tokens", None)
    if tokens:
        grid, cls = tokens[max(tokens)]
        return cls if cls is not None else grid.mean(dim=(2, 3))
    return levels[-1].mean(dim=(2, 3))


def multi_crop_forward(encoder: nn.Module, head: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """Head outputs of every crop, crop-major: each run of same-sized crops goes through the
    encoder as one batch, then all features through the head at once."""
    feats, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        feats.append(features(encoder, torch.cat(crops[start:end])))
        start = end
    return head(torch.cat(feats))


# -------------------------------------------------------------------------------------- options

def _fractions(value):
    if isinstance(value, str):  # -o local_crops_scale=0.05,0.4
        parts = value.split(",")
        try:
            if len(parts) == 2:
                return float(parts[0]), float(parts[1])
        except ValueError:
            pass
        raise ValueError(f"expected two fractions such as 0.4,1, got {value!r}")
    return value


@register_method
class DINO(PretrainMethod):
    name = "dino"
    description = ("DINO self-distillation: a student matches its EMA teacher's centred, sharpened outputs "
                   "across multi-crop views (ViTs and CNNs)")
    kind = "image"

    class Options(MethodOptions):
        out_dim: int = Field(65536, ge=1, description="prototypes K of the head's last layer")
        hidden_dim: int = Field(2048, ge=1, description="hidden width of the head's MLP")
        bottleneck_dim: int = Field(256, ge=1, description="the MLP's output, l2-normalised before the last layer")
        use_bn_in_head: bool = Field(False, description="BatchNorm after the head's hidden layers")
        norm_last_layer: bool = Field(True, description="keep the last layer's weight norms at 1 "
                                      "(DINO: true for ViT-B, false for ViT-S; false is better but less stable)")
        momentum_teacher: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at the first step, "
                                        "raised to 1 on a cosine over the run")
        student_temp: float = Field(0.1, gt=0, description="student softmax temperature")
        teacher_temp: float = Field(0.04, gt=0, description="teacher temperature after the warm-up "
                                    "(DINO: 0.04-0.07; above 0.07 is unstable)")
        warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at the first step")
        warmup_teacher_temp_steps: int | None = Field(None, ge=0, description="steps of linear teacher "
                                                      "temperature warm-up (default: 30% of the steps, "
                                                      "DINO's 30 of 100 epochs)")
        center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the teacher's centre")
        freeze_last_layer_steps: int | None = Field(None, ge=0, description="steps with the last layer held "
                                                    "still (default: one pass over the data, DINO's one "
                                                    "epoch, at most 10% of the steps)")
        clip_grad: float = Field(3.0, ge=0, description="per-parameter gradient norm clip (0: off)")
        local_crops_number: int = Field(8, ge=0, description="local crops per image (0: two global crops only)")
        global_crops_scale: tuple[float, float] = Field(GLOBAL_SCALE, description="area range of the global "
                                                        "crops (DINO's ResNet-50 run: 0.14,1)")
        local_crops_scale: tuple[float, float] = Field(LOCAL_SCALE, description="area range of the local "
                                                       "crops (DINO's ResNet-50 run: 0.05,0.14)")
        global_size: ImageSizeOption = Field(None, description="HxW of the global crops "
                                             "(default: the training size, or --crop)")
        local_size: ImageSizeOption = Field(None, description="HxW of the local crops (default: 96/224 "
                                            "of the global size a side, DINO's 96 vs 224 px)")
        drop_path_rate: float = Field(0.1, ge=0, lt=1, description="stochastic depth of a ViT student "
                                      "(the teacher has none; CNNs ignore it)")

        @field_validator("global_crops_scale", "local_crops_scale", mode="before")
        @classmethod
        def _parse_scale(cls, value):
            return _fractions(value)

        @field_validator("global_crops_scale", "local_crops_scale")
        @classmethod
        def _scale_range(cls, value):
            lo, hi = value
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"needs 0 < low <= high <= 1, got {lo},{hi}")
            return value

    def __init__(self, config, source):
        super().__init__(config, source)
        o = self.options
        self.steps = int(config["steps"])
        batch_size = int(config.get("batch_size", 1))
        self.global_size = tuple(o.global_size) if o.global_size else tuple(self.batches.out_size)
        self.local_size = tuple(o.local_size) if o.local_size else local_size(self.global_size)
        self.recipes = recipes(self.global_size, self.local_size, o.local_crops_number,
                               o.global_crops_scale, o.local_crops_scale)
        self.temp_warmup_steps = (o.warmup_teacher_temp_steps if o.warmup_teacher_temp_steps is not None
                                  else round(TEACHER_TEMP_WARMUP_FRACTION * self.steps))
        if o.freeze_last_layer_steps is not None:
            self.freeze_steps = o.freeze_last_layer_steps
        else:
            epoch = math.ceil(len(self.batches.ids) / batch_size)
            self.freeze_steps = min(epoch, int(FREEZE_LAST_LAYER_MAX_FRACTION * self.steps))

        # The teacher is the encoder as built (no drop path); a ViT student gets stochastic depth
        # with the same weights (DINO builds the student with drop_path_rate, the teacher without).
        teacher = self.encoder
        self.drop_path = backbone_spec(config["arch"]).family == "vit" and o.drop_path_rate > 0
        if self.drop_path:
            student = create_encoder(config["arch"], drop_path_rate=o.drop_path_rate)
            student.load_state_dict(teacher.state_dict())
            self.encoder = student
        else:
            teacher = copy.deepcopy(self.encoder)
        self.teacher = teacher
        self.head = DINOHead(self.encoder.channels[-1], o.out_dim, use_bn=o.use_bn_in_head,
                             norm_last_layer=o.norm_last_layer, hidden_dim=o.hidden_dim,
                             bottleneck_dim=o.bottleneck_dim)
        self.teacher_head = copy.deepcopy(self.head)
        for p in (*self.teacher.parameters(), *self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.center = Center(o.out_dim, o.center_momentum)
        self.modules = {"encoder": self.encoder, "head": self.head, "teacher": self.teacher,
                        "teacher_head": self.teacher_head, "center": self.center}

    def after_init(self) -> None:
        """`--init` loaded the student's encoder: the teacher starts from the same weights."""
        self.teacher.load_state_dict(self.encoder.state_dict())

    def _pairs(self):
        """(student, teacher) parameter lists in the same order: the EMA's operands."""
        student = [*self.encoder.parameters(), *self.head.parameters()]
        teacher = [*self.teacher.parameters(), *self.teacher_head.parameters()]
        return student, teacher

    def teacher_temp(self) -> float:
        o = self.options
        return teacher_temperature(self.step, self.temp_warmup_steps, o.warmup_teacher_temp, o.teacher_temp)

    def loss(self, gen, batch_size):
        images = self.batches.draw(gen, batch_size)["image"]
        norm = self.encoder.normalization
        crops = [normalize(c, norm) for c in multi_crop(gen, images, self.recipes)]
        if self.drop_path:
            # timm's DropPath draws from the global RNG: seeded from the step's generator, a
            # resumed run drops the same paths as an uninterrupted one.
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        with torch.no_grad():
            teacher_out = multi_crop_forward(self.teacher, self.teacher_head, crops[:2])
        student_out = multi_crop_forward(self.encoder, self.head, crops)
        temp = self.teacher_temp()
        loss, teacher_probs = dino_loss(student_out, teacher_out, self.center.center, self.options.student_temp,
                                        temp, len(crops))
        self.center.update(teacher_out)
        # The teacher's entropy falls to 0 when it collapses to one prototype and rises to
        # log K when it collapses to the uniform distribution (DINO's Fig. 7 diagnostics).
        entropy = -(teacher_probs * teacher_probs.clamp_min(1e-30).log()).sum(dim=-1).mean()
        # The loss is the teacher's entropy plus the KL divergence of the student from the teacher:
        # the centre raises the first as it moves; what the student learns shows in the second.
        return loss, {"dino": loss.detach(), "teacher_entropy": entropy, "kl_divergence": loss.detach() - entropy,
                      "teacher_temp": temp}

    @torch.no_grad()
    def adjust_gradients(self) -> None:
        o = self.options
        student, _ = self._pairs()
        if o.clip_grad:
            grads = [p.grad for p in student if p.grad is not None]
            if grads:
                norms = torch.stack(torch._foreach_norm(grads))
                coefs = (o.clip_grad / (norms + CLIP_EPS)).clamp(max=1.0)  # 1: below the clip, untouched
                for g, c in zip(grads, coefs):
                    g.mul_(c.to(g.dtype))
        if self.step < self.freeze_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        m = teacher_momentum(self.step, self.steps, self.options.momentum_teacher)
        student, teacher = self._pairs()
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1.0 - m)

    def checkpoint_encoder(self) -> nn.Module:
        return self.teacher

    def extra_meta(self):
        o = self.options
        return {"dino": {"checkpoint_encoder": "teacher", "out_dim": o.out_dim, "momentum_teacher": o.momentum_teacher,
                         "teacher_temp": o.teacher_temp, "student_temp": o.student_temp,
                         "local_crops_number": o.local_crops_number, "global_size": list(self.global_size),
                         "local_size": list(self.local_size), "freeze_last_layer_steps": self.freeze_steps,
                         "warmup_teacher_temp_steps": self.temp_warmup_steps}}
