"""Every registered dataset trains and evaluates through the transfer stage, `bench data inspect`
prints its JSON, and a manifest on a real layout publishes its few-shot splits."""

import json

import pytest

from bench.cli import main
from fixtures import one_line_error
from fixtures.ade20k import build_ade20k
from fixtures.cityscapes import build_cityscapes
from fixtures.kitti import build_kitti_200
from fixtures.nyuv2 import build_nyuv2
from fixtures.voc import build_voc
from transfer.data import dataset_settings
from transfer.datasets import list_datasets, open_dataset
from tests.conftest import cell_config, write_manifest
from transfer.api import Cell, run_cell

BUILDERS = {"ade20k": build_ade20k, "voc": build_voc, "cityscapes": build_cityscapes, "nyuv2": build_nyuv2,
            "kitti": build_kitti_200}
# Tiny geometry for speed; variable-size datasets keep the short-side resize + crop path.
GEOMETRY = {"ade20k": ("64", "64x64", "64"), "voc": ("64", "64x64", "64"), "cityscapes": ("64x96", "64x64", "64x96"),
            "nyuv2": ("64x80", "none", "64x80"), "kitti": ("64x96", "none", "64x96")}


def test_every_registered_dataset_is_covered():
    assert set(list_datasets()) == set(BUILDERS) | {"synth"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (root, the builder's hand-computed expectations)."""
    out = {}
    for name, build in BUILDERS.items():
        root = tmp_path_factory.mktemp(name)
        out[name] = (root, build(root))
    return out


@pytest.fixture(scope="module")
def roots(built, tiny_world):
    return {"synth": tiny_world, **{name: root for name, (root, _) in built.items()}}


@pytest.mark.parametrize("name", sorted(BUILDERS) + ["synth"])
def test_transfer_cell_on_each_dataset(roots, tmp_path, name):
    resize, crop, eval_resize = GEOMETRY.get(name, ("default", "default", "default"))
    cell = Cell("random", "none", "resnet10t", name, "frozen", "monodepth2", 1, 0)  # the fixtures' pools are tiny
    config = cell_config(roots[name], cell, data_id=name, dataset={"resize": resize, "crop": crop,
                         "eval_resize": eval_resize}, steps=2, batch_size=2, eval_every=2,
                         optim={"lr": 1e-3, "weight_decay": 0.0})
    record = run_cell(config, tmp_path, progress=False)
    assert record["status"] == "ok", record["error"]
    assert set(record["metrics"]["per_class_iou"]) == set(record["class_names"])
    assert len(record["train_stems"]) == 1 and record["dataset"]["num_eval_images"] >= 1
    assert (tmp_path / "train_split.txt").read_text().split() == record["train_stems"]
    pool, validation, evaluation = open_dataset(name, roots[name]).transfer_sets()
    assert len(evaluation) == record["dataset"]["num_eval_images"]
    assert len(validation) == record["dataset"]["num_validation_images"] >= 1
    trained, held, scored = set(record["train_stems"]), {s.stem for s in validation}, {s.stem for s in evaluation}
    assert not trained & scored and not trained & held and not held & scored  # three disjoint sets
    assert trained <= {s.stem for s in pool}


def test_inspect_prints_one_json_object(built, capsys):
    root, expected = built["cityscapes"]
    assert main(["data", "inspect", "cityscapes", "--root", str(root), "--split", "val"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"dataset", "split", "num_images", "num_classes", "class_names", "class_pixels",
                        "ignore_pixels"}
    assert (out["dataset"], out["split"], out["num_images"], out["num_classes"]) == ("cityscapes", "val", 2, 19)
    by_name = expected["val"]["class_pixels"]  # hand counts by class name; absent = 0
    assert out["class_pixels"] == [by_name.get(n, 0) for n in out["class_names"]]
    assert out["ignore_pixels"] == expected["val"]["ignore_pixels"]


def test_inspect_errors_are_one_line(roots, tmp_path, capsys):
    assert main(["data", "inspect", "cityscapes", "--root", str(tmp_path), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(tmp_path) in err
    assert main(["data", "inspect", "ade20k", "--root", str(roots["ade20k"]), "--split", "val"]) == 2
    assert "training, validation" in capsys.readouterr().err


def test_manifest_on_a_real_layout_publishes_its_splits(roots, tmp_path):
    manifest = write_manifest(  # (its data.synth stays unrendered: no entry reads the world)
        tmp_path, name="real", out=tmp_path / "results", backbones="  - {name: random, arch: resnet10t}\n",
        datasets=f"  - {{name: cityscapes, root: {roots['cityscapes']}, resize: 64x96, crop: 64x64, eval_resize: 64x96}}\n",
        transfer="transfer: {protocols: [linear], train_sizes: [1, 2], seeds: [0, 1], steps: 2, batch_size: 2, eval_every: 2}\n")
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    splits = tmp_path / "results" / "splits" / "cityscapes"
    val_stems = [s.stem for s in open_dataset("cityscapes", roots["cityscapes"]).samples("val")]
    assert (splits / "eval.txt").read_text().split() == val_stems and len(val_stems) == 2
    for seed in (0, 1):
        one, two = ((splits / f"train_n{n}_s{seed}.txt").read_text().split() for n in (1, 2))
        assert set(one) < set(two)  # nested
        record = json.loads(next((tmp_path / "results" / "runs").glob(f"*__n2__s{seed}/record.json")).read_text())
        assert record["train_stems"] == two  # the published list is what the cell trained on


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"nyuv2"}) + ["synth"])
def test_classes_option_is_refused_where_a_dataset_has_one_class_set(roots, name):
    assert "single class set" in one_line_error(open_dataset, name, roots[name], 13)
    assert "single class set" in one_line_error(dataset_settings, name, classes=13)
