"""Kept weights (half precision, per cell kind), saved predictions, Grad-CAM (`bench explain`)
and the qualitative grids of `bench aggregate`."""

import html
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from bench.core import results_folder as rf
from bench.report.aggregate import records_frame
from bench.cli import main
from bench.core.checkpoint import load_checkpoint, state_sha256
from bench.core.cka import encoder_from_checkpoint
from bench.core.errors import UserError
from bench.core.gradcam import grad_cam, normalise_cams, segmentation_grad_cam, segmentation_target
from bench.core.kept_weights import FP16_MAX, half_precision, load_kept_weights
from bench.core.metrics import confusion_matrices
from bench.report import html as report
from bench.report.aggregate import write_reports
from bench.report.explain import first_eval_images, overlay
from bench.report.explain_grid import explain, explain_grid
from bench.report.layer_cka import load_encoder
from bench.report.qualitative import GAP, comparison_grid, grid_title, mosaic, write_qualitative
from tests.conftest import cell_config
from transfer.api import Cell, TransferSettings, resolve_cell_config, run_cell
from transfer.kept import rebuild_cell_model
from transfer.predictions import saved_indices

pytestmark = pytest.mark.usefixtures("one_thread")


# -- Grad-CAM maths -------------------------------------------------------------------------------

class _Net(torch.nn.Module):
    """A conv layer then a 1x1 classifier: the scores are linear in the layer's activations, so
    dS/dA_k(p) = W[c*(p), k] and the CAM has a closed form."""

    def __init__(self, channels=5, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Sequential(torch.nn.Conv2d(2, channels, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(channels, classes, 1)

    def forward(self, x):
        return self.head(self.layer(x))


def test_grad_cam_has_the_closed_form_of_a_linear_head():
    net = _Net()
    x = torch.randn(2, 2, 6, 7)
    cams, labels, _ = segmentation_grad_cam(net, net.layer, x)
    a = net.layer(x).detach().numpy()  # N x C x h x w
    w = net.head.weight.detach().numpy()[:, :, 0, 0]  # K x C
    b = net.head.bias.detach().numpy()
    y = np.einsum("kc,nchw->nkhw", w, a) + b[None, :, None, None]
    c_star = y.argmax(1)
    assert np.array_equal(labels.numpy(), c_star)
    for n in range(2):
        weights = w[c_star[n]].mean(axis=(0, 1))  # mean over pixels p of W[c*(p), :]
        expected = np.maximum(np.einsum("c,chw->hw", weights, a[n]), 0)
        assert np.allclose(cams[n].numpy(), expected, atol=1e-5)
    # One image alone gets the map it gets in the batch: the backward of the summed target is per image.
    alone, _, _ = segmentation_grad_cam(net, net.layer, x[1:])
    assert torch.allclose(alone[0], cams[1], atol=1e-6)


def test_grad_cam_pieces_by_hand():
    # S sums, per pixel, the score of its argmax class: here pixels (0, 0) -> 3.0, (0, 1) -> 5.0.
    scores = torch.tensor([[[[1.0, 5.0]], [[3.0, -1.0]]]], requires_grad=True)
    assert float(segmentation_target(scores).detach()) == 8.0
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    g = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-8.0, 0.0], [0.0, 0.0]]]])  # channel weights 1 and -2
    assert torch.equal(grad_cam(a, g), torch.tensor([[[0.0, 0.0], [1.0, 2.0]]]))  # ReLU(A_0 - 2 A_1)
    up = normalise_cams(torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]]), (2, 4))
    assert torch.allclose(up[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))  # bilinear, then / max
    assert float(up[0].max()) == 1.0 and torch.equal(up[1], torch.zeros(2, 4))  # an all-zero map stays zero


# -- compact kept weights -------------------------------------------------------------------------

def test_half_precision_uses_bfloat16_only_where_float16_overflows():
    state = {"small": torch.tensor([1.0, -3.5, 1e-3]), "big": torch.tensor([1.0, 2 * FP16_MAX]),
             "counter": torch.tensor(7, dtype=torch.int64), "inf": torch.tensor([float("inf"), 1.0])}
    tensors, as_bf16 = half_precision(state)
    assert as_bf16 == ["big"]
    assert tensors["small"].dtype == torch.float16 and tensors["big"].dtype == torch.bfloat16
    assert tensors["counter"].dtype == torch.int64 and tensors["inf"].dtype == torch.float16
    assert torch.isfinite(tensors["big"].float()).all()  # float16 would have made it inf
    assert torch.allclose(tensors["small"].float(), state["small"], rtol=2 ** -11)


# -- cells that keep their weights and save predictions --------------------------------------------

@pytest.fixture(scope="module")
def results(tiny_world, tiny_depth_ckpt, tmp_path_factory):
    """A results folder: depth cells under every protocol keeping their weights, a random
    full cell that keeps none, and a random frozen one that keeps them (it has no checkpoint)."""
    out = tmp_path_factory.mktemp("explain") / "results"
    for backbone, protocol, keep in (("depth", "full", True), ("depth", "frozen", True), ("depth", "linear", True),
                                     ("random", "full", False), ("random", "frozen", True)):
        ckpt = tiny_depth_ckpt if backbone == "depth" else None
        cell = Cell(backbone, "depth_supervised" if ckpt else "none", "resnet10t", "synth", protocol,
                    "linear" if protocol == "linear" else "monodepth2", 2, 0)
        config = cell_config(tiny_world, cell, checkpoint=ckpt, steps=4, batch_size=2, eval_every=4,
                             optim={"lr": 1e-2, "weight_decay": 0.0}, keep_weights=keep)
        run_cell(config, out / "runs" / cell.id, progress=False)
    return out


def _run_dir(results, backbone, protocol):
    return results / "runs" / f"{backbone}__synth__{protocol}__{'linear' if protocol == 'linear' else 'monodepth2'}__n2__s0"


def _record(run_dir):
    return json.loads((run_dir / "record.json").read_text())


def test_keep_weights_list_selects_cells_and_leaves_other_fingerprints_alone():
    kw = {"dataset": {"name": "synth"}, "dataset_root": "/x", "data_id": "w", "checkpoint": "/c",
          "checkpoint_sha256": "ab" * 32}
    listed = TransferSettings(keep_weights=["frozen/monodepth2", "linear"])
    for protocol, decoder, kept in (("full", "monodepth2", False), ("frozen", "monodepth2", True),
                                    ("frozen", "deeplabv3", False), ("linear", "linear", True)):
        cell = Cell("depth", "depth_supervised", "resnet18", "synth", protocol, decoder, 16, 0)
        config = resolve_cell_config(cell, listed, **kw)
        plain = resolve_cell_config(cell, TransferSettings(), **kw)
        everything = resolve_cell_config(cell, TransferSettings(keep_weights=True), **kw)
        assert config.get("keep_weights", False) is kept
        assert config["fingerprint"] == (everything if kept else plain)["fingerprint"]
        assert "keep_weights" not in plain and everything["keep_weights"] is True
    with pytest.raises(ValueError, match="keep_weights 'fine': unknown protocol"):
        TransferSettings(keep_weights=["fine"])


def test_each_cell_kind_keeps_what_rebuilds_it_in_half_precision(results, tiny_depth_ckpt):
    full, frozen, linear = (_run_dir(results, "depth", p) for p in ("full", "frozen", "linear"))
    assert not (_run_dir(results, "random", "full") / rf.KEPT_WEIGHTS).exists()  # keep_weights off
    sha = _record(frozen)["checkpoint"]["sha256"]
    for run_dir, has_encoder in ((full, True), (frozen, False), (linear, False)):
        with safe_open(str(run_dir / rf.KEPT_WEIGHTS), framework="pt") as f:
            names = list(f.keys())
            dtypes = {f.get_tensor(k).dtype for k in names}
        assert any(n.startswith("decoder.") for n in names)
        assert any(n.startswith("encoder.") for n in names) == has_encoder
        assert dtypes <= {torch.float16, torch.bfloat16, torch.int64} and torch.float16 in dtypes
        kept = load_kept_weights(run_dir / rf.KEPT_WEIGHTS)
        assert all(v.dtype in (torch.float32, torch.int64) for v in kept.decoder.values())  # read back as fp32
        assert kept.meta["stored_precision"] == "half"
        assert kept.encoder_is_checkpoint == (not has_encoder)
        if not has_encoder:
            assert kept.checkpoint_sha256 == sha
    # The random baseline's frozen cell has no checkpoint: it keeps its untrained encoder (in half
    # precision) and is rebuilt from that file alone (the quickstart's random frozen cells once failed
    # here: "kept weights without an encoder must name the checkpoint's sha256").
    random_frozen = _run_dir(results, "random", "frozen")
    kept = load_kept_weights(random_frozen / rf.KEPT_WEIGHTS)
    assert kept.encoder and not kept.encoder_is_checkpoint and kept.checkpoint_sha256 is None
    model = rebuild_cell_model(_record(random_frozen), random_frozen)
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in kept.encoder.items())
    # The frozen cell's rebuilt encoder is the checkpoint's, bit for bit; its decoder the kept one.
    model = rebuild_cell_model(_record(frozen), frozen)
    assert state_sha256(model.encoder.state_dict()) == _record(frozen)["encoder_sha256_after"] == \
        state_sha256(load_checkpoint(tiny_depth_ckpt).encoder)
    kept = load_kept_weights(frozen / rf.KEPT_WEIGHTS)
    assert all(torch.equal(model.decoder.state_dict()[k], v) for k, v in kept.decoder.items())
    # `bench cka` on a frozen cell folder compares its encoder: the checkpoint's.
    assert state_sha256(load_encoder(frozen).state_dict()) == state_sha256(load_checkpoint(tiny_depth_ckpt).encoder)
    # A full cell's file is half the size of float32 and still an encoder for `bench cka`.
    encoder = encoder_from_checkpoint(full / rf.KEPT_WEIGHTS)
    fine_tuned = rebuild_cell_model(_record(full), full).encoder
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), fine_tuned.state_dict().values()))
    both = load_kept_weights(full / rf.KEPT_WEIGHTS)
    tensors = [*both.encoder.values(), *both.decoder.values()]
    fp32_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)
    assert (full / rf.KEPT_WEIGHTS).stat().st_size < 0.55 * fp32_bytes


def test_a_moved_or_changed_checkpoint_is_a_one_line_error(results, tmp_path, tiny_depth_ckpt):
    frozen = tmp_path / "frozen"
    shutil.copytree(_run_dir(results, "depth", "frozen"), frozen)
    record = _record(frozen)
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(tiny_depth_ckpt.read_bytes() + b" ")  # another file at the recorded place
    with pytest.raises(UserError, match="it changed since the cell ran"):
        rebuild_cell_model({**record, "checkpoint": {**record["checkpoint"], "path": str(changed)}}, frozen)
    with pytest.raises(UserError, match="not there any more"):
        rebuild_cell_model({**record, "checkpoint": {**record["checkpoint"], "path": str(tmp_path / "gone")}}, frozen)
    with pytest.raises(UserError, match="another version of the cell"):  # weights left by an earlier version
        rebuild_cell_model({**record, "fingerprint": "0" * 64}, frozen)


def test_saved_predictions_are_what_the_evaluation_scored(results):
    for backbone, protocol in (("depth", "full"), ("depth", "frozen"), ("depth", "linear"), ("random", "full")):
        run_dir = _run_dir(results, backbone, protocol)
        record = _record(run_dir)
        saved = json.loads((run_dir / "predictions" / "predictions.json").read_text())
        n = record["dataset"]["num_eval_images"]
        assert [e["index"] for e in saved["images"]] == saved_indices(n) and saved["fingerprint"] == record["fingerprint"]
        classes = len(record["class_names"])
        for entry in saved["images"]:
            with Image.open(run_dir / "predictions" / entry["prediction"]) as im:
                assert im.mode == "P" and list(im.getpalette()[:3 * classes]) == [v for c in saved["palette"] for v in c]
                pred = np.asarray(im)
            label = np.asarray(Image.open(run_dir / "predictions" / entry["label"]))
            assert list(pred.shape) == entry["native_size"]  # the tiny world is under the preview size
            # Its counts are the record's own for this image (the evaluation's per-image counts).
            m = confusion_matrices(torch.from_numpy(pred.astype(np.int64))[None, None],
                                   torch.from_numpy(label.astype(np.int64))[None], classes, 255)[0][0]
            i = entry["index"]
            assert record["per_image"]["stems"][i] == entry["stem"]
            assert np.diag(m.numpy()).tolist() == record["per_image"]["intersection"][i]
    assert saved_indices(100) == [0, 33, 66, 99] and saved_indices(2) == [0, 1] and saved_indices(1) == [0]


# -- bench explain --------------------------------------------------------------------------------

def test_explain_writes_overlays_of_the_grad_cam(results, tiny_depth_ckpt, tiny_world, capsys):
    frozen = _run_dir(results, "depth", "frozen")
    assert main(["explain", str(results), "--images", "3", "--layer", "act1"]) == 0
    out = capsys.readouterr().out
    # The cells that kept weights: depth's three and random's frozen one, not random's full one.
    assert out.count("3 overlays") == 4 and "random__synth__full" not in out
    assert f"figure: {results / 'plots' / 'explain_act1_synth_frozen_monodepth2_auto_n2.png'}" in out
    arrays = np.load(frozen / "explain" / "act1.npz")
    assert arrays["indices"].tolist() == [0, 1, 2]
    # By hand: the checkpoint's encoder, the kept decoder, the layer act1.
    record = _record(frozen)
    model = rebuild_cell_model(record, frozen)
    reference = encoder_from_checkpoint(tiny_depth_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), reference.state_dict().values()))
    images = first_eval_images(record, 3)
    x = images.load([0, 1, 2])
    cams, _, _ = segmentation_grad_cam(model, model.encoder.act1, x)
    expected = normalise_cams(cams, x.shape[-2:]).numpy()
    for i in range(3):
        assert np.allclose(arrays[f"cam_eval{i:05d}"], expected[i], atol=1e-5)
        assert float(arrays[f"cam_eval{i:05d}"].max()) == pytest.approx(1.0)
        png = np.asarray(Image.open(frozen / "explain" / f"act1_eval{i:05d}.png"))
        assert np.array_equal(png, overlay(images.items[i][0], arrays[f"cam_eval{i:05d}"]))
    # Another decoder on the same encoder explains differently: the map goes through the decoder.
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(-1.0)
    flipped, _, _ = segmentation_grad_cam(model, model.encoder.act1, x)
    assert not torch.allclose(flipped, cams)


def test_a_results_folder_gets_one_figure_per_comparison_of_the_cells_overlays(results, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(results, folder, ignore=shutil.ignore_patterns("explain", "plots"))
    written, figures = explain(folder, 2, "act1")
    names = [p.name for p in figures]
    # One per comparison with an explained cell (every protocol here), png and svg.
    assert {n for n in names if n.endswith(".png")} == {f"explain_act1_synth_{p}_n2.png" for p in
                                                        ("full_monodepth2_auto", "frozen_monodepth2_auto",
                                                         "linear_linear_auto")}
    assert len(names) == 6 and all((folder / "plots" / n).is_file() for n in names)
    df = records_frame(folder)
    done = {c.resolve() for c in written}
    frozen = explain_grid(df[df["protocol"] == "frozen"], ["random", "depth"], "act1", done)
    assert frozen.columns == ["image", "random", "depth"] and frozen.missing == []
    images = first_eval_images(_record(_run_dir(folder, "depth", "frozen")), 2)
    picture = mosaic(frozen)  # what the figure shows, panels GAP pixels apart
    for r, (stem, panels) in enumerate(frozen.rows):
        assert stem == images.samples[r].stem and np.array_equal(panels[0], images.items[r][0])
        h, w = panels[0].shape[:2]
        for c, backbone in enumerate(["random", "depth"], start=1):
            saved = np.asarray(Image.open(_run_dir(folder, backbone, "frozen") / "explain" / f"act1_eval{r:05d}.png"))
            assert np.array_equal(panels[c], saved)  # exactly the cell's own overlay
            top, left = r * (h + GAP), c * (w + GAP)
            assert np.array_equal(picture[top:top + h, left:left + w], saved)
    # The two cells' maps differ (two encoders): the columns are not one overlay repeated.
    assert not np.array_equal(frozen.rows[0][1][1], frozen.rows[0][1][2])
    # The random full cell kept no weights: left out, and the title says why.
    full = explain_grid(df[df["protocol"] == "full"], ["random", "depth"], "act1", done)
    assert full.columns == ["image", "depth"] and full.missing == ["random"]
    assert "left out, no kept weights: random" in grid_title(full) and "Grad-CAM of layer act1" in full.title
    # bench aggregate's report.html shows the figures with their caption.
    png = folder / "plots" / "explain_act1_synth_frozen_monodepth2_auto_n2.png"
    subject = "layer act1 on synth, frozen, monodepth2 decoder, init auto, 2 training images"
    assert report.caption(png) == report.CAPTIONS["explain_"].format(subject=subject)
    table = write_reports(folder)
    assert png in table["plots"]
    page = table["html"].read_text()
    assert "<h3>Grad-CAM (bench explain)</h3>" in page
    assert html.escape(report.CAPTIONS["explain_"].format(subject=subject)) in page


def test_explain_refusals_are_one_line(results, capsys):
    plain = _run_dir(results, "random", "full")
    assert main(["explain", str(plain), "--images", "2"]) == 2
    assert "no kept weights" in capsys.readouterr().err
    assert main(["explain", str(_run_dir(results, "depth", "linear")), "--layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'nope'" in err and "act1" in err and "layer1.0" in err and err.count("\n") == 1
    assert main(["explain", str(results), "--images", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    with pytest.raises(UserError, match="neither a cell folder"):
        explain(results / "runs", 1, "act1")


# -- qualitative grids ----------------------------------------------------------------------------

def test_the_grid_shows_each_backbones_saved_prediction(results, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    df = records_frame(folder)
    full = df[df["protocol"] == "full"]
    grid = comparison_grid(full, ["random", "depth"])
    assert grid.columns == ["image", "ground truth", "random", "depth"] and grid.missing == []
    saved = json.loads((_run_dir(folder, "depth", "full") / "predictions" / "predictions.json").read_text())
    assert [stem for stem, _ in grid.rows] == [e["stem"] for e in saved["images"]]
    palette = np.array(saved["palette"], dtype=np.uint8)
    picture = mosaic(grid)  # what the figure shows: panels GAP pixels apart
    for r, ((stem, panels), entry) in enumerate(zip(grid.rows, saved["images"])):
        pred = np.asarray(Image.open(_run_dir(folder, "depth", "full") / "predictions" / entry["prediction"]))
        assert np.array_equal(panels[3], palette[pred])  # the depth column: its saved prediction's colours
        h, w = pred.shape
        top, left = r * (h + GAP), 3 * (w + GAP)
        assert np.array_equal(picture[top:top + h, left:left + w], palette[pred])
        label = np.asarray(Image.open(_run_dir(folder, "depth", "full") / "predictions" / entry["label"]))
        scored = label != 255
        assert np.array_equal(panels[1][scored], palette[label[scored]])
        assert panels[0].shape == (*pred.shape, 3)
    # A cell run before cells saved predictions is left out, and the figure says so.
    shutil.rmtree(_run_dir(folder, "random", "full") / "predictions")
    grid = comparison_grid(records_frame(folder)[lambda d: d["protocol"] == "full"], ["random", "depth"])
    assert grid.columns == ["image", "ground truth", "depth"] and grid.missing == ["random"]
    assert "left out, no saved predictions (older runs): random" in grid_title(grid)
    # (bench aggregate draws them: tests/test_similarity.py's report test.)
    paths = write_qualitative(records_frame(folder)[lambda d: d["protocol"] == "full"], folder / "plots",
                              ["random", "depth"])
    assert [p.name for p in paths] == ["qualitative_synth_full_monodepth2_auto_n2.png",
                                       "qualitative_synth_full_monodepth2_auto_n2.svg"]
    with Image.open(paths[0]) as im:
        assert im.width > im.height > 0
