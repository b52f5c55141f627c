"""The generated world's controls (issue 19): each changes what it claims, measured on rendered
tiny worlds; the defaults render today's world file for file."""

from __future__ import annotations

import colorsys
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.synth import render_world
from bench.core.synth.classes import BUILDING, CAR, POLE, SKY, VEGETATION
from tests.margins import assert_above, assert_below

# sha256 over (relative path, file sha256) of the world below, computed with the renderer before
# the controls existed (commit 9a4abe9): the defaults must keep rendering exactly this world.
TODAY_SHA = "e9c7b806ee28256a606fda2595a25d7583803437a714a4e8feacf150f1524dce"
TODAY_WORLD = dict(sequences=2, frames=2, height=32, width=64, crops_per_class=2, crop_size=32, seed=3)
# Worlds for the measurements: 3 sequences so that statistics do not hang on one layout.
SMALL = dict(sequences=3, frames=2, height=48, width=144, crops_per_class=1, crop_size=32, seed=5)
STRONGEST = dict(shared_materials=1.0, instance_jitter=1.0)


def tree_sha(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made = {}

    def get(name, **controls):
        if name not in made:
            made[name] = render_world(tmp_path_factory.mktemp("w") / name, **{**SMALL, **controls})
        return made[name]
    return get


def frames(root: Path, key: str = "rgb", ext: str = "png"):
    meta = json.loads((root / "meta.json").read_text())
    out = []
    for s in meta["sequences"]:
        for p in sorted((root / s["name"] / key).glob(f"*.{ext}")):
            out.append(np.load(p) if ext == "npy" else np.asarray(Image.open(p)))
    return out


def test_defaults_render_todays_world_file_for_file(tmp_path):
    w = render_world(tmp_path / "w", **TODAY_WORLD)
    assert tree_sha(w) == TODAY_SHA
    assert "controls" not in json.loads((w / "meta.json").read_text())


def test_same_seed_same_files_with_every_control_set(tmp_path):
    controls = dict(materials_per_class=3, shared_materials=0.5, instance_jitter=0.7, illumination=0.8, shadows=True,
                    object_scale="wide", pretrain_sequences=1, pretrain_frames=3, ood_crops_per_class=2)
    a = render_world(tmp_path / "a", **{**TODAY_WORLD, **controls})
    b = render_world(tmp_path / "b", **{**TODAY_WORLD, **controls}, workers=2)  # and for any number of workers
    assert tree_sha(a) == tree_sha(b) != TODAY_SHA
    assert json.loads((a / "meta.json").read_text())["controls"] == controls


def _patch_features(root: Path, half: int = 2, per_class: int = 150, seed: int = 0):
    """Local texture patches (5x5 RGB, raw pixels + their per-channel std) at pixels whose whole
    neighbourhood is one class -- no boundary, so no shape -- with sky left out (not a material).
    Returned per sequence, so that a classifier is scored on instances it has not seen."""
    rng = np.random.default_rng(seed)
    meta = json.loads((root / "meta.json").read_text())
    per_seq = []
    for s in meta["sequences"]:
        xs, ys = [], []
        for p in sorted((root / s["name"] / "rgb").glob("*.png")):
            rgb = np.asarray(Image.open(p)).astype(np.float32) / 255
            lab = np.asarray(Image.open(root / s["name"] / "label" / p.name))
            h, w = lab.shape
            for cls in set(np.unique(lab).tolist()) - {SKY}:
                ii, jj = np.nonzero(lab == cls)
                keep = (ii >= half) & (ii < h - half) & (jj >= half) & (jj < w - half)
                ii, jj = ii[keep], jj[keep]
                pure = [k for k in range(len(ii)) if
                        np.all(lab[ii[k] - half:ii[k] + half + 1, jj[k] - half:jj[k] + half + 1] == cls)]
                for k in rng.permutation(pure)[:per_class]:
                    patch = rgb[ii[k] - half:ii[k] + half + 1, jj[k] - half:jj[k] + half + 1]
                    xs.append(np.concatenate([patch.ravel(), patch.reshape(-1, 3).std(0)]))
                    ys.append(cls)
        per_seq.append((np.array(xs), np.array(ys)))
    return per_seq


def texture_predictability(root: Path) -> float:
    """Balanced accuracy of a ridge least-squares linear classifier on local patches, trained on
    some sequences and scored on another (leave-one-sequence-out, averaged)."""
    per_seq = _patch_features(root)
    scores = []
    for held in range(len(per_seq)):
        x_tr = np.concatenate([x for i, (x, _) in enumerate(per_seq) if i != held])
        y_tr = np.concatenate([y for i, (_, y) in enumerate(per_seq) if i != held])
        x_te, y_te = per_seq[held]
        classes = np.unique(y_tr)
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
        a = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
        target = (y_tr[:, None] == classes[None]).astype(float)
        weights = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ target)
        pred = classes[(np.hstack([(x_te - mu) / sd, np.ones((len(x_te), 1))]) @ weights).argmax(1)]
        scores.append(np.mean([np.mean(pred[y_te == c] == c) for c in np.unique(y_te) if c in classes]))
    return float(np.mean(scores))


def test_appearance_decoupling_makes_local_texture_predict_the_class_poorly(worlds):
    default = texture_predictability(worlds("default"))
    more = texture_predictability(worlds("mpc", materials_per_class=6))
    strongest = texture_predictability(worlds("strongest", **STRONGEST))
    chance = 1 / 6
    assert_above(default, 0.5, "default world: texture accuracy")  # texture alone gives the class away
    assert_below(strongest, default - 0.2, "strongest controls: texture accuracy vs default - 0.2", default)
    assert_below(strongest, 2.5 * chance, "strongest controls: texture accuracy vs 2.5 x chance")
    assert_below(more, default - 0.05, "6 materials per class: texture accuracy vs default - 0.05", default)


def test_appearance_controls_change_appearance_only(worlds):
    """Same labels and depth as the default world (the controls draw from their own random stream),
    different pixels."""
    base = worlds("default")
    for name, controls in (("strongest", STRONGEST), ("light", dict(illumination=1.0)),
                           ("shadows", dict(shadows=True)), ("jitter", dict(instance_jitter=1.0))):
        other = worlds(name, **controls)
        assert all(np.array_equal(a, b) for a, b in zip(frames(base, "label"), frames(other, "label")))
        assert all(np.array_equal(a, b) for a, b in zip(frames(base, "depth", "npy"), frames(other, "depth", "npy")))
        assert any(not np.array_equal(a, b) for a, b in zip(frames(base), frames(other))), name
    # jitter alone keeps each class's native material and moves its colour, the road's included
    base_rgb, jit_rgb = np.stack(frames(base)).astype(float), np.stack(frames(worlds("jitter"))).astype(float)
    lab = np.stack(frames(base, "label"))
    for cls in range(6):
        assert np.abs(base_rgb[lab == cls].mean(0) - jit_rgb[lab == cls].mean(0)).max() > 2, cls


def test_shadows_only_darken_and_illumination_varies_per_sequence(worlds):
    base, shadow, light = worlds("default"), worlds("shadows", shadows=True), worlds("light", illumination=1.0)
    b, s = np.stack(frames(base)).astype(int), np.stack(frames(shadow)).astype(int)
    lab = np.stack(frames(base, "label"))
    # the fixed sun is kept: a shadow only removes direct light (anti-aliased edges aside)
    assert np.mean(s <= b + 1) > 0.99
    darker = (s.sum(-1) < b.sum(-1) - 30) & (lab != SKY)
    assert darker.mean() > 0.03, darker.mean()
    # per sequence: the sun, its strength and the tint change, so the mean colour moves per sequence
    def per_seq_means(root):
        imgs = frames(root)
        return np.array([np.mean(imgs[2 * k:2 * k + 2], axis=(0, 1, 2)) for k in range(SMALL["sequences"])])
    shift = np.abs(per_seq_means(light) - per_seq_means(base))
    assert shift.max() > 8 and np.ptp(shift.sum(1)) > 2, shift


def test_object_scale_moves_object_sizes_and_distances(worlds):
    stats = {}
    for name in ("near", "default", "far"):
        root = worlds("default") if name == "default" else worlds(f"scale-{name}", object_scale=name)
        lab, depth = np.stack(frames(root, "label")), np.stack(frames(root, "depth", "npy"))
        objects = np.isin(lab, [BUILDING, POLE, VEGETATION, CAR])
        stats[name] = (objects.mean(), np.median(depth[lab == BUILDING]), np.mean(lab == SKY))
    assert stats["near"][0] > stats["default"][0] > stats["far"][0], stats
    assert stats["far"][1] > stats["default"][1] > stats["near"][1], stats
    assert stats["far"][2] > stats["default"][2], stats


def _saturation(img: np.ndarray) -> float:
    px = img.reshape(-1, 3).astype(float) / 255
    return float(np.mean([colorsys.rgb_to_hsv(*p)[1] for p in px[::7]]))


def test_out_of_domain_crops_one_centred_object_other_materials(tmp_path):
    w = render_world(tmp_path / "w", **{**TODAY_WORLD, "crops_per_class": 4, "ood_crops_per_class": 6,
                                        "ood_background": "plain", "crop_size": 48})
    with open(w / "crops_ood" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 * 6 and {int(r["label"]) for r in rows} == set(range(7))
    centred, shares = 0, []
    objects = [r for r in rows if int(r["label"]) != SKY]
    for r in objects:
        img = np.asarray(Image.open(w / "crops_ood" / r["path"])).astype(int)
        background = img[0, 0]
        mask = np.abs(img - background).sum(-1) > 12
        # a plain background: the border is one colour except where the object reaches it
        ii, jj = np.nonzero(mask)
        centre = np.array([ii.mean(), jj.mean()]) / 48
        touches = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        centred += bool(np.all(np.abs(centre - 0.5) < 0.15) and not touches)
        shares.append(mask.mean())
    assert centred >= 0.8 * len(objects), centred
    assert 0.05 < np.median(shares) < 0.7
    # other materials: saturated hues the in-domain crops (muted street palette) do not show
    def mean_sat(folder):
        return np.mean([_saturation(np.asarray(Image.open(p))) for p in sorted(folder.rglob("*.png"))
                        if "sky" not in p.parts])
    assert mean_sat(w / "crops_ood") > mean_sat(w / "crops") + 0.15


def test_out_of_domain_clutter_background_is_not_plain(tmp_path):
    w = render_world(tmp_path / "w", **{**TODAY_WORLD, "crops_per_class": 1, "ood_crops_per_class": 3})
    border_std = []
    for p in sorted((w / "crops_ood" / "car").glob("*.png")):
        img = np.asarray(Image.open(p)).astype(float)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        border_std.append(border.std(0).mean())
    assert max(border_std) > 5


def test_pretrain_data_amount_apart_from_the_labelled_and_evaluation_sequences(tmp_path):
    from pretrain.sources.synth import SynthSource
    from transfer.datasets.synth import Synth

    base = render_world(tmp_path / "base", **{**TODAY_WORLD, "sequences": 4})
    more = render_world(tmp_path / "more", **{**TODAY_WORLD, "sequences": 4, "pretrain_sequences": 2,
                                              "pretrain_frames": 4, "ood_crops_per_class": 1})
    # the labelled sequences are the same world's, file for file, and so are both splits
    for seq in ("seq_000", "seq_003"):
        assert tree_sha(base / seq) == tree_sha(more / seq)
    for split in ("train", "eval"):
        assert [s.stem for s in Synth(base).samples(split)] == [s.stem for s in Synth(more).samples(split)]
    eval_seqs = {s.stem.rsplit("_", 1)[0] for s in Synth(more).samples("eval")}
    src = SynthSource(more, {})
    items = src.items("image")
    assert sum(i.startswith("pre_") for i in items) == 2 * 4 and len(SynthSource(base, {}).items("image")) == 3 * 2
    assert not {i.split("/")[0] for i in items} & eval_seqs
    few = SynthSource(more, {"sequences": "4", "frames": "3"}).items("image")
    assert len(few) == 3 * 2 + 1 * 3 and not {i.split("/")[0] for i in few} & eval_seqs
    assert len(SynthSource(more, {"sequences": "1"}).items("image")) == 2
    # the classification source: in-domain crops by default, the object-centric ones on request
    ood = SynthSource(more, {"crops": "out_of_domain"})
    assert len(ood.items("label")) == 7 and ood.load("label", ood.items("label")[0])["image"].shape == (32, 32, 3)
    assert set(ood.items("label")) <= set(SynthSource(more, {}).items("label"))  # same names, other folders
    assert not np.array_equal(ood.load("label", "car/000000.png")["image"],
                              SynthSource(more, {}).load("label", "car/000000.png")["image"])


def test_source_options_are_checked(tmp_path):
    from bench.core.errors import UserError
    from pretrain.sources.synth import SynthSource

    w = render_world(tmp_path / "w", **TODAY_WORLD)
    with pytest.raises(UserError, match="no out-of-domain crops"):
        SynthSource(w, {"crops": "out_of_domain"})
    with pytest.raises(UserError, match="crops='imagenet'"):
        SynthSource(w, {"crops": "imagenet"})
    with pytest.raises(UserError, match="frames='2'"):
        SynthSource(w, {"frames": "2"})


def test_controls_enter_the_world_identity_only_when_set():
    from bench.core.records import fingerprint
    from bench.core.synth.world import SynthWorld

    before = {"sequences": 4, "frames": 10, "height": 64, "width": 192, "seed": 0, "crops_per_class": 40}
    assert SynthWorld().fingerprint() == fingerprint({"synth": before})
    ids = {SynthWorld(**{k: v}).fingerprint() for k, v in (
        ("materials_per_class", 2), ("shared_materials", 0.5), ("instance_jitter", 0.5), ("illumination", 0.5),
        ("shadows", True), ("object_scale", "far"), ("pretrain_sequences", 2), ("pretrain_frames", 5),
        ("ood_crops_per_class", 5), ("ood_background", "plain"))}
    assert len(ids | {SynthWorld().fingerprint()}) == 11
    assert SynthWorld(shadows=True, object_scale="near").controls() == {"shadows": True, "object_scale": "near"}


def test_the_manifest_the_renderer_and_the_controls_agree_on_every_default():
    """The world's defaults are stated in three places that cannot import one another's layer
    (bench.study.manifest.SynthWorld, render_world's keywords, synth.controls.Controls): they must agree,
    or a manifest that leaves a key unset would name one world and render another."""
    import dataclasses
    import inspect

    from bench.core.synth.controls import Controls
    from bench.core.synth.world import SynthWorld

    manifest = SynthWorld.defaults()
    renderer = {k: p.default for k, p in inspect.signature(render_world).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert {k: renderer[k] for k in manifest} == manifest  # every manifest key is a renderer keyword
    assert {f.name: f.default for f in dataclasses.fields(Controls)} == {
        f.name: manifest[f.name] for f in dataclasses.fields(Controls)}


def test_manifest_and_cli_accept_the_controls(tmp_path):
    from bench.cli import main
    from bench.core.synth.world import SynthWorld

    with pytest.raises(ValueError):
        SynthWorld(shared_materials=1.5)
    with pytest.raises(ValueError):
        SynthWorld(object_scale="huge")
    out = tmp_path / "w"
    assert main(["data", "synth", "--out", str(out), "--sequences", "2", "--frames", "2", "--height", "32",
                 "--width", "64", "--crops-per-class", "1", "--shared-materials", "1", "--shadows",
                 "--object-scale", "far", "--ood-crops-per-class", "1", "--ood-background", "plain"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["controls"] == {"shared_materials": 1.0, "shadows": True, "object_scale": "far",
                                "ood_crops_per_class": 1, "ood_background": "plain"}
    assert (out / "crops_ood" / "index.csv").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--instance-jitter", "2"]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_cell_records_the_world_controls(tmp_path):
    """A tiny run on a controlled world: the world is rendered with the controls, and each cell's
    record names it (data_id) and shows its settings (config.world), without moving the cell's
    fingerprint for a world at the defaults (data_id is unchanged there)."""
    from bench.cli import main
    from bench.core.synth.world import SynthWorld

    path = tmp_path / "c.yaml"
    path.write_text(
        "name: c\n"
        "data:\n  synth: {sequences: 3, frames: 2, height: 48, width: 64, crops_per_class: 1,\n"
        "          shared_materials: 1.0, shadows: true, pretrain_sequences: 1}\n"
        "backbones:\n  - {name: random, arch: resnet10t}\n"
        "datasets:\n  - {name: synth}\n"
        "transfer: {protocols: [linear], train_sizes: [1], steps: 1, batch_size: 1, eval_every: 1,"
        " feature_cache_views: 1}\n")
    results = tmp_path / "results"
    assert main(["run", str(path), "--no-progress", "--no-plots", "--out", str(results)]) == 0
    world = SynthWorld(sequences=3, frames=2, height=48, width=64, crops_per_class=1, shared_materials=1.0,
                       shadows=True, pretrain_sequences=1)
    [record_path] = results.glob("runs/*/record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok"
    assert record["config"]["data_id"] == world.fingerprint()
    assert record["config"]["world"] == world.identity()
    assert {k: record["config"]["world"][k] for k in world.controls()} == {
        "shared_materials": 1.0, "shadows": True, "pretrain_sequences": 1}
    [world_dir] = results.glob("data/synth-*")
    assert json.loads((world_dir / "meta.json").read_text())["controls"] == world.controls()


def test_a_manifest_asking_for_out_of_domain_crops_needs_them_rendered(tmp_path):
    from bench.core.errors import UserError
    from bench.study.manifest import load_manifest

    def manifest(ood: int):
        path = tmp_path / f"m{ood}.yaml"
        path.write_text(f"name: m\ndata:\n  synth: {{ood_crops_per_class: {ood}}}\nbackbones:\n"
                        "  - {name: cls-ood, arch: resnet10t, pretrain: {method: classification,"
                        " source_options: {crops: out_of_domain}}}\ndatasets:\n  - {name: synth}\n")
        return path
    assert load_manifest(manifest(10)).backbones[0].pretrain.source_options == {"crops": "out_of_domain"}
    with pytest.raises(UserError, match="ood_crops_per_class > 0"):
        load_manifest(manifest(0))
