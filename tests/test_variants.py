"""Named variants (a backbone or dataset entry listed several times with a `variant` label) and the
resolution axes built on them: manifest rules, cell identity, expansion, the records frame, and
one tiny end-to-end run of 2 pre-training sizes x 2 transfer sizes."""

import json
import textwrap

import pytest
import torch

from bench.report.aggregate import leaderboard, manifest_backbones, records_frame
from bench.core.errors import UserError
from bench.core.sizes import pretrain_image_size, size_text
from bench.study.manifest import load_manifest
from bench.study.matrix import expand
from tests.conftest import write_manifest
from transfer.api import Cell, TransferSettings, resolve_cell_config

RANDOM = "  - {name: random, arch: resnet10t}\n"
SYNTH = "  - {name: synth}\n"


def _manifest(tmp_path, backbones=RANDOM, datasets=SYNTH, transfer="transfer: {protocols: [linear]}\n"):
    return write_manifest(tmp_path, name="v", backbones=backbones, datasets=datasets, transfer=transfer)


DEPTH_VARIANTS = ("  - {name: depth, variant: crop40, arch: resnet10t,\n"
                  "     pretrain: {method: depth_supervised, steps: 2, crop: 40x96}}\n"
                  "  - {name: depth, variant: r40, arch: resnet10t,\n"
                  "     pretrain: {method: depth_supervised, steps: 2, resize: 40x120}}\n")
SYNTH_VARIANTS = ("  - {name: synth, variant: native}\n"
                  "  - {name: synth, variant: r40, resize: 40x120, eval_resize: 40x120}\n")


# -- the manifest ------------------------------------------------------------------------------------------

def test_labelled_repeats_are_variants_with_display_names(tmp_path):
    m = load_manifest(_manifest(tmp_path, RANDOM + DEPTH_VARIANTS, SYNTH_VARIANTS))
    assert [b.display_name for b in m.backbones] == ["random", "depth@crop40", "depth@r40"]
    assert [d.display_name for d in m.datasets] == ["synth@native", "synth@r40"]
    # The label is identity, not a data setting: the dataset's geometry never sees it.
    assert "variant" not in m.datasets[1].geometry()
    # A labelled entry with a name of its own is fine too.
    one = load_manifest(_manifest(tmp_path, "  - {name: random, variant: tv, arch: resnet10t}\n"))
    assert one.backbones[0].display_name == "random@tv"


@pytest.mark.parametrize("backbones, datasets, message", [
    (RANDOM + RANDOM, SYNTH, "backbone names must be unique; repeated: random (to compare settings of one backbone, "
                             "give every entry of that name a distinct `variant` label)"),
    (RANDOM + "  - {name: random, variant: b, arch: resnet18}\n", SYNTH, "backbone names must be unique; repeated: random"),
    (RANDOM, SYNTH + "  - {name: synth, resize: 40x120}\n", "each dataset may appear once; repeated: synth"),
    (RANDOM, SYNTH + "  - {name: synth, variant: r40, resize: 40x120}\n", "each dataset may appear once; repeated: synth"),
    ("  - {name: random, variant: a, arch: resnet10t}\n  - {name: random, variant: a, arch: resnet18}\n", SYNTH,
     "backbones: variant 'a' of 'random' is given twice; each variant of a name needs its own label"),
    (RANDOM, "  - {name: synth, variant: a}\n  - {name: synth, variant: b}\n",
     "datasets: variants 'a' and 'b' of 'synth' have the same settings"),
    ("  - {name: random, variant: 'a@b', arch: resnet10t}\n", SYNTH, "backbones[0].variant: String should match"),
    (RANDOM, "  - {name: synth, variant: 'r 64'}\n", "datasets[0].variant: String should match"),
])
def test_variant_label_errors_are_one_line(tmp_path, backbones, datasets, message):
    with pytest.raises(UserError) as err:
        load_manifest(_manifest(tmp_path, backbones, datasets))
    assert message in str(err.value) and "\n" not in str(err.value)


# -- cells ------------------------------------------------------------------------------------------------

def test_cell_ids_carry_labels_and_unlabelled_cells_keep_their_dict():
    plain = Cell("depth", "depth_supervised", "resnet18", "synth", "full", "monodepth2", 16, 0)
    assert plain.id == "depth__synth__full__monodepth2__n16__s0"
    assert list(plain.as_dict()) == ["backbone", "method", "arch", "dataset", "protocol", "decoder", "train_size",
                                     "seed"]
    labelled = Cell("depth", "depth_supervised", "resnet18", "synth", "full", "monodepth2", 16, 0,
                    backbone_variant="crop256", dataset_variant="r96")
    assert labelled.id == "depth@crop256__synth@r96__full__monodepth2__n16__s0"
    assert labelled.as_dict()["backbone_variant"] == "crop256" and Cell(**labelled.as_dict()) == labelled
    # The label is part of what the cell is: the fingerprint moves with it, and only with it.
    kw = {"dataset": {"name": "synth"}, "dataset_root": "/x", "data_id": "w", "checkpoint": "/c",
          "checkpoint_sha256": "ab" * 32}
    fp = lambda cell: resolve_cell_config(cell, TransferSettings(), **kw)["fingerprint"]  # noqa: E731
    assert fp(plain) != fp(labelled)
    assert fp(plain) == fp(Cell(**plain.as_dict()))


def test_expansion_carries_labels_and_variants_change_what_runs(tmp_path):
    m = load_manifest(_manifest(tmp_path, RANDOM + DEPTH_VARIANTS, SYNTH_VARIANTS))
    cells = expand(m)
    assert [c.id for c in cells] == [f"{b}__{d}__linear__linear__n16__s0" for b in ("random", "depth@crop40", "depth@r40")
                                     for d in ("synth@native", "synth@r40")]
    assert {(c.backbone, c.backbone_variant) for c in cells} == {("random", None), ("depth", "crop40"), ("depth", "r40")}
    # A dataset variant's cells resolve to its own data settings (what the cell trains and is scored at).
    by_key = {d.display_name: d for d in m.datasets}
    settings = {c.dataset_key: resolve_cell_config(c, m.transfer, dataset=by_key[c.dataset_key].geometry(),
                                                   dataset_root="/w", data_id="w")["dataset"]
                for c in cells if c.backbone == "random"}
    assert settings["synth@native"]["resize"] is None and settings["synth@r40"]["resize"] == [40, 120]
    assert settings["synth@r40"]["eval_resize"] == [40, 120]
    # A pre-training variant's config differs in its size, so it has its own fingerprint.
    from bench.study.runner import pretrain_config
    from pretrain.api import pretrain_fingerprint, resolve_config

    configs = [pretrain_config(b, tmp_path, "w") for b in m.backbones[1:]]
    assert [c["name"] for c in configs] == ["depth@crop40", "depth@r40"]
    assert configs[0]["crop"] == "40x96" and configs[1]["resize"] == "40x120"
    assert len({pretrain_fingerprint(resolve_config(c)) for c in configs}) == 2


# -- sizes and the records frame ---------------------------------------------------------------------------

def test_pretrain_size_from_checkpoint_metadata():
    assert pretrain_image_size({"image_size": [48, 144], "config": {"crop": [40, 96]}}) == "48x144"
    assert pretrain_image_size({"config": {"crop": [40, 96], "resize": [40, 120]}}) == "40x96"  # before image_size
    assert pretrain_image_size({"config": {"resize": [40, 120]}}) == "40x120"
    assert pretrain_image_size({"provenance": {"format": "timm"}}) is None  # an import does not say
    assert [size_text(s) for s in (None, 512, [192, 640])] == ["native", "short side 512", "192x640"]


def _record(results, cell: dict, miou: float, *, pretrain_size=None, crop=None, resize=None):
    record = {"cell": cell, "status": "ok", "init": {"effective": "encoder"},
              "config": {"init": "auto", "dataset": {"name": cell["dataset"], "resize": resize, "crop": crop}},
              "checkpoint": None if pretrain_size is None else {"path": "/gone.safetensors", "pretrain_size": pretrain_size},
              "metrics": {"miou": miou / 100, "pixel_acc": 0.9, "mean_class_acc": 0.8, "per_class_iou": {}}}
    folder = results / "runs" / Cell(**cell).id
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


def test_records_frame_and_leaderboard_keep_variants_apart(tmp_path):
    results = tmp_path / "r"
    (results / "runs").mkdir(parents=True)
    (results / "manifest.resolved.json").write_text(json.dumps({"backbones": [
        {"name": "random", "variant": None}, {"name": "depth", "variant": "c40"}, {"name": "depth", "variant": "r40"}]}))
    base = {"method": "m", "arch": "resnet10t", "dataset": "synth", "protocol": "linear", "decoder": "linear",
            "train_size": 4, "seed": 0}
    for dataset_variant, resize in ((None, None), ("r40", [40, 120])):
        labels = {} if dataset_variant is None else {"dataset_variant": dataset_variant}
        _record(results, {**base, "backbone": "random", **labels}, 20.0, resize=resize)
        _record(results, {**base, "backbone": "depth", "backbone_variant": "c40", **labels}, 30.0,
                pretrain_size="40x96", resize=resize)
        _record(results, {**base, "backbone": "depth", "backbone_variant": "r40", **labels}, 40.0,
                pretrain_size="40x120", resize=resize)
    # A record written before records said its pre-training size: the checkpoint's header tells.
    from bench.core.checkpoint import save_checkpoint

    old = save_checkpoint(tmp_path / "old.safetensors", {"w": torch.zeros(1)},
                          {"arch": "resnet10t", "method": "m", "data": {}, "steps": 1, "normalization": "imagenet",
                           "seed": 0, "config": {"crop": [40, 96]}})
    _record(results, {**base, "backbone": "old"}, 10.0)
    path = results / "runs" / Cell(**{**base, "backbone": "old"}).id / "record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "checkpoint": {"path": str(old)}}))
    assert records_frame(results).set_index("backbone").loc["old", "pretrain_size"] == "40x96"
    path.unlink()
    df = records_frame(results).sort_values(["dataset", "backbone"])
    rows = [tuple(r) for r in df[["backbone", "dataset", "backbone_variant", "dataset_variant", "pretrain_size",
                                  "transfer_size"]].itertuples(index=False)]
    assert rows == [("depth@c40", "synth", "c40", None, "40x96", "native"),
                    ("depth@r40", "synth", "r40", None, "40x120", "native"),
                    ("random", "synth", None, None, None, "native"),
                    ("depth@c40", "synth@r40", "c40", "r40", "40x96", "40x120"),
                    ("depth@r40", "synth@r40", "r40", "r40", "40x120", "40x120"),
                    ("random", "synth@r40", None, "r40", None, "40x120")]
    assert manifest_backbones(results) == ["random", "depth@c40", "depth@r40"]
    board = leaderboard(records_frame(results), baseline="random")
    # Two comparisons, one per transfer size, each ranking its own three rows against its own baseline.
    assert sorted(board["dataset"].unique()) == ["synth", "synth@r40"]
    for _, comparison in board.groupby("dataset"):
        assert sorted(comparison["rank"]) == [1, 2, 3]
        assert dict(zip(comparison["backbone"], comparison["diff_interval"]))["random"] == "baseline"
        assert dict(zip(comparison["backbone"], comparison["miou_diff"]))["depth@r40"] == pytest.approx(20.0)


# -- end to end --------------------------------------------------------------------------------------------

def test_a_resolution_study_runs_two_pretrain_sizes_by_two_transfer_sizes(tmp_path):
    from bench.cli import main
    from bench.core.checkpoint import read_checkpoint_meta

    transfer = textwrap.dedent("""\
        transfer: {protocols: [linear], train_sizes: [2], steps: 2, batch_size: 2, eval_every: 2,
                   feature_cache_views: 1}
        """)
    path = _manifest(tmp_path, DEPTH_VARIANTS.replace("steps: 2", "steps: 2, batch_size: 2"), SYNTH_VARIANTS, transfer)
    results = tmp_path / "results" / "v"
    assert main(["run", str(path), "--no-progress", "--no-plots", "--out", str(results)]) == 0
    # Each pre-training variant has its own folder and was trained at its own size.
    sizes = {v: read_checkpoint_meta(results / "pretrain" / f"depth@{v}" / "checkpoint.safetensors")["image_size"]
             for v in ("crop40", "r40")}
    assert sizes == {"crop40": [40, 96], "r40": [40, 120]}
    assert (results / "splits" / "synth@r40" / "train_n2_s0.txt").is_file()
    df = records_frame(results)
    assert (df["status"] == "ok").all() and len(df) == 4
    got = {(r.backbone, r.dataset): (r.pretrain_size, r.transfer_size) for r in df.itertuples()}
    assert got == {("depth@crop40", "synth@native"): ("40x96", "native"),
                   ("depth@crop40", "synth@r40"): ("40x96", "40x120"),
                   ("depth@r40", "synth@native"): ("40x120", "native"), ("depth@r40", "synth@r40"): ("40x120", "40x120")}
    # The transfer variant really trained and was scored at its size.
    record = json.loads((results / "runs" / "depth@r40__synth@r40__linear__linear__n2__s0" / "record.json").read_text())
    assert record["dataset"]["resize"] == [40, 120] and record["cell"]["dataset_variant"] == "r40"
    board = (results / "leaderboard.md").read_text()
    assert "### synth@native · linear" in board and "### synth@r40 · linear" in board
    from bench.study.status import matrix_status

    status = matrix_status(results)
    assert status["counts"] == {"ok": 4}
    assert {p["name"]: p["status"] for p in status["pretrainings"]} == {"depth@crop40": "ok", "depth@r40": "ok"}


def test_the_documented_resolution_study_validates(tmp_path):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "manifest.md").read_text()
    block = text.split("<!-- variants-example:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "resolution.yaml"
    path.write_text(block)
    m = load_manifest(path)
    cells = expand(m)
    assert len(cells) == 36
    assert {c.backbone_key for c in cells} == {"random", "depth@crop256", "depth@full"}
    assert {c.dataset_key for c in cells} == {"synth@r128x416", "synth@native"}
    assert [d.settings()["resize"] for d in m.datasets] == [[128, 416], None]


def test_a_set_names_a_variant_by_its_display_name(tmp_path):
    path = _manifest(tmp_path, RANDOM + DEPTH_VARIANTS, SYNTH_VARIANTS)
    m = load_manifest(path, ["backbones.depth@r40.pretrain.steps=7"])
    assert [b.pretrain.steps for b in m.backbones[1:]] == [2, 7]
    with pytest.raises(UserError, match="several variants named 'depth'; name one: depth@crop40, depth@r40"):
        load_manifest(path, ["backbones.depth.pretrain.steps=7"])
