"""Every shipped manifest loads, and its few-shot sizes fit the generated world it renders
(the validation split takes whole training sequences out of the pool)."""

import shutil
from pathlib import Path

import pytest
import torch

from bench.core.checkpoint import save_checkpoint
from bench.core.models.backbones import create_encoder
from bench.core.synth.split import split_sequences
from bench.study.manifest import load_manifest
from bench.study.matrix import expand
from transfer.datasets.base import Sample, held_out_validation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _pool_size(world) -> int:
    """The transfer pool of a generated world of these parameters, as transfer/datasets/synth.py
    and held_out_validation split it (no rendering needed: the split is by sequence names)."""
    names = [f"seq{i:02d}" for i in range(world.sequences)]
    train = split_sequences({"sequences": [{"name": n} for n in names]})["train"]
    samples = [Sample(f"{seq}_{f:04d}", None, None) for seq in train for f in range(world.frames)]
    held = held_out_validation(samples, 10**9, lambda s: s.stem.split("_")[0], "synth")
    return len(samples) - len(held)


def _quickstart_checkpoints(root: Path) -> None:
    """Stand-ins for the checkpoints `make quickstart` and the mechanisms study write, where
    manifests that reuse them look (configs/../results/<study>/pretrain/NAME/)."""
    _stand_ins(root, "quickstart", lambda b: True)
    _stand_ins(root, "mechanisms", lambda b: b.variant == "base")  # what mechanisms_cross.yaml reads


def _stand_ins(root: Path, study: str, wanted) -> None:
    for b in load_manifest(CONFIGS / f"{study}.yaml").backbones:
        if b.pretrain is not None and wanted(b):
            torch.manual_seed(0)
            save_checkpoint(root / "results" / study / "pretrain" / b.display_name / "checkpoint.safetensors",
                            create_encoder(b.arch).state_dict(),
                            {"arch": b.arch, "method": b.pretrain.method, "data": {}, "steps": 1, "seed": 0,
                             "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "decoder": None})


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(CONFIGS, root / "configs")
    _quickstart_checkpoints(root)
    # configs/kitti_depth_study.yaml reads real data at placeholder roots (<repo>/data/...): tiny
    # official-layout trees stand in (its dry run: tests/test_kitti_study_config.py).
    from fixtures.kitti import build_kitti
    from fixtures.pretrain_layouts import build_kitti_raw

    build_kitti_raw(root / "data" / "kitti_raw")
    build_kitti(root / "data" / "data_semantics")
    return root


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_manifests_load_and_their_subsets_fit(layout, name):
    m = load_manifest(layout / "configs" / name)
    assert expand(m)
    if any(d.name == "synth" and d.root is None for d in m.datasets):
        assert max(m.transfer.train_sizes) <= _pool_size(m.data.synth), "a few-shot size exceeds the pool"


def test_the_encoder_only_quickstart_reads_the_quickstarts_checkpoints(layout):
    quickstart = load_manifest(CONFIGS / "quickstart.yaml")
    m = load_manifest(layout / "configs" / "quickstart_encoder.yaml")
    assert [b.name for b in m.backbones] == [b.name for b in quickstart.backbones]
    assert m.transfer.init == "encoder" and m.data.synth == quickstart.data.synth
    assert {(c.protocol, c.decoder) for c in expand(m)} == {("full", "monodepth2"), ("frozen", "monodepth2")}
    assert all(b.checkpoint.is_file() for b in m.backbones if b.name != "random")
