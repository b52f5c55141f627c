"""The real-data pre-training readers (KITTI raw, Cityscapes sequences, NYUv2, video folders,
ImageNet folders) on tiny fixtures in the official layouts: hand-computed values, split files,
one-line errors naming the file, and a short end-to-end pre-training per source."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.checkpoint import load_checkpoint
from bench.core.errors import UserError
from fixtures.pretrain_layouts import (
    CS_CAMERA, IMAGENET, KITTI_ANNOTATED_PIXEL, KITTI_DRIVES, NYU_H, NYU_N, NYU_W, VIDEO_H, VIDEO_W,
    build_cityscapes_seq, build_image_folder, build_kitti_raw, build_nyuv2_depth, build_video_folder, kitti_projection,
    nyu_depth, nyu_image,
)
from pretrain.api import pretrain_fingerprint, resolve_config, run_pretrain
from pretrain.batches import Batches
from pretrain.sources import open_source
from pretrain.sources.kitti_raw import read_velodyne

DRIVE_A, DRIVE_B = KITTI_DRIVES
FRAME0 = f"{DRIVE_A}/image_02/0000000000"


def one_line_naming(exc_info, path) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message, message


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return build_kitti_raw(tmp_path_factory.mktemp("kitti"))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    return build_cityscapes_seq(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return build_nyuv2_depth(tmp_path_factory.mktemp("nyu"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return build_video_folder(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return build_image_folder(tmp_path_factory.mktemp("imagenet"))


# --- KITTI raw --------------------------------------------------------------------------------

def test_kitti_velodyne_point_lands_on_the_hand_computed_pixel(kitti):
    # The point (6.996, 1.6, -4.472) of frame 0, by hand:
    #   velo -> camera: R p + T = (-1.6, 4.472, 6.996) + (0.1, 0.2, -0.5) = (-1.5, 4.672, 6.496)
    #   R_rect_00:      (-1.5, 0.8*4.672 - 0.6*6.496, 0.6*4.672 + 0.8*6.496) = (-1.5, -0.16, 8.0)
    #   P_rect_02:      (50*-1.5 + 40*8 + 3, 50*-0.16 + 12*8, 8) = (248, 88, 8) -> u = 31, v = 11
    #   monodepth2's round(.) - 1 -> column 30, row 10, depth 8.
    # P_rect_03 has P[0,3] = 50 * -0.48 = -24: u = (-75 + 320 - 24) / 8 = 27.625 -> column 27.
    source = open_source("kitti_raw", kitti, {"depth": "velodyne"})
    depth = source.load("depth", FRAME0)["depth"]
    assert depth.shape == (24, 80) and depth.dtype == np.float32
    assert np.argwhere(depth > 0).tolist() == [[10, 30]]  # the point behind and the one outside are gone
    assert depth[10, 30] == pytest.approx(8.0, abs=1e-4)

    split = kitti.parent / "right.txt"
    split.write_text(f"{DRIVE_A} 0 r\n")
    right = open_source("kitti_raw", kitti, {"depth": "velodyne", "split": str(split)})
    assert right.items("depth") == [f"{DRIVE_A}/image_03/0000000000"]
    depth = right.load("depth", f"{DRIVE_A}/image_03/0000000000")["depth"]
    assert np.argwhere(depth > 0).tolist() == [[10, 27]] and depth[10, 27] == pytest.approx(8.0, abs=1e-4)


def test_kitti_velodyne_depth_matches_monodepth2s_procedure(kitti):
    """A second, literal reading of generate_depth_map (full matrices, duplicate loop) on a scan
    with colliding points: the nearest point of each pixel wins."""
    date = DRIVE_B.split("/")[0]
    points = read_velodyne(kitti / DRIVE_B / "velodyne_points" / "data" / "0000000002.bin")
    velo2cam = np.vstack([np.hstack([np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0.0]]), [[0.1], [0.2], [-0.5]]]),
                          [0, 0, 0, 1]])
    rect = np.eye(4)
    rect[:3, :3] = [[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]
    velo = np.c_[points[points[:, 0] >= 0, :3], np.ones(int((points[:, 0] >= 0).sum()))]
    im = (kitti_projection(date, 2) @ rect @ velo2cam @ velo.T).T
    im[:, :2] /= im[:, 2:3]
    cols, rows = np.round(im[:, 0]).astype(int) - 1, np.round(im[:, 1]).astype(int) - 1
    ok = (cols >= 0) & (rows >= 0) & (cols < 80) & (rows < 24)
    expected = np.zeros((24, 80))
    keys = list(zip(rows[ok], cols[ok]))
    expected[rows[ok], cols[ok]] = im[ok, 2]
    for key, count in Counter(keys).items():
        if count > 1:
            expected[key] = min(z for k, z in zip(keys, im[ok, 2]) if k == key)
    assert any(c > 1 for c in Counter(keys).values())  # the fixture's scan does collide
    source = open_source("kitti_raw", kitti, {"depth": "velodyne"})
    got = source.load("depth", f"{DRIVE_B}/image_02/0000000002")["depth"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kitti_stereo_video_and_calibration_per_date(kitti):
    source = open_source("kitti_raw", kitti, {})
    pair = source.load("stereo", f"{DRIVE_B}/image_02/0000000001")
    # t_x = P[0,3] / P[0,0]: 0.06 for image_02 and -0.48 for image_03 -> baseline 0.54 m.
    assert pair["baseline"] == pytest.approx(0.54)
    np.testing.assert_allclose(pair["K"], [[60, 0, 40], [0, 60, 12], [0, 0, 1]])  # 2011_09_28's focal
    right = np.asarray(Image.open(kitti / DRIVE_B / "image_03" / "data" / "0000000001.png"))
    np.testing.assert_array_equal(pair["right"], right)

    assert source.items("video") == [f"{d}/image_02/{i:010d}" for d in KITTI_DRIVES for i in (1, 2)]
    clip = source.load("video", f"{DRIVE_A}/image_02/0000000001")
    previous = np.asarray(Image.open(kitti / DRIVE_A / "image_02" / "data" / "0000000000.png"))
    np.testing.assert_array_equal(clip["frames"][0], previous)
    np.testing.assert_allclose(clip["K"], [[50, 0, 40], [0, 50, 12], [0, 0, 1]])
    assert source.default_size == (192, 640) and source.max_depth == 80


def test_kitti_annotated_depth_found_next_to_root_or_given(kitti):
    source = open_source("kitti_raw", kitti, {})  # ROOT/../data_depth_annotated exists
    assert source.depth_mode == "annotated"
    # Only the annotated frames (1 and 2), from train/ (first drive) and val/ (second).
    assert source.items("depth") == [f"{d}/image_02/{i:010d}" for d in KITTI_DRIVES for i in (1, 2)]
    row, col, value = KITTI_ANNOTATED_PIXEL
    depth = source.load("depth", f"{DRIVE_A}/image_02/0000000001")["depth"]
    assert depth[row, col] == pytest.approx(value / 256) == pytest.approx(10.0)
    raw = np.asarray(Image.open(kitti.parent / "data_depth_annotated" / "train" / DRIVE_A.split("/")[1] /
                                "proj_depth" / "groundtruth" / "image_02" / "0000000001.png"))
    np.testing.assert_allclose(depth, raw / 256.0)

    moved = kitti.parent / "elsewhere"
    shutil.copytree(kitti.parent / "data_depth_annotated", moved / "data_depth_annotated", dirs_exist_ok=True)
    given = open_source("kitti_raw", kitti, {"depth_root": str(moved / "data_depth_annotated")})
    assert given.depth_root == moved / "data_depth_annotated" and len(given.items("depth")) == 4


def test_kitti_split_file_restricts_items(kitti):
    split = kitti.parent / "train_files.txt"
    split.write_text(f"{DRIVE_A} 2 l\n{DRIVE_B} 1 r\n\n{DRIVE_A} 2 l\n")
    source = open_source("kitti_raw", kitti, {"split": str(split), "depth": "velodyne"})
    assert source.items("image") == [f"{DRIVE_A}/image_02/0000000002", f"{DRIVE_B}/image_03/0000000001"]
    assert source.items("video") == source.items("image")
    # Stereo pairs are image_02 + image_03 of the frame, whichever side the line names.
    assert source.items("stereo") == [f"{DRIVE_A}/image_02/0000000002", f"{DRIVE_B}/image_02/0000000001"]

    split.write_text(f"{DRIVE_A} 1 l\n{DRIVE_A} 9 l\n")
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti, {"split": str(split)}).items("image")
    one_line_naming(exc, kitti / DRIVE_A / "image_02" / "data" / "0000000009.png")
    assert f"{split}:2" in str(exc.value)

    split.write_text(f"{DRIVE_A} 3 l\n")  # the last frame has no next neighbour
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti, {"split": str(split)}).items("video")
    one_line_naming(exc, kitti / DRIVE_A / "image_02" / "data" / "0000000004.png")

    split.write_text(f"{DRIVE_A} 0 l\n")  # the depth benchmark has no map for frame 0
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti, {"split": str(split)}).items("depth")
    one_line_naming(exc, "groundtruth/image_02/0000000000.png")

    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 3\n")
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti, {"split": str(split)})
    one_line_naming(exc, f"{split}:1")


def test_kitti_errors_name_the_file(tmp_path):
    root = build_kitti_raw(tmp_path)
    calib = root / "2011_09_28" / "calib_velo_to_cam.txt"
    calib.unlink()
    source = open_source("kitti_raw", root, {"depth": "velodyne"})
    assert len(source.items("video")) == 4  # video needs only calib_cam_to_cam.txt
    with pytest.raises(UserError) as exc:
        source.items("depth")
    one_line_naming(exc, calib)

    png = tmp_path / "data_depth_annotated" / "train" / DRIVE_A.split("/")[1] / "proj_depth" / "groundtruth" / \
        "image_02" / "0000000002.png"
    Image.fromarray(np.full((24, 80), 40, np.uint8)).save(png)  # an 8-bit map: depths 256x too small
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", root, {}).load("depth", f"{DRIVE_A}/image_02/0000000002")
    one_line_naming(exc, png)

    frame = root / DRIVE_A / "image_02" / "data" / "0000000001.png"
    frame.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", root, {}).load("image", f"{DRIVE_A}/image_02/0000000001")
    one_line_naming(exc, frame)

    scan = root / DRIVE_A / "velodyne_points" / "data" / "0000000003.bin"
    scan.write_bytes(scan.read_bytes()[:-6])
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", root, {"depth": "velodyne"}).load("depth", f"{DRIVE_A}/image_02/0000000003")
    one_line_naming(exc, scan)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", empty, {})
    one_line_naming(exc, empty)
    with pytest.raises(UserError, match="unknown source option 'depht'"):
        open_source("kitti_raw", root, {"depht": "velodyne"})



# KITTI leakage: the raw frames of the evaluation images (an `exclude` list) are never read.

@pytest.fixture(scope="module")
def kitti8(tmp_path_factory):
    """Eight frames per drive: room for video items on both sides of an excluded frame."""
    return build_kitti_raw(tmp_path_factory.mktemp("kitti8"), annotated=False, frames=8)


def _ids(drive, frames, camera="image_02"):
    return [f"{drive}/{camera}/{i:010d}" for i in frames]


def _exclude(tmp_path, text, name="exclude.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_kitti_exclude_list_removes_every_item_that_reads_a_listed_frame(kitti8, tmp_path):
    listed = _exclude(tmp_path, "# the raw frames of the evaluation images\n"
                                f"{DRIVE_A.replace('/', ' ')} 0000000003\n"  # the devkit's train_mapping.txt form
                                "\n"                                          # (its blank lines: not in the raw data)
                                f"{DRIVE_B} 5 l\n"                            # a split file's form
                                f"{DRIVE_A}/image_03/0000000003\n"            # an item id (same frame, other camera)
                                "2011_09_26 2011_09_26_drive_0099_sync 0000000001\n")  # a drive ROOT lacks
    before = open_source("kitti_raw", kitti8, {"depth": "velodyne"})
    assert before.items("video") == sorted(_ids(DRIVE_A, range(1, 7)) + _ids(DRIVE_B, range(1, 7)))
    source = open_source("kitti_raw", kitti8, {"depth": "velodyne", "exclude": listed})
    assert source.excluded == {(DRIVE_A, 3), (DRIVE_B, 5), ("2011_09_26/2011_09_26_drive_0099_sync", 1)}
    frames = sorted(_ids(DRIVE_A, [0, 1, 2, 4, 5, 6, 7]) + _ids(DRIVE_B, [0, 1, 2, 3, 4, 6, 7]))
    for kind in ("image", "depth", "stereo"):  # the frame itself, both cameras
        assert source.items(kind) == frames, kind
    # A video item reads its two neighbours too: the triplets around a listed frame go as well.
    assert source.items("video") == sorted(_ids(DRIVE_A, [1, 5, 6]) + _ids(DRIVE_B, [1, 2, 3]))

    margin = open_source("kitti_raw", kitti8, {"depth": "velodyne", "exclude": listed, "exclude_margin": 1})
    assert margin.items("image") == sorted(_ids(DRIVE_A, [0, 1, 5, 6, 7]) + _ids(DRIVE_B, [0, 1, 2, 3, 7]))
    assert margin.items("video") == sorted(_ids(DRIVE_A, [6]) + _ids(DRIVE_B, [1, 2]))


def test_kitti_exclude_list_drops_split_lines_silently(kitti8, tmp_path):
    listed = _exclude(tmp_path, f"{DRIVE_A} 3\n")
    split = _exclude(tmp_path, f"{DRIVE_A} 3 l\n{DRIVE_A} 5 r\n{DRIVE_A} 4 l\n", "split.txt")
    source = open_source("kitti_raw", kitti8, {"split": split, "exclude": listed})
    assert source.items("image") == _ids(DRIVE_A, [4]) + _ids(DRIVE_A, [5], "image_03")
    assert source.items("video") == _ids(DRIVE_A, [5], "image_03")  # 4 reads frame 3
    # A line the list does not exclude is still checked: frame 7 has no next frame.
    split = _exclude(tmp_path, f"{DRIVE_A} 3 l\n{DRIVE_A} 7 l\n", "split.txt")
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti8, {"split": split, "exclude": listed}).items("video")
    one_line_naming(exc, kitti8 / DRIVE_A / "image_02" / "data" / "0000000008.png")


def test_kitti_exclude_list_errors_are_one_line(kitti8, tmp_path):
    missing = tmp_path / "nowhere.txt"
    for opener in (lambda: open_source("kitti_raw", kitti8, {"exclude": str(missing)}),
                   lambda: resolve_config({"method": "depth_video", "arch": "resnet10t", "dataset": "kitti_raw",
                                           "root": str(kitti8), "steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0,
                                           "source_options": {"exclude": str(missing)}})):
        with pytest.raises(UserError, match="file not found") as exc:
            opener()
        one_line_naming(exc, missing)
    with pytest.raises(UserError, match="unreadable file") as exc:
        open_source("kitti_raw", kitti8, {"exclude": str(tmp_path)})
    one_line_naming(exc, tmp_path)
    bad = _exclude(tmp_path, f"{DRIVE_A} 3\n{DRIVE_A} three\n")
    with pytest.raises(UserError) as exc:
        open_source("kitti_raw", kitti8, {"exclude": bad})
    one_line_naming(exc, f"{bad}:2")
    with pytest.raises(UserError, match="names no frames"):
        open_source("kitti_raw", kitti8, {"exclude": _exclude(tmp_path, "\n\n# nothing\n")})
    with pytest.raises(UserError, match="exclude_margin"):
        open_source("kitti_raw", kitti8, {"exclude": _exclude(tmp_path, f"{DRIVE_A} 3\n"), "exclude_margin": -1})
    with pytest.raises(UserError, match="exclude_margin needs exclude"):
        open_source("kitti_raw", kitti8, {"exclude_margin": 1})


def test_kitti_exclude_list_contents_are_part_of_the_fingerprint(kitti8, tmp_path):
    def fp(source_options):
        return pretrain_fingerprint(resolve_config({
            "method": "depth_supervised", "arch": "resnet10t", "dataset": "kitti_raw", "root": str(kitti8),
            "data_id": "k", "steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0, "source_options": source_options}))

    plain = resolve_config({"method": "depth_supervised", "arch": "resnet10t", "dataset": "kitti_raw",
                            "root": str(kitti8), "steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0})
    assert "source_content_ids" not in plain  # configs without the option: fingerprints as before
    listed = _exclude(tmp_path, f"{DRIVE_A} 3\n")
    a = fp({"exclude": listed})
    _exclude(tmp_path, f"{DRIVE_A} 4\n")
    assert len({fp({}), a, fp({"exclude": listed})}) == 3


# --- Cityscapes sequences ---------------------------------------------------------------------

def test_cityscapes_depth_from_disparity(cityscapes):
    source = open_source("cityscapes_seq", cityscapes, {})
    assert source.items("depth") == ["aachen/aachen_000000_000019", "bremen/bremen_000003_000019"]
    item = source.load("depth", "aachen/aachen_000000_000019")
    # 20 rows minus the bottom 20% (4 rows); p = 2561 -> d = 2560 / 256 = 10 px -> 0.2 m * 100 px / 10 px = 2 m.
    assert item["depth"].shape == (16, 40) and item["image"].shape == (16, 40, 3)
    assert item["depth"][3, 5] == pytest.approx(2.0)
    assert item["depth"][3, 6] == 0 and item["depth"][3, 7] == 0  # p = 0: none; p = 1: d = 0, no depth
    raw = np.asarray(Image.open(cityscapes / "disparity" / "train" / "aachen" /
                                "aachen_000000_000019_disparity.png")).astype(float)
    np.testing.assert_allclose(item["depth"][10, 20], 0.2 * 100 / ((raw[10, 20] - 1) / 256), rtol=1e-5)

    full = open_source("cityscapes_seq", cityscapes, {"crop_bottom": 0}).load("depth", "aachen/aachen_000000_000019")
    assert full["depth"].shape == (20, 40)
    np.testing.assert_array_equal(full["depth"][:16], item["depth"])


def test_cityscapes_video_stereo_and_intrinsics_after_crop(cityscapes):
    source = open_source("cityscapes_seq", cityscapes, {})
    # Frames 18..20 of each snippet have both neighbours; the val split is not read.
    assert source.items("video") == [f"{c}/{s}_{f:06d}" for c, s in (("aachen", "aachen_000000"),
                                                                      ("bremen", "bremen_000003"))
                                     for f in (18, 19, 20)]
    clip = source.load("video", "bremen/bremen_000003_000018")
    cam = CS_CAMERA["bremen"]
    # A bottom crop removes rows below the image centre: origin and pixel K are unchanged.
    np.testing.assert_allclose(clip["K"], [[cam["fx"], 0, cam["u0"]], [0, cam["fy"], cam["v0"]], [0, 0, 1]])
    assert [f.shape for f in clip["frames"]] == [(16, 40, 3)] * 3

    # Resized to 32x64 for training: K scales from the cropped 16x40, not the 20x40 original.
    for crop_bottom, height in ((0.2, 16), (0, 20)):
        cropped = open_source("cityscapes_seq", cityscapes, {"crop_bottom": crop_bottom})
        batch = Batches(cropped, "video", "test", resize=(32, 64)).draw(torch.Generator().manual_seed(0), 4)
        for item_id, K in zip(batch["ids"], batch["K"]):
            cam = CS_CAMERA[item_id.split("/")[0]]
            np.testing.assert_allclose(K.numpy(), [[cam["fx"] * 64 / 40, 0, cam["u0"] * 64 / 40],
                                                   [0, cam["fy"] * 32 / height, cam["v0"] * 32 / height],
                                                   [0, 0, 1]], rtol=1e-6)

    pair = source.load("stereo", "aachen/aachen_000000_000019")
    assert pair["baseline"] == pytest.approx(0.2) and pair["right"].shape == (16, 40, 3)
    assert len(source.items("image")) == 10 and source.default_size == (192, 512)


def test_cityscapes_errors_name_the_file(tmp_path):
    root = build_cityscapes_seq(tmp_path / "cs")
    camera = root / "camera" / "train" / "bremen" / "bremen_000003_000019_camera.json"
    camera.unlink()
    with pytest.raises(UserError) as exc:
        open_source("cityscapes_seq", root, {}).items("depth")
    one_line_naming(exc, camera)
    with pytest.raises(UserError) as exc:
        open_source("cityscapes_seq", root, {}).items("video")
    one_line_naming(exc, root / "camera" / "train" / "bremen" / "bremen_000003_*_camera.json")

    disparity = root / "disparity" / "train" / "aachen" / "aachen_000000_000019_disparity.png"
    Image.fromarray(np.full((20, 40), 9, np.uint8)).save(disparity)
    with pytest.raises(UserError) as exc:
        open_source("cityscapes_seq", root, {}).load("depth", "aachen/aachen_000000_000019")
    one_line_naming(exc, disparity)

    with pytest.raises(UserError) as exc:
        open_source("cityscapes_seq", root, {"split": "test"}).items("video")
    one_line_naming(exc, root / "leftImg8bit_sequence" / "test")
    with pytest.raises(UserError, match="crop_bottom"):
        open_source("cityscapes_seq", root, {"crop_bottom": 1.5})


# --- NYUv2 ------------------------------------------------------------------------------------

def test_nyu_depth_is_read_in_image_orientation(nyu):
    source = open_source("nyuv2_depth", nyu, {})
    assert source.items("depth") == ["0001", "0003"]  # trainNdxs [3, 1], the default with splits.mat
    item = source.load("depth", "0003")
    assert item["depth"].shape == (NYU_H, NYU_W) and item["image"].shape == (NYU_H, NYU_W, 3)
    # depth = 1 + 0.5 * row + 0.01 * col + 0.1 * (index - 1): row 7, col 2 of image 3 is 4.72 m.
    assert item["depth"][7, 2] == pytest.approx(4.72, abs=1e-5)
    np.testing.assert_allclose(item["depth"], nyu_depth(3))
    np.testing.assert_array_equal(item["image"], nyu_image(3))
    assert source.default_size == (240, 320) and source.max_depth == 10

    assert open_source("nyuv2_depth", nyu, {"split": "all"}).items("image") == [f"{i:04d}" for i in range(1, NYU_N + 1)]
    copy = pickle.loads(pickle.dumps(source))  # the HDF5 handle is reopened, not pickled
    np.testing.assert_array_equal(copy.load("image", "0001")["image"], nyu_image(1))


def test_nyu_without_splits_and_errors(tmp_path):
    root = build_nyuv2_depth(tmp_path / "nyu", splits=False)
    assert len(open_source("nyuv2_depth", root, {}).items("depth")) == NYU_N
    with pytest.raises(UserError) as exc:
        open_source("nyuv2_depth", root, {"split": "train"})
    one_line_naming(exc, root / "splits.mat")
    with pytest.raises(UserError) as exc:
        open_source("nyuv2_depth", tmp_path, {})
    one_line_naming(exc, tmp_path / "nyu_depth_v2_labeled.mat")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(UserError) as exc:
        open_source("nyuv2_depth", broken, {}).items("depth")
    one_line_naming(exc, broken / "nyu_depth_v2_labeled.mat")


# --- video folders ----------------------------------------------------------------------------

def test_video_folder_items_and_intrinsics(videos, tmp_path):
    source = open_source("video_folder", videos, {})
    assert len(source.items("image")) == 8 and source.default_size is None
    assert source.items("video") == ["clip_a/frame_001", "clip_a/frame_002", "clip_a/frame_003", "clip_b/01"]
    clip = source.load("video", "clip_b/01")
    assert clip["K"] is None and [f.shape for f in clip["frames"]] == [(VIDEO_H, VIDEO_W, 3)] * 3
    batch = Batches(source, "video", "test").draw(torch.Generator().manual_seed(0), 2)
    assert batch["K"] is None and batch["frames"].shape == (2, 3, 3, VIDEO_H, VIDEO_W)

    calibrated = open_source("video_folder", videos, {"intrinsics": "20,21,12,8", "size": "32x48"})
    assert calibrated.default_size == (32, 48)
    np.testing.assert_allclose(calibrated.load("video", "clip_a/frame_001")["K"], [[20, 0, 12], [0, 21, 8], [0, 0, 1]])
    K = Batches(calibrated, "video", "test").draw(torch.Generator().manual_seed(0), 1)["K"][0]
    np.testing.assert_allclose(K.numpy(), [[40, 0, 24], [0, 42, 16], [0, 0, 1]])  # native 16x24 -> 32x48

    flat = build_video_folder(tmp_path / "flat", flat=True)
    assert open_source("video_folder", flat, {}).items("video") == ["frame_001", "frame_002", "frame_003"]


def test_video_folder_errors(tmp_path):
    root = build_video_folder(tmp_path / "v")
    odd = root / "clip_a" / "frame_003.png"
    Image.fromarray(np.zeros((VIDEO_H + 2, VIDEO_W, 3), np.uint8)).save(odd)
    source = open_source("video_folder", root, {})
    with pytest.raises(UserError) as exc:
        source.load("video", "clip_a/frame_002")
    one_line_naming(exc, odd)
    (root / "clip_b" / "01.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as exc:
        source.load("image", "clip_b/01")
    one_line_naming(exc, root / "clip_b" / "01.jpg")
    with pytest.raises(UserError, match="fx,fy,cx,cy"):
        open_source("video_folder", root, {"intrinsics": "20,21"})
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no frames")
    with pytest.raises(UserError) as exc:
        open_source("video_folder", empty, {})
    one_line_naming(exc, empty)


# --- ImageNet folders -------------------------------------------------------------------------

def test_image_folder_classes_and_labels(imagenet):
    source = open_source("image_folder", imagenet, {})
    assert source.class_names == sorted(IMAGENET)
    ids = source.items("label")
    assert len(ids) == 7 and "n01443537/n01443537_10014" in ids  # Thumbs.db and the hidden file are ignored
    item = source.load("label", "n01484850/n01484850_10036")
    assert item["label"] == 2 and item["image"].shape == (20, 30, 3)
    assert source.items("image") == ids and source.default_size == (224, 224)
    # ROOT may be the train folder itself.
    assert open_source("image_folder", imagenet / "train", {}).items("label") == ids


def test_image_folder_empty_class_and_errors(tmp_path):
    root = build_image_folder(tmp_path / "in")
    (root / "train" / "n00000000").mkdir()  # an empty class folder still counts as a class
    source = open_source("image_folder", root, {})
    assert source.class_names[0] == "n00000000" and source.load("label", "n01440764/n01440764_10026")["label"] == 1
    bad = root / "train" / "n01440764" / "n01440764_10027.JPEG"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(UserError) as exc:
        source.load("label", "n01440764/n01440764_10027")
    one_line_naming(exc, bad)
    nothing = tmp_path / "nothing" / "train"
    (nothing / "cat").mkdir(parents=True)
    (nothing / "cat" / "notes.txt").write_text("no images")
    with pytest.raises(UserError) as exc:
        open_source("image_folder", nothing.parent, {}).items("label")
    one_line_naming(exc, nothing)


# --- end to end -------------------------------------------------------------------------------

def _pretrain(tmp_path, method, dataset, root, source_options=None, options=None):
    config = {"name": dataset, "method": method, "arch": "resnet10t", "dataset": dataset, "root": str(root),
              "data_id": dataset, "steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0, "resize": [64, 64],
              "source_options": source_options or {}, "options": options or {}}
    path = run_pretrain(config, tmp_path / dataset, progress=False, log=lambda m: None)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["method"] == method and ckpt.meta["data"]["dataset"] == dataset and ckpt.encoder
    return ckpt


@pytest.mark.parametrize("dataset", ["kitti_raw", "cityscapes_seq", "nyuv2_depth"])
def test_depth_supervised_end_to_end(dataset, kitti, cityscapes, nyu, tmp_path):
    root, options = {"kitti_raw": (kitti, {"depth": "velodyne"}), "cityscapes_seq": (cityscapes, {}),
                     "nyuv2_depth": (nyu, {})}[dataset]
    ckpt = _pretrain(tmp_path, "depth_supervised", dataset, root, options)
    assert ckpt.decoder and ckpt.meta["decoder"]["max_depth"] == (10.0 if dataset == "nyuv2_depth" else 80.0)


def test_classification_end_to_end(imagenet, tmp_path):
    ckpt = _pretrain(tmp_path, "classification", "image_folder", imagenet)
    assert ckpt.meta["classes"] == 3 and ckpt.decoder is None


def test_depth_video_on_a_video_folder_end_to_end(videos, tmp_path):
    # One loss scale keeps the step cheap; the data path (K None -> learned intrinsics) is what is tested.
    ckpt = _pretrain(tmp_path, "depth_video", "video_folder", videos, options={"intrinsics": "learned", "scales": 1})
    assert ckpt.decoder
