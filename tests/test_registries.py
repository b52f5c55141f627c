"""One contract test per registry, run on every registered entry (timm's tests/test_models.py idiom).

Each test is parametrised over `REGISTRY.names()` at collection time and runs the same cheap but
real checks on every entry. How to build an input for an entry lives in that registry's
`*_FIXTURES` table below; an entry without one fails ("add a fixture for new ..."), so a newly
registered method, source, dataset, decoder, arch or import format cannot slip in untested.
The per-topic test files check each entry in depth; this file checks that they all keep the
shared contract, and that every entry has the one-line description `bench list` prints.
"""

from __future__ import annotations

import csv
import json
import importlib
import inspect
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pretrain.methods  # noqa: F401  (importing the packages registers every entry)
import pretrain.sources  # noqa: F401
import transfer.datasets  # noqa: F401
import transfer.decoders  # noqa: F401
from bench.core.checkpoint import load_checkpoint, load_encoder_weights, save_checkpoint
from bench.core.models.backbones import BACKBONES, BackboneSpec, create_encoder, normalize
from bench.core.registry import Registry
from bench.importers.formats import FORMATS, IMPORT_FORMATS, LAYOUTS, Layout, read_foreign
from fixtures import checkpoint_formats as cf
from fixtures import one_line_error
from fixtures.ade20k import build_ade20k
from fixtures.cityscapes import build_cityscapes
from fixtures.kitti import build_kitti_200
from fixtures.nyuv2 import build_nyuv2
from fixtures.pretrain_layouts import (build_cityscapes_seq, build_image_folder, build_kitti_raw, build_nyuv2_depth,
                                       build_video_folder)
from fixtures.voc import build_voc
from pretrain.methods.base import METHODS, MethodOptions, options_help, parse_options
from pretrain.sources.base import KINDS, SOURCES, open_source
from transfer.datasets.base import DATASETS, SegmentationDataset, Transforms, open_dataset, read_pair
from transfer.decoders.base import DECODERS, SegmentationDecoder, decoder_class, parse_decoder_options
from transfer.model import build_model

QUIET = {"progress": False, "log": lambda m: None}
ROOT = Path(__file__).resolve().parents[1]

# Tiny models on a shared 2-core machine: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture(table: dict, what: str, name: str):
    """The entry's fixture from `table`; a registered entry without one fails the test."""
    if name not in table:
        table_name = next(k for k, v in globals().items() if v is table)
        pytest.fail(f"add a fixture for new {what} {name} in tests/test_registries.py ({table_name})", pytrace=False)
    return table[name]


# =========================================================================== pre-training methods
# name -> function(request) giving the config keys (and method options) of a 2-step run on the
# tiny generated world with resnet10t: the method's defaults, except where one is costly (the
# resnet18 pose net) or the method needs an input (depth_distill's pseudo-labels).

@pytest.fixture(scope="module")
def pseudo_labels(tiny_depth_ckpt, tiny_world, tmp_path_factory):
    """`bench pseudo-label` of the tiny world by the session's depth checkpoint (for depth_distill)."""
    from pretrain.pseudo_label import run_pseudo_label

    return run_pseudo_label(tiny_depth_ckpt, "synth", tiny_world, tmp_path_factory.mktemp("registry_pl") / "labels",
                            batch_size=4, device="cpu", **QUIET)


METHOD_FIXTURES = {
    "classification": lambda request: {},
    # MoCo's shuffled BN wants 2 per group; small views and queue keep the step cheap.
    "contrastive": lambda request: {"batch_size": 4, "options": {"view_size": "40x120", "queue_size": 8}},
    # DINO: a small head, small crops and two local crops keep the multi-crop step cheap.
    "dino": lambda request: {"options": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                         "local_crops_number": 2, "global_size": "32x96"}},
    "depth_distill": lambda request: {"options": {"pseudo_labels": str(request.getfixturevalue("pseudo_labels")),
                                                  "pose_arch": "resnet10t"}},
    "depth_stereo": lambda request: {},
    "depth_supervised": lambda request: {},
    "depth_video": lambda request: {"options": {"pose_arch": "resnet10t"}},
    "flow": lambda request: {},
    "mae": lambda request: {},
}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, request, tiny_world, tmp_path):
    extra = _fixture(METHOD_FIXTURES, "METHOD", name)(request)
    cls = METHODS.get(name)
    assert cls.name == name and cls.kind in KINDS
    # Its options model parses the defaults, and --help can list every option.
    defaults = parse_options(cls, {})
    assert isinstance(defaults, cls.Options) and issubclass(cls.Options, MethodOptions)
    assert len(options_help(cls)) == len(cls.Options.model_fields)

    config = {"name": name, "method": name, "arch": "resnet10t", "root": str(tiny_world), "data_id": "tiny",
              "steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 100, **extra}
    path = run_pretrain_quiet(config, tmp_path)
    with open(tmp_path / "history.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses

    ckpt = load_checkpoint(path)
    assert ckpt.meta["arch"] == "resnet10t" and ckpt.meta["method"] == name and ckpt.meta["steps"] == 2
    assert math.isfinite(ckpt.meta["summary"]["final_loss"]) and ckpt.meta["summary"]["nonfinite_steps"] == 0
    report = load_encoder_weights(create_encoder("resnet10t"), ckpt.encoder)
    assert report["loaded"] == report["total"] and not report["unexpected"]
    if ckpt.meta.get("decoder"):  # a kept decoder is described and saved
        assert ckpt.meta["decoder"].get("kind") and ckpt.decoder
    else:
        assert ckpt.decoder is None


@pytest.mark.parametrize("name", METHODS.names())
def test_method_runs_in_bf16_with_a_loader_worker(name, request, tiny_world, tmp_path):
    """Every method under CPU autocast (the mixed-precision path of a GPU run) and a DataLoader
    worker; the summary records both."""
    extra = _fixture(METHOD_FIXTURES, "METHOD", name)(request)
    config = {"name": name, "method": name, "arch": "resnet10t", "root": str(tiny_world), "data_id": "tiny",
              "steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 100, "device": "cpu",
              "precision": "bf16", "num_workers": 1, **extra}
    run_pretrain_quiet(config, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["device"] == "cpu" and summary["num_workers"] == 1
    assert summary["nonfinite_steps"] == 0 and math.isfinite(summary["final_loss"])


def run_pretrain_quiet(config: dict, out: Path) -> Path:
    from pretrain.api import run_pretrain

    return run_pretrain(config, out, **QUIET)


# ====================================================================== pre-training data sources
# name -> function(request, tmp_path) giving (root, source options) of a tiny official layout.

SOURCE_FIXTURES = {
    "cityscapes_seq": lambda request, tmp: (build_cityscapes_seq(tmp / "cs"), {}),
    "image_folder": lambda request, tmp: (build_image_folder(tmp / "imagenet"), {}),
    "kitti_raw": lambda request, tmp: (build_kitti_raw(tmp / "kitti"), {}),  # with the annotated depth maps
    "nyuv2_depth": lambda request, tmp: (build_nyuv2_depth(tmp / "nyu"), {}),
    "synth": lambda request, tmp: (request.getfixturevalue("tiny_world"), {}),
    "video_folder": lambda request, tmp: (build_video_folder(tmp / "videos"), {}),
}


def _rgb(array, what):
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8, (what, type(array), getattr(array, "dtype", None))
    assert array.ndim == 3 and array.shape[2] == 3 and min(array.shape[:2]) > 0, (what, array.shape)
    return array.shape[:2]


def _K(K, what, allow_none=False):
    if K is None and allow_none:
        return
    K = np.asarray(K)
    assert K.shape == (3, 3) and K.dtype == np.float64 and np.isfinite(K).all(), (what, K)


def _check_item(source, kind: str, item: dict) -> None:
    """The fields and dtypes of pretrain.sources.base's table for `kind`."""
    if kind in ("image", "depth", "label"):
        size = _rgb(item["image"], f"{kind}.image")
    if kind == "depth":
        depth = item["depth"]
        assert depth.dtype == np.float32 and depth.shape == size
        assert np.isfinite(depth).all() and (depth >= 0).all() and (depth > 0).any()
    elif kind == "video":
        frames = item["frames"]
        assert len(frames) == 3 and len({_rgb(f, "video.frames") for f in frames}) == 1
        _K(item["K"], "video.K", allow_none=True)
    elif kind == "stereo":
        assert _rgb(item["left"], "stereo.left") == _rgb(item["right"], "stereo.right")
        _K(item["K"], "stereo.K")
        assert isinstance(item["baseline"], float) and item["baseline"] > 0
    elif kind == "label":
        assert isinstance(item["label"], (int, np.integer)) and 0 <= item["label"] < len(source.class_names)


@pytest.mark.parametrize("name", SOURCES.names())
def test_source_contract(name, request, tmp_path):
    root, options = _fixture(SOURCE_FIXTURES, "SOURCE", name)(request, tmp_path)
    cls = SOURCES.get(name)
    assert cls.name == name and cls.kinds and set(cls.kinds) <= set(KINDS), cls.kinds
    source = open_source(name, root, options)
    for kind in cls.kinds:
        ids = source.items(kind)
        assert ids and ids == sorted(ids) and all(isinstance(i, str) for i in ids), (kind, ids[:3])
        _check_item(source, kind, source.load(kind, ids[0]))
    for kind in sorted(set(KINDS) - set(cls.kinds)):  # a kind it lacks is refused in one line
        assert "does not provide" in one_line_error(source.check_kind, kind, "some_method")

    # A missing root, and an empty one, are one-line errors (when opened or when listed).
    assert "not found" in one_line_error(open_source, name, tmp_path / "missing", options)
    empty = tmp_path / "empty"
    empty.mkdir()

    def open_and_list():
        open_source(name, empty, options).items(cls.kinds[0])

    one_line_error(open_and_list)


# ========================================================================= segmentation datasets
# name -> function(request, tmp_path) giving the root of a tiny official layout.

DATASET_FIXTURES = {
    "ade20k": lambda request, tmp: (build_ade20k(tmp), tmp)[1],
    "cityscapes": lambda request, tmp: (build_cityscapes(tmp), tmp)[1],
    "kitti": lambda request, tmp: (build_kitti_200(tmp), tmp)[1],  # 200 frames: its held-out set needs them
    "nyuv2": lambda request, tmp: (build_nyuv2(tmp), tmp)[1],
    "synth": lambda request, tmp: request.getfixturevalue("tiny_world"),
    "voc": lambda request, tmp: (build_voc(tmp), tmp)[1],
}


def _check_dataset(ds: SegmentationDataset) -> None:
    assert len(ds.class_names) == ds.num_classes > 0 and len(set(ds.class_names)) == ds.num_classes
    assert len(ds.palette) == ds.num_classes and all(len(c) == 3 for c in ds.palette)
    train, evaluation = ds.transfer_pools()  # the default train and eval splits
    assert train and evaluation, (len(train), len(evaluation))
    assert not {s.stem for s in train} & {s.stem for s in evaluation}
    for sample in (train[0], evaluation[0]):
        image, label = read_pair(ds, sample)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (image.dtype, image.shape)
        assert label.dtype == np.uint8 and label.shape == image.shape[:2], (label.dtype, label.shape)
        values = set(np.unique(label).tolist())
        assert values <= set(range(ds.num_classes)) | {ds.ignore_index}, sorted(values)


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, request, tmp_path):
    root = _fixture(DATASET_FIXTURES, "DATASET", name)(request, tmp_path)
    cls = DATASETS.get(name)
    assert cls.name == name and isinstance(cls.transforms, Transforms)
    assert cls.train_split in cls.splits and cls.eval_split in cls.splits
    ds = open_dataset(name, root)
    _check_dataset(ds)
    for classes in cls.class_sets:  # every selectable class set keeps the contract too
        ds = open_dataset(name, root, classes)
        assert ds.num_classes == classes
        _check_dataset(ds)
    one_line_error(open_dataset, name, tmp_path / "missing")


# ========================================================================== segmentation decoders
# shown name (`names()`, so `mmseg:ARG` for the prefix decoder) -> function() giving the decoder
# name build_model takes and its (tiny) options.

MMSEG_CONFIG = ROOT / "configs" / "mmseg" / "deeplabv3_aspp.py"  # what tests/test_mmseg_bridge.py builds


def _mmseg():
    """The mmseg: bridge on the repo's ASPP config; skipped without the optional extra unless
    BENCH_REQUIRE_MMSEG=1 (as in tests/test_mmseg_bridge.py)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("mmseg")
    except Exception as exc:  # ImportError, or mmseg's version assertions
        if os.environ.get("BENCH_REQUIRE_MMSEG") == "1":
            pytest.fail(f"BENCH_REQUIRE_MMSEG=1 but mmseg does not import: {type(exc).__name__}: {exc}")
        pytest.skip(f"MMSegmentation extra not installed ({type(exc).__name__}: {exc})")
    return f"mmseg:{MMSEG_CONFIG}", {}


DECODER_FIXTURES = {
    "deeplabv3": lambda: ("deeplabv3", {}),
    "linear": lambda: ("linear", {}),
    "mask2former": lambda: ("mask2former", {"hidden_dim": 32, "num_queries": 8, "decoder_layers": 2,
                                            "pixel_decoder_layers": 1, "train_points": 256}),
    "mmseg:ARG": _mmseg,
    "monodepth2": lambda: ("monodepth2", {}),
}
DECODER_INPUT = (2, 48, 80)  # N, H, W: 48 is no multiple of 32, so the scores are resampled
DECODER_CLASSES = 5


@pytest.mark.parametrize("shown", DECODERS.names())
def test_decoder_contract(shown):
    decoder, options = _fixture(DECODER_FIXTURES, "DECODER", shown)()
    cls = decoder_class(decoder)
    assert issubclass(cls, SegmentationDecoder)
    parse_decoder_options(decoder, {})  # the defaults parse
    torch.manual_seed(0)
    model, _ = build_model("resnet10t", None, decoder, "encoder", DECODER_CLASSES, options)
    n, h, w = DECODER_INPUT
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, DECODER_CLASSES, (n, h, w), generator=gen)
    y[:, :4] = 255  # some ignored pixels

    model.train()
    loss = model.decoder.loss(model.features(x), y, 255)  # as transfer.train.LossStep calls it
    assert loss.ndim == 0 and math.isfinite(float(loss.detach())) and loss.requires_grad
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.decoder.parameters())

    model.eval()
    with torch.no_grad():
        scores = model(x)
    assert scores.shape == (n, DECODER_CLASSES, h, w) and torch.isfinite(scores).all()


# ==================================================================================== backbones
# arch -> the number of feature levels it must give (CNNs: strides 2-32, ViTs: 4-32).

BACKBONE_FIXTURES = {
    "resnet10t": 5, "resnet18": 5, "resnet34": 5, "resnet50": 5,
    "vit_base_patch14_dinov2": 4, "vit_base_patch16_224": 4, "vit_small_patch14_dinov2": 4,
    "vit_small_patch16_224": 4, "vit_tiny_patch16_224": 4,
}
BACKBONE_INPUT = (33, 47)  # H, W: no multiple of 14, 16 or 32, so padding and ceil rounding show


@pytest.mark.parametrize("arch", BACKBONES.names())
def test_backbone_contract(arch):
    levels = _fixture(BACKBONE_FIXTURES, "BACKBONE", arch)
    assert isinstance(BACKBONES.get(arch)(), BackboneSpec)
    torch.manual_seed(0)
    enc = create_encoder(arch).eval()
    assert enc.arch == arch
    assert len(enc.channels) == len(enc.strides) == levels, (enc.channels, enc.strides)
    assert enc.strides == sorted(enc.strides) and enc.strides[-1] == 32
    assert set(enc.normalization) == {"mean", "std"}
    assert len(enc.normalization["mean"]) == len(enc.normalization["std"]) == 3
    h, w = BACKBONE_INPUT
    x = normalize(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)), enc.normalization)
    with torch.no_grad():
        feats = enc(x)
    assert len(feats) == levels
    for f, c, s in zip(feats, enc.channels, enc.strides):
        assert f.shape == (1, c, math.ceil(h / s), math.ceil(w / s)), (s, tuple(f.shape))
        assert torch.isfinite(f).all()


# ======================================================================= checkpoint import formats
# name -> function(request, tmp_path) writing a tiny file (or folder) of that format with
# tests/fixtures/checkpoint_formats.py; gives (path, arch).

RESNET_CHANNELS = [64, 64, 128, 256, 512]  # resnet18's and resnet10t's levels


@pytest.fixture(scope="module")
def r10t_state():
    return cf.timm_state("resnet10t")


@pytest.fixture(scope="module")
def vit_tiny_state():
    torch.manual_seed(0)
    return create_encoder("vit_tiny_patch16_224").state_dict()


def _harness(request, tmp):
    meta = {"arch": "resnet10t", "method": "depth_supervised", "data": {"dataset": "synth"}, "steps": 1, "seed": 0,
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "decoder": None}
    return save_checkpoint(tmp / "ckpt.safetensors", create_encoder("resnet10t").state_dict(), meta), "resnet10t"


def _torchvision(request, tmp):
    torch.save(cf.torchvision_resnet18_state(), tmp / "resnet18-f37072fd.pth")
    return tmp / "resnet18-f37072fd.pth", "resnet18"


def _timm(request, tmp):
    save_file(request.getfixturevalue("r10t_state"), str(tmp / "model.safetensors"))
    return tmp / "model.safetensors", "resnet10t"


def _r10t_body(request):
    return cf.encoder_part(request.getfixturevalue("r10t_state"))


def _monodepth2(request, tmp):
    cf.write_monodepth2_folder(tmp / "mono_640x192", _r10t_body(request), RESNET_CHANNELS)
    return tmp / "mono_640x192", "resnet10t"


def _nimbled(request, tmp):
    cf.write_nimbled_folder(tmp / "weights_19", _r10t_body(request), RESNET_CHANNELS)
    return tmp / "weights_19", "resnet10t"


IMPORT_FORMAT_FIXTURES = {
    "depth_anything": lambda request, tmp: (cf.write_depth_anything(tmp / "depth_anything_v2_vits.pth",
                                                                    request.getfixturevalue("vit_tiny_state")),
                                            "vit_tiny_patch16_224"),
    "depthtosemantic": lambda request, tmp: (cf.write_depthtosemantic(tmp / "d2s", _r10t_body(request),
                                                                      RESNET_CHANNELS)[0], "resnet10t"),
    "dino": lambda request, tmp: (cf.write_dino(tmp / "checkpoint.pth", request.getfixturevalue("vit_tiny_state")),
                                  "vit_tiny_patch16_224"),
    "harness": _harness,
    "mae": lambda request, tmp: (cf.write_mae(tmp / "mae_pretrain.pth", request.getfixturevalue("vit_tiny_state")),
                                 "vit_tiny_patch16_224"),
    "moco": lambda request, tmp: (cf.write_moco_v2(tmp / "moco_v2_800ep_pretrain.pth.tar",
                                                   request.getfixturevalue("r10t_state")), "resnet10t"),
    "monodepth2": _monodepth2,
    "nimbled": _nimbled,
    "timm": _timm,
    "torchvision": _torchvision,
}


@pytest.mark.parametrize("name", IMPORT_FORMATS.names())
def test_import_format_contract(name, request, tmp_path):
    path, arch = _fixture(IMPORT_FORMAT_FIXTURES, "IMPORT FORMAT", name)(request, tmp_path)
    assert isinstance(IMPORT_FORMATS.get(name), Layout)
    # read_foreign accepts exactly the registered names (FORMATS), and reads each with its layout.
    assert name in FORMATS and (name == "harness" or LAYOUTS[name] is IMPORT_FORMATS.get(name))
    want = create_encoder(arch).state_dict()
    for fmt in ("auto", name):
        imported = read_foreign(path, arch, fmt=fmt)
        assert imported.format == name, (fmt, imported.format, imported.notes[:1])
        assert set(imported.encoder) == set(want), (fmt, sorted(set(want) ^ set(imported.encoder))[:5])
        assert all(imported.encoder[k].shape == v.shape for k, v in want.items())


# ==================================================================== one line for `bench list`

REGISTRIES: dict[str, Registry] = {"METHOD": METHODS, "SOURCE": SOURCES, "DATASET": DATASETS, "DECODER": DECODERS,
                                   "BACKBONE": BACKBONES, "IMPORT FORMAT": IMPORT_FORMATS}
FIXTURE_TABLES = {"METHOD": METHOD_FIXTURES, "SOURCE": SOURCE_FIXTURES, "DATASET": DATASET_FIXTURES,
                  "DECODER": DECODER_FIXTURES, "BACKBONE": BACKBONE_FIXTURES, "IMPORT FORMAT": IMPORT_FORMAT_FIXTURES}


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


def _inherited_lines(entry) -> dict[str, str]:
    """The lines the entry would show without a description of its own: its base classes'
    `description`s and docstrings (a class), or its type's (an instance such as a Layout)."""
    owners = entry.__mro__[1:] if inspect.isclass(entry) else type(entry).__mro__
    lines = {}
    for c in reversed(owners):  # the nearest owner's name wins
        own = vars(c).get("description")
        for text in (own if isinstance(own, str) else None, inspect.getdoc(c)):
            if _first_line(text):
                lines[_first_line(text)] = c.__name__
    return lines


@pytest.mark.parametrize("what, name", [(what, name) for what, reg in REGISTRIES.items() for name, _ in reg.items()],
                         ids=lambda v: str(v).replace(" ", "_"))
def test_every_entry_has_its_own_one_line_description(what, name):
    registry = REGISTRIES[what]
    line = registry.describe(name)
    assert line and "\n" not in line, f"{what} {name}: empty describe(); give it a docstring or a `description`"
    inherited = _inherited_lines(registry.get(name))
    assert line not in inherited, (f"{what} {name}: describe() is inherited from {inherited[line]} ({line!r}); "
                                   f"give {name} its own docstring or `description`")


@pytest.mark.parametrize("what", list(REGISTRIES))
def test_fixture_tables_name_only_registered_entries(what):
    """A fixture left behind by a renamed or removed entry would hide that its successor has none."""
    stale = sorted(set(FIXTURE_TABLES[what]) - set(REGISTRIES[what].names()))
    assert not stale, f"tests/test_registries.py has fixtures for unregistered {what} entries: {stale}"
