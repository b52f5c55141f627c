"""`bench cka`, the CKA matrix a full cell stores, and the pre-trained vs fine-tuned heatmaps of
`bench aggregate` (from stored matrices; from kept weights for older cells)."""

import json

import numpy as np
import pandas as pd

import bench.report.layer_cka as layer_cka_module
from bench.report import plots
from bench.report.aggregate import records_frame
from bench.cli import main
from bench.report.layer_cka import dataset_batches, layer_cka, load_encoder, pretrained_vs_finetuned
from transfer.similarity import probe_batches, probe_images, read_cka
from tests.conftest import cell_config
from transfer.api import Cell, run_cell


def _cell(tiny_world, ckpt, protocol, out, keep_weights=False, backbone="depth"):
    cell = Cell(backbone, "depth_supervised" if ckpt else "none", "resnet10t", "synth", protocol,
                "linear" if protocol == "linear" else "monodepth2", 2, 0)
    config = cell_config(tiny_world, cell, checkpoint=ckpt, steps=3, batch_size=2, eval_every=3,
                         optim={"lr": 1e-2, "weight_decay": 0.0}, keep_weights=keep_weights)
    return run_cell(config, out, progress=False)


def test_identical_networks_have_unit_diagonal_and_within_is_symmetric(tiny_world, tiny_depth_ckpt, tmp_path, capsys):
    assert main(["cka", "--a", str(tiny_depth_ckpt), "--b", str(tiny_depth_ckpt.parent), "--root", str(tiny_world),
                 "--out", str(tmp_path / "ab"), "--batch-size", "4"]) == 0
    m = pd.read_csv(tmp_path / "ab" / "cka.csv", index_col=0)
    assert list(m.index) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert np.allclose(np.diag(m.to_numpy()), 1.0, atol=1e-6)
    assert (tmp_path / "ab" / "cka.png").stat().st_size > 0 and (tmp_path / "ab" / "cka.svg").is_file()
    assert main(["cka", "--a", str(tiny_depth_ckpt), "--within", "--root", str(tiny_world), "--layers", "blocks",
                 "--out", str(tmp_path / "w"), "--batch-size", "4"]) == 0
    w = pd.read_csv(tmp_path / "w" / "cka.csv", index_col=0)
    assert list(w.index) == ["act1", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]  # resnet10t: one block a stage
    w = w.to_numpy()
    assert np.allclose(w, w.T) and np.allclose(np.diag(w), 1.0)


def test_cka_option_errors_are_one_line(tiny_world, tiny_depth_ckpt, tmp_path, capsys):
    assert main(["cka", "--a", str(tiny_depth_ckpt), "--root", str(tiny_world), "--out", str(tmp_path)]) == 2
    assert "--within" in capsys.readouterr().err
    assert main(["cka", "--a", str(tmp_path), "--within", "--root", str(tiny_world), "--out", str(tmp_path)]) == 2
    assert "keep_weights" in capsys.readouterr().err
    assert main(["cka", "--a", str(tiny_depth_ckpt), "--within", "--layers", "heads", "--root", str(tiny_world),
                 "--out", str(tmp_path)]) == 2
    assert "unknown layer preset" in capsys.readouterr().err


def _files(folder):
    """The files a cell left, its saved predictions (transfer/predictions.py) aside."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.relative_to(folder).parts[0] != "predictions")


def test_a_full_cell_stores_its_cka_and_keeps_weights_only_when_asked(tiny_world, tiny_depth_ckpt, tmp_path):
    results, plain = tmp_path / "results", tmp_path / "plain"
    kept = results / "runs" / "depth__full"
    record = _cell(tiny_world, tiny_depth_ckpt, "full", plain)
    # By default a cell leaves its record, split, log and CKA matrix: no encoder, no cache or state.
    assert _files(plain) == ["cka.json", "log.txt", "record.json", "train_split.txt"]
    assert read_cka(plain, record["fingerprint"]) is not None
    assert read_cka(plain, "another fingerprint") is None  # a matrix of another version of the cell
    assert main(["transfer", "--checkpoint", str(tiny_depth_ckpt), "--root", str(tiny_world), "--protocol", "full",
                 "--train-size", "2", "--steps", "3", "--batch-size", "2", "--eval-every", "3", "--lr", "1e-2",
                 "--keep-weights", "--out", str(kept), "--no-progress"]) == 0
    assert _files(kept) == ["cka.json", "final.safetensors", "log.txt", "record.json", "train_split.txt"]
    record = json.loads((kept / "record.json").read_text())
    stored, names_a, names_b = read_cka(kept, record["fingerprint"])
    assert names_a == names_b == ["act1", "layer1", "layer2", "layer3", "layer4"]
    probe = json.loads((kept / "cka.json").read_text())["probe"]
    assert probe["images"] >= 4 and probe["encoder_sha256"] == record["encoder_sha256_after"]
    # The old way, from the saved weights on the same probe, gives the same matrix, up to the
    # weights' rounding to half precision (bench.core.kept_weights).
    recomputed, _, _ = layer_cka(load_encoder(tiny_depth_ckpt), load_encoder(kept),
                                 dataset_batches(record["config"]["dataset"], tiny_world, probe["images"],
                                                 probe["batch_size"]))
    assert np.allclose(stored, recomputed, rtol=0, atol=2e-3)  # the kept encoder is stored in half precision
    # MeSa's within-network rows, from the same forward passes: the first layer against every layer of
    # the pre-trained and of the fine-tuned encoder, as `bench cka --within` computes them.
    within = json.loads((kept / "cka.json").read_text())["within"]
    batches = dataset_batches(record["config"]["dataset"], tiny_world, probe["images"], probe["batch_size"])
    batches = list(batches)
    for side, weights in (("pretrained", tiny_depth_ckpt), ("finetuned", kept)):
        alone, names, _ = layer_cka(load_encoder(weights), None, batches)
        assert within["layer"] == names[0] == "act1"
        # (the stored rows were computed from the float32 weights in memory, the kept ones are half precision)
        atol = 1e-9 if side == "pretrained" else 2e-3
        assert np.allclose(within[side], alone[0], rtol=0, atol=atol) and within[side][0] == 1.0
    assert not np.allclose(within["pretrained"], within["finetuned"], atol=1e-6)
    # Fine-tuning moved the encoder, so the pre-trained/fine-tuned diagonal is not all exactly 1.
    assert not np.allclose(np.diag(stored), 1.0, atol=1e-9)
    # A cell cuts its probe from its whole evaluation set: the same batches as the first images alone.
    settings = record["config"]["dataset"]
    whole = probe_images(settings, tiny_world, 10**6)
    for n in (5, 9):
        cut = [x.numpy() for x in probe_batches(whole, 4, n)]
        alone = [x.numpy() for x in probe_batches(probe_images(settings, tiny_world, n), 4)]
        assert len(cut) == len(alone) >= 1 and all(np.array_equal(a, b) for a, b in zip(cut, alone))
    # `bench cka` reads the kept weights (its default probe is the cells' one).
    assert main(["cka", "--a", str(tiny_depth_ckpt), "--b", str(kept), "--root", str(tiny_world),
                 "--out", str(tmp_path / "cli")]) == 0
    assert np.allclose(pd.read_csv(tmp_path / "cli" / "cka.csv", index_col=0).to_numpy(), recomputed, atol=1e-6)
    # A cell from before cells stored their matrix: the aggregator computes it from the kept weights.
    (kept / "cka.json").unlink()
    pretrained_vs_finetuned(results, records_frame(results))
    m = pd.read_csv(results / "cka" / "depth__full.csv", index_col=0).to_numpy()
    assert np.allclose(m, recomputed, atol=1e-6)  # the csv holds 6 decimals


def test_aggregate_draws_the_heatmap_from_stored_matrices_without_weights(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                          monkeypatch):
    results = tmp_path / "results"
    record = _cell(tiny_world, tiny_depth_ckpt, "full", results / "runs" / "depth__full")
    _cell(tiny_world, tiny_depth_ckpt, "frozen", results / "runs" / "depth__frozen")
    _cell(tiny_world, None, "full", results / "runs" / "random__full", backbone="random")  # nothing pre-trained
    assert not list(results.rglob("*.safetensors"))
    assert not (results / "runs" / "random__full" / "cka.json").exists()
    stored = read_cka(results / "runs" / "depth__full", record["fingerprint"])

    def no_weights(*_args, **_kw):
        raise AssertionError("the aggregator loaded weights")

    monkeypatch.setattr(layer_cka_module, "encoder_from_checkpoint", no_weights)
    titles = []
    heatmap = plots.plot_cka_heatmap
    monkeypatch.setattr(plots, "plot_cka_heatmap", lambda m, r, c, title, *a, **kw: (titles.append(title),
                                                                                     heatmap(m, r, c, title, *a, **kw))[1])
    paths = pretrained_vs_finetuned(results, records_frame(results))
    # The title tells this heatmap from the same backbone's other decoders and protocols.
    assert titles == ["CKA, depth: pre-trained vs fine-tuned\n(synth, full fine-tuning, monodepth2 decoder, "
                      "init auto, 2 training images)"]
    # Up to date: not redrawn; a heatmap drawn before titles named the decoder (no subject) is.
    assert pretrained_vs_finetuned(results, records_frame(results)) == paths and len(titles) == 1
    from PIL import Image
    Image.open(results / "cka" / "depth__full.png").save(results / "cka" / "depth__full.png")  # drops the text
    pretrained_vs_finetuned(results, records_frame(results))
    assert len(titles) == 2
    assert sorted(p.name for p in paths) == ["depth__full.csv", "depth__full.png", "depth__full.svg"]
    m = pd.read_csv(results / "cka" / "depth__full.csv", index_col=0)
    assert list(m.index) == stored[1] and np.allclose(m.to_numpy(), stored[0], atol=1e-6)
    assert main(["aggregate", str(results)]) == 0
    # The qualitative grids of the cells' saved predictions (bench/report/qualitative.py), one per comparison.
    assert sorted(p.name for p in (results / "plots").glob("qualitative_*.png")) == [
        "qualitative_synth_frozen_monodepth2_auto_n2.png", "qualitative_synth_full_monodepth2_auto_n2.png"]
    page = (results / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list((results / "plots").glob("*.png"))) + 1  # + the heatmap
    assert "<figcaption>Linear CKA between every layer of the pre-trained encoder (rows) and every layer of the " \
           "fine-tuned encoder (columns) of depth on synth, full fine-tuning, monodepth2 decoder, init auto, " \
           "2 training images, seed 0," in page
