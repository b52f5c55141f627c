"""Named worlds (`data.worlds`): a world study's manifest rules, its pairing of backbones with the
datasets of their own world, what its records and reports say (the world columns, the per-world
baseline, the contrast table and figure), and one tiny end-to-end study of two worlds."""

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.aggregate import leaderboard, records_frame
from bench.report.contrasts import contrast_figures, contrast_frame, contrast_tables
from bench.core.errors import UserError
from bench.core.synth.world import SynthWorld
from bench.study.manifest import load_manifest
from bench.study.matrix import expand
from bench.study.runner import pretrain_config, worlds_used
from tests.conftest import write_manifest

WORLDS = "    far: {object_scale: far}\n"
BACKBONES = ("  - {name: depth, variant: base, arch: resnet10t,\n"  # first: the leaderboard's baseline
             "     pretrain: {method: depth_supervised, steps: 2, batch_size: 2}}\n"
             "  - {name: depth, variant: far, arch: resnet10t,\n"
             "     pretrain: {method: depth_supervised, steps: 2, batch_size: 2, world: far}}\n"
             "  - {name: random, arch: resnet10t}\n")
DATASETS = "  - {name: synth, variant: base}\n  - {name: synth, variant: far, world: far}\n"
TRANSFER = "transfer: {protocols: [linear]}\n"


def _manifest(tmp_path, worlds=WORLDS, backbones=BACKBONES, datasets=DATASETS, transfer=TRANSFER):
    return write_manifest(tmp_path, name="w", worlds=worlds, backbones=backbones, datasets=datasets, transfer=transfer)


# -- the manifest ------------------------------------------------------------------------------------------

def test_a_named_world_is_the_base_world_with_its_keys():
    from bench.study.manifest import DataSection

    data = DataSection(synth=SynthWorld(sequences=3, seed=4), worlds={"far": {"object_scale": "far"}})
    far = data.world("far")
    assert far.object_scale == "far" and far.sequences == 3 and far.seed == 4
    assert data.world(None) == data.synth
    assert far.fingerprint() != data.synth.fingerprint()


@pytest.mark.parametrize("worlds, datasets, backbones, message", [
    (WORLDS, "  - {name: synth, world: near}\n", "  - {name: random, arch: resnet10t}\n",
     "datasets[0].world: no world 'near' in data.worlds; named worlds: far"),
    ("", "  - {name: synth, world: far}\n", "  - {name: random, arch: resnet10t}\n",
     "datasets[0].world: no world 'far' in data.worlds; named worlds: none (data.worlds is empty)"),
    (WORLDS, "  - {name: synth}\n", "  - {name: d, arch: resnet10t, pretrain: {method: depth_supervised, world: x}}\n",
     "backbones[0].pretrain.world: no world 'x' in data.worlds"),
    ("    far: {object_scale: huge}\n", "  - {name: synth}\n", "  - {name: random, arch: resnet10t}\n",
     "world 'far': object_scale: Input should be 'default', 'near', 'far' or 'wide'"),
    ("    far: {objects: 3}\n", "  - {name: synth}\n", "  - {name: random, arch: resnet10t}\n",
     "world 'far': objects: Extra inputs are not permitted"),
    ("    same: {seed: 0}\n", "  - {name: synth}\n", "  - {name: random, arch: resnet10t}\n",
     "world 'same' is the same world as the base world (data.synth); a world must change something"),
    ("    a: {seed: 1}\n    b: {seed: 1}\n", "  - {name: synth}\n", "  - {name: random, arch: resnet10t}\n",
     "world 'b' is the same world as world 'a'"),
    ("    e: {}\n", "  - {name: synth}\n", "  - {name: random, arch: resnet10t}\n",
     "world 'e': give the data.synth keys it changes"),
    (WORLDS, "  - {name: voc, root: /nowhere, world: far}\n", "  - {name: random, arch: resnet10t}\n",
     "world names a generated world: only for the synth dataset without a root"),
    (WORLDS, "  - {name: synth}\n",
     "  - {name: c, arch: resnet10t, pretrain: {method: classification, source_options: {crops: out_of_domain}, world: far}}\n",
     "backbones[0].pretrain.source_options.crops: out_of_domain needs ood_crops_per_class > 0 in world 'far'"),
])
def test_world_mistakes_are_one_line(tmp_path, worlds, datasets, backbones, message):
    with pytest.raises(UserError) as err:
        load_manifest(_manifest(tmp_path, worlds, backbones, datasets))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_out_of_domain_crops_may_come_from_the_named_world(tmp_path):
    worlds = "    ood: {ood_crops_per_class: 4}\n"
    backbones = ("  - {name: c, arch: resnet10t, pretrain: {method: classification, "
                 "source_options: {crops: out_of_domain}, world: ood}}\n")
    m = load_manifest(_manifest(tmp_path, worlds, backbones, "  - {name: synth, world: ood}\n"))
    assert m.backbone_world(m.backbones[0]) == m.dataset_world(m.datasets[0]) == m.data.world("ood").fingerprint()


def test_the_world_name_enters_no_fingerprint(tmp_path):
    """Which world an entry reads is its data_id (the world's parameters), never its name: the
    dataset's geometry and the pre-training's config carry no `world` key, so a manifest without
    worlds keeps every fingerprint it had."""
    m = load_manifest(_manifest(tmp_path))
    assert all("world" not in d.geometry() for d in m.datasets)
    configs = [pretrain_config(b, tmp_path, "W") for b in m.backbones[:2]]
    assert all("world" not in c for c in configs)
    assert configs[0] == {**configs[1], "name": "depth@base"}  # the world is the data_id, given by the runner


# -- the matrix --------------------------------------------------------------------------------------------

def test_each_world_backbone_meets_its_own_world_and_random_meets_every_world(tmp_path):
    m = load_manifest(_manifest(tmp_path))
    pairs = {(c.backbone_key, c.dataset_key) for c in expand(m)}
    assert pairs == {("random", "synth@base"), ("random", "synth@far"), ("depth@base", "synth@base"),
                     ("depth@far", "synth@far")}
    assert worlds_used(m, m.backbones) == [None, "far"]
    crossed = load_manifest(_manifest(tmp_path, transfer="transfer: {protocols: [linear], cross_world: true}\n"))
    assert len({(c.backbone_key, c.dataset_key) for c in expand(crossed)}) == 6


def test_a_backbone_pretrained_on_real_data_meets_every_world(tmp_path):
    kitti = tmp_path / "kitti"
    kitti.mkdir()
    backbones = (BACKBONES + f"  - {{name: k, arch: resnet10t, pretrain: {{method: depth_supervised, "
                 f"dataset: kitti_raw, root: {kitti}}}}}\n")
    m = load_manifest(_manifest(tmp_path, backbones=backbones))
    assert {c.dataset_key for c in expand(m) if c.backbone_key == "k"} == {"synth@base", "synth@far"}


def test_manifests_without_worlds_expand_as_before(tmp_path):
    from tests.conftest import tiny_manifest

    m = load_manifest(tiny_manifest(tmp_path))
    assert len(expand(m)) == 3 * 1 * 3  # every backbone meets the one world, under the three protocols
    assert worlds_used(m, m.backbones) == [None]


def test_a_named_world_too_small_for_an_encoder_is_refused_before_running(tmp_path):
    from bench.study.dry_run import size_problems

    m = load_manifest(_manifest(tmp_path, worlds="    far: {object_scale: far, height: 32}\n"))
    problems = size_problems(m, m.backbones)
    assert any(p.startswith("datasets[1] (synth@far): the world's size 32x144") for p in problems)
    assert any(p.startswith("backbones.depth@far.pretrain: the world's size 32x144") for p in problems)
    assert not any("synth@base" in p or "depth@base" in p for p in problems)


# -- the reports: per-world baseline and the contrast table --------------------------------------------------

def _records(diffs_by_world: dict[str, dict[str, list[float]]], depth: float = 60.0) -> pd.DataFrame:
    """A records frame of `depth@W` and the others in each world W, 5 seeds: depth's mIoU is
    `depth + seed`, each other's `depth + seed - advantage[seed]`."""
    rows = []
    for world, others in diffs_by_world.items():
        for seed in range(5):
            base = dict(method="m", arch="a", dataset=f"synth@{world}", protocol="linear", decoder="linear",
                        init="encoder", init_effective="encoder", train_size=16, seed=seed, status="ok",
                        per_image=None, selected="", pixel_acc=50.0, mean_class_acc=50.0)
            rows.append({**base, "backbone": f"depth@{world}", "miou": depth + seed})
            for name, advantage in others.items():
                label = name if name == "random" else f"{name}@{world}"
                rows.append({**base, "backbone": label, "miou": depth + seed - advantage[seed]})
    return pd.DataFrame(rows)


ADVANTAGES = {"base": {"flow": [1.0, 2.0, 3.0, 2.0, 2.0], "random": [5.0, 6.0, 4.0, 5.0, 5.0]},
              "far": {"flow": [-1.0, -3.0, -2.0, -1.0, -3.0], "random": [0.5, -0.5, 1.0, 0.0, -1.0]}}


def test_each_world_is_compared_with_its_own_depth_row():
    board = leaderboard(_records(ADVANTAGES), "depth@base")
    base_rows = board[board["diff_interval"] == "baseline"]
    assert sorted(base_rows["backbone"]) == ["depth@base", "depth@far"]
    far = board[board["dataset"] == "synth@far"]
    assert set(far["baseline"]) == {"depth@far"}
    # the same when the baseline is given by NAME
    assert leaderboard(_records(ADVANTAGES), "depth")["miou_diff"].equals(board["miou_diff"])


def test_a_baseline_name_that_repeats_in_a_comparison_is_no_baseline_there():
    df = _records({"base": {"flow": [1.0] * 5}})
    twin = df[df["backbone"] == "depth@base"].assign(backbone="depth@other", miou=lambda d: d["miou"] - 1)
    board = leaderboard(pd.concat([df, twin]), "depth")
    assert set(board["diff_interval"]) == {"no baseline in this comparison"}


def test_the_contrast_is_depths_paired_advantage_with_its_t_interval():
    c = contrast_frame(leaderboard(_records(ADVANTAGES), "depth@base"))
    assert len(c) == 4 and set(c["against"]) == {"flow", "random"}
    for (world, name), advantage in [((w, n), a) for w, d in ADVANTAGES.items() for n, a in d.items()]:
        row = c[(c["variant"] == world) & (c["against"] == name)].iloc[0]
        a = np.asarray(advantage)
        half = stats.t.ppf(0.975, 4) * a.std(ddof=1) / math.sqrt(5)  # by hand: paired t over the 5 seeds
        assert row["advantage"] == pytest.approx(a.mean())
        assert (row["low"], row["high"]) == pytest.approx((a.mean() - half, a.mean() + half))
        assert row["significant"] == bool(a.mean() - half > 0 or a.mean() + half < 0)
        assert row["baseline"] == f"depth@{world}" and row["n"] == 5
    far_flow = c[(c["variant"] == "far") & (c["against"] == "flow")].iloc[0]
    assert far_flow["advantage"] == pytest.approx(-2.0) and bool(far_flow["significant"])  # a deficit, reported


def test_contrast_table_and_figure_show_every_world(tmp_path):
    board = leaderboard(_records(ADVANTAGES), "depth@base")
    tables = contrast_tables(board, ["depth@base", "flow@base", "random"])
    (table,) = tables["contrast_synth"]
    assert [c[0] for c in table.columns] == ["base", "far"]
    assert [labels[0] for labels, _ in table.rows] == ["flow", "random"]
    flow = dict(zip(["base", "far"], table.rows[0][1]))
    assert flow["base"].text.startswith("+2.00 [") and flow["base"].bold
    assert flow["far"].text.startswith("-2.00 [") and flow["far"].bold
    assert not table.rows[1][1][1].bold  # random in far: the interval spans zero
    ((stem, fig),) = contrast_figures(board, ["depth@base", "flow@base", "random"])
    assert stem == "contrast_synth"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "far"]
    points = sorted(round(float(y), 6) for bars in ax.containers for y in bars.lines[0].get_ydata())
    assert points == sorted(round(v, 6) for v in (2.0, 5.0, -2.0, 0.0))


def test_one_dataset_gets_no_contrast():
    board = leaderboard(_records({"base": {"flow": [1.0] * 5}}), "depth@base")
    assert contrast_frame(board).empty and contrast_tables(board, []) == {}


# -- end to end ----------------------------------------------------------------------------------------------

def test_a_two_world_study_runs_each_backbone_in_its_own_world(tmp_path):
    from bench.cli import main
    from bench.core.checkpoint import read_checkpoint_meta

    transfer = textwrap.dedent("""\
        transfer: {protocols: [linear], train_sizes: [2], seeds: [0, 1], steps: 2, batch_size: 2, eval_every: 2,
                   feature_cache_views: 1}
        """)
    path = _manifest(tmp_path, transfer=transfer)
    results = tmp_path / "results" / "w"
    assert main(["run", str(path), "--no-progress", "--out", str(results)]) == 0
    m = load_manifest(path)
    base_id, far_id = m.data.world(None).fingerprint(), m.data.world("far").fingerprint()
    assert sorted(p.name for p in (results / "data").glob("synth-*")) == sorted(
        f"synth-{i[:12]}" for i in (base_id, far_id))
    # Each pre-training read its own world...
    for label, world_id in (("base", base_id), ("far", far_id)):
        meta = read_checkpoint_meta(results / "pretrain" / f"depth@{label}" / "checkpoint.safetensors")
        assert meta["data"]["data_id"] == world_id
    far_meta = json.loads((results / "data" / f"synth-{far_id[:12]}" / "meta.json").read_text())
    assert far_meta["controls"] == {"object_scale": "far"}
    # ... and its cells ran there only; random ran in both.
    df = records_frame(results)
    assert (df["status"] == "ok").all()
    assert sorted(set(zip(df["backbone"], df["dataset"]))) == [
        ("depth@base", "synth@base"), ("depth@far", "synth@far"), ("random", "synth@base"), ("random", "synth@far")]
    far_rows = df[df["dataset"] == "synth@far"]
    assert set(far_rows["world"]) == {"object_scale=far"} and set(far_rows["world_object_scale"]) == {"far"}
    assert set(df.loc[df["dataset"] == "synth@base", "world"]) == {"default"}
    assert set(df["world_materials_per_class"]) == {1}
    assert {r["config"]["data_id"] for r in df.to_dict("records") if r["dataset"] == "synth@far"} == {far_id}
    # The reports compare random with each world's depth row, and lay the worlds side by side.
    board = pd.read_csv(results / "leaderboard.csv")
    assert set(board.loc[board["dataset"] == "synth@far", "baseline"]) == {"depth@far"}
    assert "### Advantage of depth on synth" in (results / "tables" / "contrast_synth.md").read_text()
    assert (results / "plots" / "contrast_synth.png").is_file()
    # The contrast is the leaderboard's paired difference turned around.
    random_far = board[(board["dataset"] == "synth@far") & (board["backbone"] == "random")].iloc[0]
    depth, rand = (df[(df["dataset"] == "synth@far") & (df["backbone"] == b)].sort_values("seed")["miou"].to_numpy()
                   for b in ("depth@far", "random"))
    assert -random_far["miou_diff"] == pytest.approx((depth - rand).mean(), abs=1e-3)


def test_records_without_a_world_have_no_world_columns():
    from bench.report.aggregate import WORLD_COLUMNS, world_columns

    assert world_columns({"config": {}}) == dict.fromkeys(WORLD_COLUMNS)
    assert world_columns({"config": {"world": {"sequences": 4}}})["world"] == "default"
    row = world_columns({"config": {"world": {"sequences": 4, "shadows": True}}})
    assert row["world"] == "shadows=True" and row["world_shadows"] is True and row["world_object_scale"] == "default"


def test_the_mechanisms_study_pairs_each_recipe_with_each_world():
    """configs/mechanisms.yaml: six backbones in six worlds, each pre-trained where it transfers,
    with one recipe per method across worlds (the world is the only thing that changes)."""
    from pathlib import Path

    m = load_manifest(Path(__file__).parents[1] / "configs" / "mechanisms.yaml")
    worlds = {None: "base", **{w: w for w in m.data.worlds}}
    cells = expand(m)
    assert len(cells) == 6 * 6 * 2 * 5
    # the appearance world is the texture and light worlds' keys together (their strongest setting)
    assert m.data.worlds["appearance"] == {**m.data.worlds["texture"], **m.data.worlds["light"]}
    for c in cells:
        b = next(b for b in m.backbones if b.display_name == c.backbone_key)
        if b.pretrain is None:
            continue
        assert c.dataset_key == f"synth@{worlds[b.pretrain.world]}" and b.variant == worlds[b.pretrain.world]
    assert {c.dataset_key for c in cells if c.backbone_key == "random"} == {f"synth@{w}" for w in worlds.values()}
    recipes = {}
    for b in m.backbones:
        if b.pretrain is not None:
            recipes.setdefault(b.name, set()).add(repr(b.pretrain.model_dump(exclude={"world"})))
    assert set(recipes) == {"depth", "video_depth", "flow", "cls_in", "cls_ood"}
    assert all(len(r) == 1 for r in recipes.values())
    # each world changes the base in the keys it names only
    base = m.data.synth.model_dump()
    for name, keys in m.data.worlds.items():
        changed = {k for k, v in m.data.world(name).model_dump().items() if v != base[k]}
        assert changed == set(keys), name
    assert m.transfer.seeds == [0, 1, 2, 3, 4] and m.transfer.init == "encoder"


def test_the_worlds_are_shown_in_manifest_order():
    board = leaderboard(_records(ADVANTAGES), "depth@base")
    (table,) = contrast_tables(board, [], ["synth@far", "synth@base"])["contrast_synth"]
    assert [c[0] for c in table.columns] == ["far", "base"]
    ((_, fig),) = contrast_figures(board, [], ["synth@far", "synth@base"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["far", "base"]
