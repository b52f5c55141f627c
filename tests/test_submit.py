"""`bench submit`, `bench convert` and manifest `import:` backbones: outside checkpoints join an
existing matrix without re-running anything else, and refused files leave the results untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from tests.fixtures import checkpoint_formats as cf

MANIFEST = """
name: sub
out: {out}
data:
  synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
backbones:
  - {{name: random, arch: resnet10t}}
{extra}
datasets: [{{name: synth}}]
transfer: {{protocols: [frozen, linear], train_sizes: [2], steps: 2, batch_size: 2, eval_every: 2}}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A finished one-backbone matrix: the leaderboard outside submissions join."""
    root = tmp_path_factory.mktemp("submit")
    manifest = root / "m.yaml"
    manifest.write_text(MANIFEST.format(out=root / "results", extra=""))
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    return manifest, root / "results"


def _records(results_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results_dir / "runs").glob("*/record.json")}


def _snapshot(results_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results_dir)): p.read_bytes() for p in results_dir.rglob("*")
            if p.is_file() and "plots" not in p.parts and p.name != "report.html"}


def _submit(manifest, name, arch, checkpoint, *extra) -> int:
    return main(["submit", "--name", name, "--arch", arch, "--checkpoint", str(checkpoint), "--manifest",
                 str(manifest), "--no-progress", "--no-plots", *extra])


def test_submissions_in_four_formats_join_the_leaderboard_without_rerunning_others(results, tmp_path):
    manifest, results_dir = results
    before = _records(results_dir)
    random_bytes = {k: (results_dir / "runs" / k / "record.json").read_bytes() for k in before}

    plain = cf.timm_state("resnet10t", seed=1)
    torch.save(plain, tmp_path / "tv.pth")                                    # torchvision/timm state dict
    cf.write_monodepth2_folder(tmp_path / "md2", cf.encoder_part(cf.timm_state("resnet10t", seed=2)),
                               create_channels("resnet10t"))                   # monodepth2 folder
    cf.write_moco_v2(tmp_path / "moco.pth.tar", cf.timm_state("resnet10t", seed=3))
    vit = cf.encoder_part(cf.timm_state("vit_tiny_patch16_224", seed=4, num_classes=0, dynamic_img_size=True))
    cf.write_dino(tmp_path / "dino.pth", vit)

    for name, arch, path in [("tv", "resnet10t", tmp_path / "tv.pth"), ("md2", "resnet10t", tmp_path / "md2"),
                             ("moco", "resnet10t", tmp_path / "moco.pth.tar"),
                             ("dino", "vit_tiny_patch16_224", tmp_path / "dino.pth")]:
        assert _submit(manifest, name, arch, path) == 0, name

    after = _records(results_dir)
    # The earlier backbone's records were re-used, byte for byte.
    assert all((results_dir / "runs" / k / "record.json").read_bytes() == v for k, v in random_bytes.items())
    by_backbone = {}
    for r in after.values():
        by_backbone.setdefault(r["cell"]["backbone"], []).append(r)
    assert set(by_backbone) == {"random", "tv", "md2", "moco", "dino"}
    assert all(len(v) == 2 and all(r["status"] == "ok" for r in v) for v in by_backbone.values())
    formats = {b: v[0]["checkpoint"]["provenance"]["format"] for b, v in by_backbone.items() if b != "random"}
    assert formats == {"tv": "timm", "md2": "monodepth2", "moco": "moco", "dino": "dino"}
    assert {r["cell"]["method"] for r in by_backbone["moco"]} == {"imported:moco"}
    # The monodepth2 depth decoder is reused by the frozen U-Net cell: Lao et al.'s Fig. 1b/d.
    md2_frozen = next(r for r in by_backbone["md2"] if r["cell"]["protocol"] == "frozen")
    assert md2_frozen["init"]["effective"] == "encoder+decoder"
    board = pd.read_csv(results_dir / "leaderboard.csv")
    assert set(board["backbone"]) == {"random", "tv", "md2", "moco", "dino"}
    # Re-submitting the same file under the same name changes nothing: conversion and cells are current.
    kept = {k: v for k, v in _snapshot(results_dir).items() if k.startswith(("runs", "imports"))}
    assert _submit(manifest, "moco", "resnet10t", tmp_path / "moco.pth.tar") == 0
    assert {k: v for k, v in _snapshot(results_dir).items() if k.startswith(("runs", "imports"))} == kept


def create_channels(arch: str) -> list[int]:
    from bench.core.models.backbones import create_encoder

    return create_encoder(arch).channels


@pytest.mark.parametrize("case", ["malicious", "partial", "nan", "name_clash", "wrong_arch"])
def test_refused_submissions_are_one_line_and_add_nothing(results, tmp_path, capsys, case):
    manifest, results_dir = results
    plain = cf.encoder_part(cf.timm_state("resnet10t", seed=5))
    marker = tmp_path / "pwned"
    name, arch, path = "bad", "resnet10t", tmp_path / "w.pth"
    if case == "malicious":
        cf.write_malicious(path, marker, plain)
    elif case == "partial":
        torch.save({k: v for k, v in plain.items() if not k.startswith("layer4.")}, path)
    elif case == "nan":
        torch.save({**plain, "conv1.0.weight": torch.full_like(plain["conv1.0.weight"], float("nan"))}, path)
    elif case == "name_clash":
        torch.save(plain, path)
        name = "random"
    else:
        torch.save(plain, path)
        arch = "resnet18"
    before = _snapshot(results_dir)
    capsys.readouterr()
    assert _submit(manifest, name, arch, path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert _snapshot(results_dir) == before and not (results_dir / "imports" / name).exists()
    assert not marker.exists()  # the payload never ran


def test_allow_partial_is_recorded_with_every_run(results, tmp_path):
    manifest, results_dir = results
    plain = cf.encoder_part(cf.timm_state("resnet10t", seed=6))
    torch.save({k: v for k, v in plain.items() if not k.startswith("layer4.")}, tmp_path / "p.pth")
    assert _submit(manifest, "partial", "resnet10t", tmp_path / "p.pth", "--allow-partial") == 0
    runs = [r for r in _records(results_dir).values() if r["cell"]["backbone"] == "partial"]
    assert runs and all(r["checkpoint"]["provenance"]["allow_partial"] for r in runs)


def test_convert_cli_and_manifest_import_entries(tmp_path, capsys):
    vit = cf.encoder_part(cf.timm_state("vit_tiny_patch16_224", seed=7, num_classes=0, dynamic_img_size=True))
    cf.write_depth_anything(tmp_path / "da.pth", vit)
    out = tmp_path / "da.safetensors"
    assert main(["convert", str(tmp_path / "da.pth"), "--arch", "vit_tiny_patch16_224", "--out", str(out)]) == 0
    assert "depth_anything" in capsys.readouterr().out and out.is_file()

    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(out=tmp_path / "results", extra="""  - name: da
    arch: vit_tiny_patch16_224
    import: {file: da.pth}"""))
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    report = tmp_path / "results" / "imports" / "da" / "import.json"
    converted = report.parent / "checkpoint.safetensors"
    stamp = (report.read_bytes(), converted.stat().st_mtime_ns)
    assert json.loads(report.read_text())["report"]["format"] == "depth_anything"
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0  # converted once, cells current
    assert (report.read_bytes(), converted.stat().st_mtime_ns) == stamp


ENTRY_MODULE = '''
import torch
from torch import nn


class TinyEncoder(nn.Module):
    """Five stride-2 convolutions: levels at strides 2..32, like a ResNet's."""

    def __init__(self):
        super().__init__()
        widths = [3, 8, 16, 24, 32, 48]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        levels = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            levels.append(x)
        return levels


def encoder():
    return TinyEncoder()
'''


def test_an_entry_point_encoder_can_be_submitted(results, tmp_path, monkeypatch):
    manifest, results_dir = results
    (tmp_path / "my_encoders.py").write_text(ENTRY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    torch.save(importlib.import_module("my_encoders").encoder().state_dict(), tmp_path / "mine.pth")
    assert main(["submit", "--name", "mine", "--entry", "my_encoders:encoder", "--checkpoint",
                 str(tmp_path / "mine.pth"), "--manifest", str(manifest), "--no-progress"]) == 0
    runs = [r for r in _records(results_dir).values() if r["cell"]["backbone"] == "mine"]
    assert len(runs) == 2 and all(r["status"] == "ok" and r["cell"]["arch"] == "entry:my_encoders:encoder"
                                  for r in runs)
    assert all(r["init"]["encoder_coverage"]["loaded"] == 10 for r in runs)


def test_an_unimportable_entry_is_one_line(results, tmp_path, capsys):
    manifest, _ = results
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "x.pth")
    assert main(["submit", "--name", "nope", "--entry", "no_such_module:encoder", "--checkpoint",
                 str(tmp_path / "x.pth"), "--manifest", str(manifest), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import no_such_module" in err and "\n" not in err
