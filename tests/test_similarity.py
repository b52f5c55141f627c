"""`bench cka` and the pre-trained vs fine-tuned heatmaps of `bench aggregate`."""

import numpy as np
import pandas as pd

from bench.cli import main
from bench.layer_cka import pretrained_vs_finetuned
from tests.conftest import cell_config
from transfer.api import Cell, run_cell


def _cell(tiny_world, ckpt, protocol, out, keep_weights=True, backbone="depth"):
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


def test_full_cells_keep_weights_and_aggregate_draws_pretrained_vs_finetuned(tiny_world, tiny_depth_ckpt, tmp_path):
    results = tmp_path / "results"
    _cell(tiny_world, tiny_depth_ckpt, "full", results / "runs" / "depth__full")
    _cell(tiny_world, tiny_depth_ckpt, "frozen", results / "runs" / "depth__frozen")
    _cell(tiny_world, None, "full", results / "runs" / "random__full", backbone="random")  # nothing pre-trained
    assert (results / "runs" / "depth__full" / "final.safetensors").is_file()
    assert not (results / "runs" / "depth__frozen" / "final.safetensors").exists()  # bit-identical to the checkpoint
    from bench.aggregate import records_frame

    paths = pretrained_vs_finetuned(results, records_frame(results), images=4, batch_size=4)
    assert sorted(p.suffix for p in paths) == [".csv", ".png", ".svg"]
    m = pd.read_csv(results / "cka" / "depth__full.csv", index_col=0).to_numpy()
    assert np.isfinite(m).all() and ((m > -0.05) & (m < 1.0 + 1e-6)).all()
    # Fine-tuning moved the encoder, so the pre-trained/fine-tuned diagonal is not all exactly 1.
    assert not np.allclose(np.diag(m), 1.0, atol=1e-9)
    assert main(["aggregate", str(results)]) == 0
    page = (results / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list((results / "plots").glob("*.png"))) + 1  # + the heatmap
    assert 'alt="depth__full"' in page
