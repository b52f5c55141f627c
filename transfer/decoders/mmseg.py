"""MMSegmentation bridge: `--decoder mmseg:CONFIG.py` trains the config's `decode_head` on the harness encoder.

Needs the optional extra (`pip install -e ".[mmseg]"`: the maintained `onedl-mm*` forks, pure
Python, no compiled `mmcv.ops`). MMSeg is imported only when such a decoder is built, so the harness
works without it; without it the decoder fails with one line naming the extra.

What the bridge takes from the config and what it rewrites:

- `model.decode_head` is built from MMSeg's registry. The harness encoder stands in for
  `model.backbone`: MMSeg numbers a backbone's levels from stride 4 (a ResNet gives 4 levels at
  strides 4..32), while harness encoders also return the stride-2 stem first. The head therefore sees
  the harness levels *without* those below stride 4, in MMSeg's numbering, so a config written for an
  MMSeg ResNet (`in_index=3`: the deepest level) means the same here: MMSeg level i is harness level
  `offset + i` (`offset` = 1 for ResNets). `in_index` keeps MMSeg's meaning (negative indices made
  positive, out-of-range ones are an error); `in_channels` is rewritten from the harness channels.
- `SyncBN` becomes `BN` (one process), `num_classes` the dataset's, `out_channels` too (a one-channel
  sigmoid head cannot give the K scores the harness scores by argmax), `ignore_index` the harness's.
- `model.auxiliary_head` (one head or a list): trained by default, as MMSeg trains it -- its loss is
  added with the config's `loss_weight` and it never predicts. `--decoder-option auxiliary=false`
  drops it (e.g. to compare with a head-only recipe, or to cache fewer levels under frozen protocols).
- The training loss is the heads' own (`head.loss` -> `loss_by_feat` on `SegDataSample`s), so the
  config's loss settings (`loss_decode` lists, `avg_non_ignore`, class weights, samplers) count;
  `forward` returns the decode head's logits resized to the image.
- `model.backbone`: with `type='HarnessEncoder'` its `output_stride` reaches the harness encoder
  (`encoder_kwargs`; dilated stages, weights unchanged); its `arch` is not used here -- the harness's
  `--arch` is the variable under study. Any other backbone type is ignored with a warning.
  `data_preprocessor`, `test_cfg`, optimiser and schedule settings are the harness's business.

`HarnessEncoder` is also registered as an MMSeg backbone, so a full MMSeg `EncoderDecoder` can be
built from the same config (`register_harness_backbone()`; importing this module after `mmseg`, e.g.
through a config's `custom_imports=dict(imports=['transfer.decoders.mmseg'])`, registers it too).
Its input is what MMSeg's data preprocessor gives (normalised images); it returns the stride >= 4
levels, the same tuple the bridge hands the head.

Heads that need compiled `mmcv.ops` (Mask2Former, MaskFormer, CCNet, PSANet, PointRend, SAN) cannot
run on the pure-Python forks; they fail with one line pointing to the native `--decoder mask2former`.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import hashlib
import io
import logging
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from torch import nn

from bench.core.errors import UserError
from transfer.decoders.base import DecoderOptions, SegmentationDecoder, register_decoder

INSTALL_HINT = 'pip install -e ".[mmseg]"'
BACKBONE_TYPE = "HarnessEncoder"
# mmseg heads whose modules import compiled mmcv.ops (or mmdet heads that do); checked up front
# because MMSeg's own message for some of them is misleading (Mask2Former blames a missing mmdet).
OPS_HEADS = {"Mask2FormerHead", "MaskFormerHead", "CCHead", "PSAHead", "PointHead", "SideAdapterCLIPHead"}
_SYNC_BN = {"SyncBN", "MMSyncBN", "NaiveSyncBN"}


# --------------------------------------------------------------------------- lazy MMSeg import

@contextlib.contextmanager
def _quiet(all_warnings: bool = True):
    """Silence the forks' chatter: prints and mmengine's log (import-time notes about missing CUDA
    ops, `init_weights` reports), and with `all_warnings` Python warnings too."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()  # created before stdout is redirected: keeps the real stream
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            if all_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@functools.cache
def _mmseg():
    """Import MMSeg (registering its models and `HarnessEncoder`); one line when the extra is missing."""
    try:
        import mmengine  # noqa: F401

        with _quiet():
            import mmcv  # noqa: F401
            import mmseg.models  # noqa: F401  (fills the MODELS registry)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise UserError(f"the mmseg decoder needs the optional MMSegmentation extra, which is not installed "
                        f"({missing} is missing); install it with: {INSTALL_HINT}") from None
    except AssertionError as exc:  # mmseg asserts compatible mmcv/mmengine versions at import
        raise UserError(f"the MMSegmentation install is inconsistent ({_one_line(exc)}); "
                        f"reinstall the extra: {INSTALL_HINT}") from None
    _register_backbone()
    return sys.modules["mmseg"]


@functools.cache
def _ops_missing() -> str | None:
    """Why compiled `mmcv.ops` cannot be used, or None when they can."""
    try:
        with _quiet():
            import mmcv.ops  # noqa: F401
    except Exception as exc:  # ModuleNotFoundError: mmcv._ext, or a broken build
        return _one_line(exc)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- levels

def mmseg_levels(strides: list[int]) -> list[int]:
    """Harness level indices in MMSeg's numbering (0 = first level at stride >= 4)."""
    return [i for i, s in enumerate(strides) if s >= 4] or list(range(len(strides)))


def _indices(in_index, n: int, where: str) -> list[int]:
    """`in_index` (int or list) as non-negative MMSeg level numbers; one line when out of range."""
    many = isinstance(in_index, (list, tuple))
    out = []
    for i in (in_index if many else [in_index]):
        if not isinstance(i, int) or not -n <= i < n:
            raise UserError(f"{where}.in_index {in_index!r}: the harness encoder gives {n} levels "
                            f"(MMSeg numbering, 0 = stride 4); use indices in {-n}..{n - 1}")
        out.append(i % n)
    return out


# --------------------------------------------------------------------------- the MMSeg backbone

def _register_backbone() -> None:
    from mmengine.model import BaseModule
    from mmseg.registry import MODELS

    if BACKBONE_TYPE in MODELS.module_dict:
        return

    class HarnessEncoder(BaseModule):
        """A harness encoder as an MMSeg backbone: normalised images in, stride >= 4 levels out.

        Args: arch (a registered harness backbone), output_stride (8/16 dilates the last stages),
        checkpoint (a harness `.safetensors` checkpoint whose encoder weights to load)."""

        def __init__(self, arch: str, output_stride: int | None = None, checkpoint: str | None = None,
                     init_cfg=None):
            from bench.core.checkpoint import load_checkpoint, load_encoder_weights
            from bench.core.models.backbones import create_encoder

            super().__init__(init_cfg)
            self.encoder = create_encoder(arch, **({"output_stride": output_stride} if output_stride else {}))
            if checkpoint:
                load_encoder_weights(self.encoder, load_checkpoint(checkpoint).encoder, source=str(checkpoint))
            self.levels = mmseg_levels(self.encoder.strides)
            self.channels = [self.encoder.channels[i] for i in self.levels]
            self.strides = [self.encoder.strides[i] for i in self.levels]

        def forward(self, x):
            features = self.encoder(x)
            return tuple(features[i] for i in self.levels)

    MODELS.register_module(name=BACKBONE_TYPE, module=HarnessEncoder)


def register_harness_backbone() -> None:
    """Register `HarnessEncoder` in MMSeg's MODELS registry (importing MMSeg if needed)."""
    _mmseg()


# --------------------------------------------------------------------------- the config file

def _config_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"mmseg config {spec}: file not found")
    if path.suffix != ".py":
        raise UserError(f"mmseg config {spec}: not a Python config (.py); the bridge reads MMSeg's Python configs")
    return path


def _config_files(path: Path, seen: set[Path] | None = None) -> list[Path]:
    """The config and the local files its `_base_` names (recursively), read without importing MMSeg."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    files = [path]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"mmseg config {path}: not valid Python ({_one_line(exc)})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                continue
            for base in [bases] if isinstance(bases, str) else list(bases):
                if isinstance(base, str) and "::" not in base:  # `pkg::path` lives in an installed package
                    target = path.parent / base
                    if not target.is_file():
                        raise UserError(f"mmseg config {path}: _base_ file {base} not found")
                    files += _config_files(target, seen)
    return files


@functools.lru_cache(maxsize=8)
def _load_config(path: str, sha256: str):
    """The parsed config (cached by content: encoder_kwargs and the constructor both read it)."""
    _mmseg()
    from mmengine.config import Config

    try:
        with _quiet():
            cfg = Config.fromfile(path)
    except Exception as exc:
        raise UserError(f"mmseg config {path}: cannot be read ({type(exc).__name__}: {_one_line(exc)})") from None
    model = cfg.get("model")
    if not isinstance(model, dict) or not model.get("decode_head"):
        raise UserError(f"mmseg config {path}: no model.decode_head to build")
    if isinstance(model["decode_head"], (list, tuple)):
        raise UserError(f"mmseg config {path}: a list of decode heads (CascadeEncoderDecoder) is not supported")
    return cfg


def _config(spec: str):
    path = _config_path(spec)
    _config_files(path)  # one line for invalid Python or a missing _base_, before mmengine executes it
    return _load_config(str(path), _sha256(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bn_not_sync(cfg):
    """SyncBN needs a process group; one CPU/GPU process uses plain BN (same maths)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == "type" and value in _SYNC_BN:
                cfg[key] = "BN"
            else:
                _bn_not_sync(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _bn_not_sync(value)
    return cfg


# --------------------------------------------------------------------------- the decoder

@register_decoder
class MMSegDecoder(SegmentationDecoder):
    name = "mmseg:"
    description = "any MMSegmentation decode head from a config file (the [mmseg] extra)"

    class Options(DecoderOptions):
        spec: str = Field(..., description="the MMSeg config file (.py)")
        auxiliary: bool = Field(True, description="train the config's auxiliary_head too (its weighted loss "
                                                  "is added; it never predicts)")

        @field_validator("spec")
        @classmethod
        def _exists(cls, spec: str) -> str:
            # Checked with the options, so a manifest naming a missing config fails before anything runs.
            try:
                _config_path(spec)
            except UserError as exc:
                raise PydanticCustomError("mmseg_config", str(exc)) from None
            return spec

    @classmethod
    def content_ids(cls, options) -> dict:
        # Only contents count (paths are not fingerprinted): an edited config or base re-runs the cell.
        root = _config_path(options.spec).resolve()
        out = {}
        for f in _config_files(root):
            rel = f.relative_to(root.parent).as_posix() if f.is_relative_to(root.parent) else f.name
            key = "mmseg_config" if f == root else f"mmseg_base:{rel}"
            out[key] = _sha256(f)
        return out

    @classmethod
    def encoder_kwargs(cls, options) -> dict:
        backbone = _config(options.spec)["model"].get("backbone") or {}
        if backbone.get("type") == BACKBONE_TYPE and backbone.get("output_stride"):
            return {"output_stride": int(backbone["output_stride"])}
        return {}

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        _mmseg()
        from mmseg.registry import MODELS

        cfg = _config(options.spec)
        self.spec = options.spec
        where = f"mmseg config {options.spec}"
        backbone = cfg["model"].get("backbone") or {}
        if backbone and backbone.get("type") != BACKBONE_TYPE:
            warnings.warn(f"{where}: model.backbone {backbone.get('type')!r} is ignored; the harness encoder "
                          f"replaces it (type='{BACKBONE_TYPE}' sets its output_stride)", stacklevel=2)
        self.levels = mmseg_levels(strides)
        level_channels = [channels[i] for i in self.levels]
        level_strides = [strides[i] for i in self.levels]
        aux = cfg["model"].get("auxiliary_head") if options.auxiliary else None
        aux = [] if not aux else list(aux) if isinstance(aux, (list, tuple)) else [aux]
        train_cfg = cfg["model"].get("train_cfg") or {}
        self.train_cfg = copy.deepcopy(train_cfg)

        heads, used = [], set()
        for name, head_cfg in [("decode_head", cfg["model"]["decode_head"])] + \
                [(f"auxiliary_head[{k}]", c) for k, c in enumerate(aux)]:
            head, levels = self._build_head(MODELS, copy.deepcopy(head_cfg), f"{where}: model.{name}",
                                            level_channels, level_strides, num_classes)
            heads.append(head)
            used.update(self.levels[i] for i in levels)
        self.head = heads[0]
        self.aux_heads = nn.ModuleList(heads[1:])
        self._used = sorted(used)

    @staticmethod
    def _build_head(MODELS, head_cfg, where, level_channels, level_strides, num_classes):
        from mmseg.models.decode_heads.decode_head import BaseDecodeHead

        kind = head_cfg.get("type")
        short = kind.split(".")[-1] if isinstance(kind, str) else kind
        if short in OPS_HEADS and _ops_missing():
            _raise_ops(where, short)
        head_cls = MODELS.get(kind) if isinstance(kind, str) else kind
        if head_cls is None:
            raise UserError(f"{where}: unknown head type {kind!r} (not in MMSeg's model registry)")
        n = len(level_channels)
        if "in_index" in head_cfg:
            levels = _indices(head_cfg["in_index"], n, where)
            many = isinstance(head_cfg["in_index"], (list, tuple))
            head_cfg["in_index"] = levels if many else levels[0]
            head_cfg["in_channels"] = [level_channels[i] for i in levels] if many else level_channels[levels[0]]
        elif isinstance(head_cfg.get("in_channels"), (list, tuple)):  # a head that reads every level
            levels = list(range(n))
            head_cfg["in_channels"] = list(level_channels)
        else:  # BaseDecodeHead's default in_index=-1: the deepest level
            levels = [n - 1]
            head_cfg["in_channels"] = level_channels[-1]
        if "strides" in head_cfg:  # multi-level heads (Mask2Former) name the strides of what they read
            head_cfg["strides"] = [level_strides[i] for i in levels]
        head_cfg["num_classes"] = num_classes
        if isinstance(head_cls, type) and issubclass(head_cls, BaseDecodeHead):
            head_cfg["out_channels"] = num_classes  # K scores, never a one-channel sigmoid
            head_cfg.pop("threshold", None)
        _bn_not_sync(head_cfg)
        try:
            head = MODELS.build(head_cfg)  # (its warnings, e.g. about avg_non_ignore, are the user's to see)
            with _quiet(all_warnings=False):
                head.init_weights()  # MMSeg's own initialisation (e.g. conv_seg ~ N(0, 0.01))
        except UserError:
            raise
        except Exception as exc:
            message = _one_line(exc)
            if _ops_missing() and any(s in message for s in ("mmcv.ops", "mmcv._ext", "mmcv-lite", "onedl-mmcv",
                                                             "onedl-mmdetection", " ops")):
                _raise_ops(where, short)
            raise UserError(f"{where}: cannot build {kind} ({type(exc).__name__}: {message})") from None
        return head, levels

    def used_levels(self, num_levels: int) -> list[int]:
        return list(self._used)

    def _inputs(self, features: list[torch.Tensor]) -> tuple:
        return tuple(features[i] for i in self.levels)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(self._inputs(features))
        return F.interpolate(logits, size=tuple(size), mode="bilinear",
                             align_corners=bool(getattr(self.head, "align_corners", False)))

    def loss(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        shape = tuple(labels.shape[-2:])
        meta = {"img_shape": shape, "pad_shape": shape, "ori_shape": shape}
        samples = [SegDataSample(gt_sem_seg=PixelData(data=y[None]), metainfo=meta) for y in labels]
        inputs = self._inputs(features)
        terms = []
        for head in [self.head, *self.aux_heads]:
            head.ignore_index = ignore_index  # the dataset's, whatever the config said
            for key, value in head.loss(inputs, samples, self.train_cfg).items():
                if "loss" in key:  # mmengine's rule (parse_losses); `acc_seg` etc. are logs
                    terms += [v.mean() for v in value] if isinstance(value, (list, tuple)) else [value.mean()]
        if not terms:
            raise UserError(f"mmseg config {self.spec}: the heads returned no loss term (no key containing 'loss')")
        return torch.stack(terms).sum()


def _raise_ops(where: str, kind: str):
    raise UserError(f"{where}: {kind} needs compiled mmcv.ops, which this install lacks ({_ops_missing()}); "
                    f"use the native --decoder mask2former, or build mmcv with its ops") from None


# A config's `custom_imports=['transfer.decoders.mmseg']` imports this module after MMSeg: register then.
if "mmseg.registry" in sys.modules:
    with contextlib.suppress(UserError):
        _mmseg()
