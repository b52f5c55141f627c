"""The generated world is geometrically and photometrically self-consistent.

Every check re-derives geometry independently from meta.json (intrinsics, poses) and the saved
maps, never through the renderer's own projection code.
"""

from __future__ import annotations

import csv
import filecmp

import numpy as np
import pytest
from PIL import Image

from bench.core.synth import CLASSES, IGNORE_INDEX, MAX_DEPTH, PALETTE, load_meta, read_frame, read_scene, render_world
from bench.core.synth import writer

SEQS, FRAMES, H, W, CROPS, CROP = 2, 3, 48, 144, 3, 32
CAR, SKY = CLASSES.index("car"), CLASSES.index("sky")


def _render(path, seed=0, **kw):
    return render_world(path, sequences=SEQS, frames=FRAMES, height=H, width=W, seed=seed,
                        crops_per_class=CROPS, crop_size=CROP, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _render(tmp_path_factory.mktemp("synth") / "world")


def _frames(root):
    meta = load_meta(root)
    for s in meta["sequences"]:
        for k in range(meta["num_frames"]):
            yield s["name"], k, np.asarray(s["poses"][k]), read_frame(root, s["name"], k)


def _backproject(depth, K, pose, mask):
    """World points of the masked pixels (pixel (i, j) is image point (u, v) = (j, i))."""
    v, u = np.nonzero(mask)
    z = depth[v, u].astype(np.float64)
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    return pc @ pose[:3, :3].T + pose[:3, 3], u, v


def _project(points, K, pose):
    pc = (points - pose[:3, 3]) @ pose[:3, :3]
    return K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2], K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]


def _bilinear(img, x, y):
    """Sample img (H, W, C) at float coordinates (x = column, y = row); caller keeps them in range."""
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, img.shape[1] - 1), np.minimum(y0 + 1, img.shape[0] - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    img = img.astype(np.float64)
    top = img[y0, x0] * (1 - ax) + img[y0, x1] * ax
    bottom = img[y1, x0] * (1 - ax) + img[y1, x1] * ax
    return top * (1 - ay) + bottom * ay


def _box_surface_distance(p, lo, hi):
    """Distance of points p (M, 3) to the surface of each box (B, 3) → (M, B)."""
    outside = np.linalg.norm(np.maximum(np.maximum(lo - p[:, None], p[:, None] - hi), 0.0), axis=-1)
    inside = np.minimum(np.abs(p[:, None] - lo), np.abs(p[:, None] - hi)).min(-1)
    is_inside = np.all((p[:, None] >= lo) & (p[:, None] <= hi), axis=-1)
    return np.where(is_inside, inside, outside)


def test_layout_and_meta(world):
    meta = load_meta(world)
    assert meta["format"] == "depth2seg-synth" and meta["classes"] == list(CLASSES)
    assert meta["palette"] == PALETTE and meta["ignore_index"] == IGNORE_INDEX == 255
    assert meta["max_depth"] == MAX_DEPTH == 80.0 and meta["baseline"] == 0.54
    assert [s["name"] for s in meta["sequences"]] == ["seq_000", "seq_001"]
    K = np.asarray(meta["intrinsics"])
    assert K[0, 2] == W / 2 and K[1, 2] == H / 2 and K[0, 0] == K[1, 1]
    for name, k, pose, f in _frames(world):
        assert pose.shape == (4, 4) and np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))
        assert f["rgb"].shape == f["rgb_right"].shape == (H, W, 3) and f["rgb"].dtype == np.uint8
        assert f["depth"].shape == (H, W) and f["depth"].dtype == np.float32
        assert f["label"].shape == (H, W) and f["label"].dtype == np.uint8
        assert 0 < f["depth"].min() and f["depth"].max() <= MAX_DEPTH
        assert np.all(f["depth"][f["label"] == SKY] == MAX_DEPTH)
        sky = f["label"] == SKY
        inner = sky[1:-1, 1:-1] & sky[:-2, 1:-1] & sky[2:, 1:-1] & sky[1:-1, :-2] & sky[1:-1, 2:]
        sky_rgb = f["rgb"][1:-1, 1:-1][inner].astype(int)  # away from anti-aliased silhouettes
        assert np.all(sky_rgb[:, 2] >= sky_rgb[:, 0])  # blue sky / white clouds
        if k < FRAMES - 1:
            assert f["flow"].shape == (H, W, 2) and f["flow"].dtype == np.float32
        else:
            assert f["flow"] is None  # the last frame has no successor
    # no temp/staging directories are left next to the world
    assert [p.name for p in world.parent.iterdir()] == [world.name]


def test_colours_stay_in_range():
    # an out-of-range colour would wrap around in the uint8 conversion (white cloud → yellow)
    from bench.core.synth.textures import sky_color

    d = np.random.default_rng(0).normal(size=(20000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rgb = sky_color(d, 0.01, 123)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_depth_matches_geometry(world):
    meta = load_meta(world)
    K = np.asarray(meta["intrinsics"])
    checked = {"road": 0, "building": 0, "car": 0}
    for name, k, pose, f in _frames(world):
        depth, label = f["depth"], f["label"]
        road = (label == CLASSES.index("road")) & (depth < MAX_DEPTH)
        pts, _, _ = _backproject(depth, K, pose, road)
        # y is down; the road plane lies camera_height below the (y = 0) camera path
        np.testing.assert_allclose(pts[:, 1], meta["camera_height"], rtol=1e-3)
        checked["road"] += len(pts)
        scene = read_scene(world, name)
        for cls in ("building", "car"):
            rows = (scene["class"] == CLASSES.index(cls)) & (scene["kind"] == 0)  # boxes
            lo = scene["lo"][rows] + k * scene["velocity"][rows]  # moving boxes at frame k
            hi = scene["hi"][rows] + k * scene["velocity"][rows]
            mask = (label == CLASSES.index(cls)) & (depth < MAX_DEPTH)
            pts, u, v = _backproject(depth, K, pose, mask)
            dist = _box_surface_distance(pts, lo, hi).min(1)
            assert np.all(dist < 1e-3 * depth[v, u] + 1e-4), (cls, dist.max())
            checked[cls] += len(pts)
    assert min(checked.values()) > 50, checked


class _WarpError:
    """Mean absolute colour error, over many frames, between source pixels (u, v) and the target
    image sampled at their warped positions (x, y) -- and, as the baseline, at (u, v) unwarped."""

    def __init__(self):
        self.aligned, self.unaligned, self.n = 0.0, 0.0, 0

    def add(self, source, u, v, target, x, y):
        h, w = target.shape[:2]
        ok = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        src = source[v[ok], u[ok]].astype(np.float64)
        self.aligned += np.abs(_bilinear(target, x[ok], y[ok]) - src).mean() * ok.sum()
        self.unaligned += np.abs(target[v[ok], u[ok]].astype(np.float64) - src).mean() * ok.sum()
        self.n += ok.sum()

    def means(self):
        return self.aligned / self.n, self.unaligned / self.n


def _ego_flow(meta, f, pose, next_pose, mask):
    K = np.asarray(meta["intrinsics"])
    pts, u, v = _backproject(f["depth"], K, pose, mask)
    u1, v1 = _project(pts, K, next_pose)
    return u1 - u, v1 - v, u, v


def test_static_flow_matches_depth_and_poses(world):
    meta = load_meta(world)
    error = _WarpError()
    for s in meta["sequences"]:
        for k in range(FRAMES - 1):
            f, g = read_frame(world, s["name"], k), read_frame(world, s["name"], k + 1)
            static = ~np.isin(f["label"], [CAR, SKY]) & (f["depth"] < MAX_DEPTH)
            du, dv, u, v = _ego_flow(meta, f, np.asarray(s["poses"][k]), np.asarray(s["poses"][k + 1]), static)
            flow = f["flow"][v, u]
            np.testing.assert_allclose(flow[:, 0], du, atol=1e-2)
            np.testing.assert_allclose(flow[:, 1], dv, atol=1e-2)
            # photometric consistency: frame t+1 sampled at pixel + flow looks like frame t
            error.add(f["rgb"], u, v, g["rgb"], u + flow[:, 0], v + flow[:, 1])
    aligned, unaligned = error.means()
    assert aligned < 0.4 * unaligned, (aligned, unaligned)


def test_sky_flow_is_rotation_only(world):
    meta = load_meta(world)
    K = np.asarray(meta["intrinsics"])
    s = meta["sequences"][0]
    f = read_frame(world, s["name"], 0)
    v, u = np.nonzero(f["label"] == SKY)
    assert len(u) > 0
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(len(u))], 1)
    p0, p1 = np.asarray(s["poses"][0]), np.asarray(s["poses"][1])
    dc = d @ p0[:3, :3].T @ p1[:3, :3]  # direction into the next camera, translation irrelevant
    np.testing.assert_allclose(f["flow"][v, u, 0], K[0, 0] * dc[:, 0] / dc[:, 2] + K[0, 2] - u, atol=1e-2)
    np.testing.assert_allclose(f["flow"][v, u, 1], K[1, 1] * dc[:, 1] / dc[:, 2] + K[1, 2] - v, atol=1e-2)


def test_stereo_disparity_matches_depth(world):
    meta = load_meta(world)
    fx, baseline = meta["intrinsics"][0][0], meta["baseline"]
    error = _WarpError()
    for name, k, pose, f in _frames(world):
        v, u = np.nonzero(f["label"] != SKY)
        x = u - fx * baseline / f["depth"][v, u]  # right-image column of the same point
        error.add(f["rgb"], u, v, f["rgb_right"], x, v.astype(np.float64))
    aligned, unaligned = error.means()
    assert aligned < 0.4 * unaligned, (aligned, unaligned)


def test_labels_cover_every_class(world):
    seen = set()
    for name, k, pose, f in _frames(world):
        assert f["label"].max() < len(CLASSES)
        seen |= set(np.unique(f["label"]).tolist())
    assert seen == set(range(len(CLASSES)))
    # every sequence on its own shows every class (the generator re-draws until it does)
    for s in load_meta(world)["sequences"]:
        labels = [read_frame(world, s["name"], k)["label"] for k in range(FRAMES)]
        assert set(np.unique(np.stack(labels)).tolist()) == set(range(len(CLASSES)))


def test_moving_cars_have_independent_flow(world):
    meta = load_meta(world)
    best = 0.0
    for s in meta["sequences"]:
        for k in range(FRAMES - 1):
            f = read_frame(world, s["name"], k)
            cars = (f["label"] == CAR) & (f["depth"] < MAX_DEPTH)
            du, dv, u, v = _ego_flow(meta, f, np.asarray(s["poses"][k]), np.asarray(s["poses"][k + 1]), cars)
            diff = np.hypot(f["flow"][v, u, 0] - du, f["flow"][v, u, 1] - dv)
            best = max(best, float(diff.max(initial=0.0)))
    assert best > 0.5, best


def test_deterministic_for_a_seed(world, tmp_path):
    again = _render(tmp_path / "again")
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(world, again, [str(p) for p in files], shallow=False)
    assert not mismatch and not errors
    # worker processes render the same bytes (every unit of work is seeded on its own)
    parallel = _render(tmp_path / "parallel", workers=2)
    _, mismatch, errors = filecmp.cmpfiles(world, parallel, [str(p) for p in files], shallow=False)
    assert not mismatch and not errors
    other = _render(tmp_path / "other", seed=1)
    assert (other / "seq_000/rgb/000000.png").read_bytes() != (world / "seq_000/rgb/000000.png").read_bytes()


def test_crops(world):
    with open(world / "crops" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "class_name"]
    counts = {c: 0 for c in CLASSES}
    for row in rows:
        assert CLASSES[int(row["label"])] == row["class_name"]
        counts[row["class_name"]] += 1
        img = Image.open(world / "crops" / row["path"])
        assert img.mode == "RGB" and img.size == (CROP, CROP)
    assert counts == {c: CROPS for c in CLASSES}


def test_existing_output_is_left_alone(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        _render(out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["world"]
    _render(out, overwrite=True)
    assert (out / "meta.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


def test_interrupted_render_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write_crops", boom)
    with pytest.raises(KeyboardInterrupt):
        _render(tmp_path / "world")
    assert list(tmp_path.iterdir()) == []
