"""`kitti_raw`: the KITTI raw recordings (synced + rectified), the driving data of monodepth2.

Layout (the official archives unpacked into ROOT; anything else there is ignored):

    ROOT/2011_09_26/calib_cam_to_cam.txt                    one pair of calibration files per date
    ROOT/2011_09_26/calib_velo_to_cam.txt
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png   left colour camera
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_03/data/0000000000.png   right colour camera
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/velodyne_points/data/0000000000.bin   float32 x,y,z,r

Frames may also be JPEGs (monodepth2's converted copy). Item ids are
`2011_09_26/2011_09_26_drive_0001_sync/image_02/0000000000`.

Kinds:
- `image`: the frames (image_02; with a split, the camera each line names).
- `video`: a frame and its two neighbours in the same drive; K is the 3x3 part of the camera's
  P_rect_0c from calib_cam_to_cam.txt (rectified images, so that is their intrinsics).
- `stereo`: image_02 and image_03 of a frame; K from P_rect_02 and the baseline from the two
  projection matrices: t_x = P[0,3] / P[0,0], baseline = t_x(02) - t_x(03) (about 0.54 m). Split
  lines naming the right camera give the same pair (the contract puts the right camera at
  +baseline, so the pair is never swapped).
- `depth`: the frame and its depth map, either
  * `velodyne`: the scan projected into the camera as monodepth2's `generate_depth_map` does:
    P_rect_0c @ R_rect_00 @ [R|T of calib_velo_to_cam], points behind the scanner (x < 0) and
    behind the camera dropped, pixel = round(u) - 1 (the 1-based offset monodepth2 kept from the
    devkit's MATLAB code, so the maps equal the Eigen benchmark's ground truth), and where several
    points land on one pixel the nearest wins; or
  * `annotated`: the KITTI depth benchmark's maps,
    `data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/0000000005.png`
    (uint16, metres = value / 256, 0 = no measurement; they exist for all but the first and last
    five frames of a drive, and only those frames are items).

Options (`--source-option KEY=VALUE`):
- `split`: a split file in the monodepth2 / Eigen-Zhou format, one frame per line
  (`2011_09_26/2011_09_26_drive_0022_sync 473 l`; side l = image_02, r = image_03). Only those
  frames are items, and a line whose frame (or, for `video`, a neighbour; for `depth`, its
  scan or map) is missing is an error. Default: every frame of image_02.
- `depth`: `velodyne` or `annotated`. Default: `annotated` when `depth_root` is given or a
  `data_depth_annotated` folder sits in ROOT or next to it (ROOT/..), else `velodyne`.
- `depth_root`: the `data_depth_annotated` folder (holding `train/` and `val/`).
- `exclude`: a list of raw frames no item may read, e.g. the frames the KITTI semantics images
  were taken from (so that pre-training never sees evaluation images; docs/pretraining.md says
  how to make it). One frame per line, in any of these forms (blank lines and `#` comments are
  skipped):
  * `2011_09_26 2011_09_26_drive_0009_sync 0000000384` (date, drive, frame: the lines of the
    KITTI stereo/flow 2015 devkit's `mapping/train_mapping.txt`, which can be passed as it is);
  * `2011_09_26/2011_09_26_drive_0009_sync 384` (a split file's form; a trailing `l` or `r` is
    allowed and ignored);
  * `2011_09_26/2011_09_26_drive_0009_sync/image_02/0000000384` (an item id).
  A listed frame is excluded for both cameras, and every item that would read it goes: the
  frame's image, depth and stereo items, and the video items centred on it *and on its two
  neighbours*, whose triplets hold it as a source frame. Lines naming drives ROOT does not hold
  exclude nothing. An item a `split` file names but the list excludes is dropped silently.
- `exclude_margin`: also exclude the frames this many steps before and after each listed one
  (near-duplicates of it at 10 Hz). Default 0.

The self-supervised depth methods use monodepth2's depth range on KITTI, 0.1 to 100 m
(`self_supervised_max_depth`); supervised depth keeps `max_depth` (80 m, the evaluation cap).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from bench.core.errors import UserError

from .base import PretrainSource, read_png_uint16, read_rgb, register_source, require_items

OPTIONS = ("split", "depth", "depth_root", "exclude", "exclude_margin")
DATE = re.compile(r"\d{4}_\d{2}_\d{2}$")
SIDES = {"l": "image_02", "r": "image_03"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CALIB_FIX = "it ships with the date's calibration archive (e.g. 2011_09_26_calib.zip) and belongs in the date folder"


EXCLUDE_FORMS = ("'DATE DRIVE FRAME' (devkit mapping/train_mapping.txt), 'DATE/DRIVE FRAME [l|r]' "
                 "or 'DATE/DRIVE/image_0X/FRAME'")


def _read_list_file(value, option: str) -> str:
    path = Path(str(value)).expanduser()
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"--source-option {option}={value}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--source-option {option}={value}: unreadable file ({exc})") from None


def parse_exclude_list(text: str, where: str) -> set[tuple[str, int]]:
    """The (DATE/DRIVE, frame number) pairs of an `exclude` list (forms: EXCLUDE_FORMS)."""
    frames = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        drive = frame = None
        if len(parts) == 3 and DATE.match(parts[0]) and parts[1].startswith(parts[0] + "_drive_"):
            drive, frame = f"{parts[0]}/{parts[1]}", parts[2]  # the devkit's mapping form
        elif len(parts) in (2, 3) and "/" in parts[0] and (len(parts) == 2 or parts[2] in SIDES):
            drive, frame = parts[0].strip("/"), parts[1]  # the split form
        elif len(parts) == 1 and len(pieces := parts[0].strip("/").split("/")) == 4 and pieces[2] in SIDES.values():
            drive, frame = f"{pieces[0]}/{pieces[1]}", pieces[3]  # an item id
        if drive is None or not frame.isdigit() or not DATE.match(drive.split("/")[0]) or drive.count("/") != 1:
            raise UserError(f"{where}:{lineno}: expected a raw frame as {EXCLUDE_FORMS}, got {line.strip()!r}")
        frames.add((drive, int(frame)))
    if not frames:
        raise UserError(f"{where}: the exclude list names no frames")
    return frames


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """A KITTI calibration text file (`KEY: numbers` per line) as {key: float vector}; lines
    that are not numbers (calib_time) are skipped, as every KITTI reader does."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: calibration file not found; {CALIB_FIX}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable calibration file ({exc})") from None
    values = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue
    return values


def calib_matrix(calib: dict, key: str, shape: tuple[int, int], path: Path) -> np.ndarray:
    n = shape[0] * shape[1]
    if key not in calib or calib[key].size != n:
        raise UserError(f"{path}: {key} missing or not {n} numbers; {CALIB_FIX}")
    return calib[key].reshape(shape)


def baseline_from_projections(P_left: np.ndarray, P_right: np.ndarray) -> float:
    """Metres between two rectified cameras: P = K [I | t] with t_x = P[0,3] / P[0,0]."""
    return float(P_left[0, 3] / P_left[0, 0] - P_right[0, 3] / P_right[0, 0])


def read_velodyne(path: Path) -> np.ndarray:
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise UserError(f"{path}: Velodyne scan not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable Velodyne scan ({exc})") from None
    if raw.size % 4:
        raise UserError(f"{path}: {raw.size * 4} bytes is not a whole number of float32 (x, y, z, reflectance) "
                        f"points; the file is truncated, re-extract the drive")
    return raw.reshape(-1, 4)


def velodyne_depth(points: np.ndarray, P_rect: np.ndarray, R_rect: np.ndarray, velo_to_cam: np.ndarray,
                   shape: tuple[int, int]) -> np.ndarray:
    """Sparse H x W depth (metres, 0 = no point) of a Velodyne scan seen by a rectified camera."""
    h, w = shape
    pts = points[points[:, 0] >= 0, :3].astype(np.float64)  # x points forward: keep what is ahead
    rect = np.eye(4)
    rect[:3, :3] = R_rect
    proj = (P_rect @ rect @ velo_to_cam @ np.c_[pts, np.ones(len(pts))].T).T
    proj = proj[proj[:, 2] > 0]  # behind the camera: would project mirrored
    z = proj[:, 2]
    u = np.round(proj[:, 0] / z).astype(np.int64) - 1
    v = np.round(proj[:, 1] / z).astype(np.int64) - 1
    inside = (u >= 0) & (v >= 0) & (u < w) & (v < h)
    depth = np.full(h * w, np.inf)
    np.minimum.at(depth, v[inside] * w + u[inside], z[inside])  # the nearest point wins
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(h, w).astype(np.float32)


def _index_files(folder: Path, suffixes: tuple[str, ...]) -> dict[int, Path]:
    """{frame number: path} of the numbered files in a `data` folder (missing folder: none)."""
    if not folder.is_dir():
        return {}
    out = {}
    for entry in folder.iterdir():
        if entry.suffix.lower() in suffixes and entry.stem.isdigit():
            out[int(entry.stem)] = entry
    return out


@register_source
class KittiRaw(PretrainSource):
    name = "kitti_raw"
    description = "KITTI raw drives: stereo video with calibration, optional projected LiDAR depth"
    kinds = ("image", "depth", "video", "stereo")
    option_names = OPTIONS
    default_size = (192, 640)
    max_depth = 80.0
    self_supervised_max_depth = 100.0  # monodepth2's --max_depth

    def __init__(self, root, options):
        super().__init__(root, options)
        self._drives = self._find_drives()
        self._files: dict[tuple[str, str], dict[int, Path]] = {}
        self._calib: dict[tuple[str, str], dict] = {}
        self.excluded = self._read_exclude()
        self._split = self._read_split(Path(options["split"])) if options.get("split") else None
        self.depth_mode, self.depth_root = self._depth_source()
        self._annotated: dict[str, Path] | None = None

    # -- discovery -----------------------------------------------------------------------------

    def _find_drives(self) -> dict[str, Path]:
        drives = {}
        for date in sorted(p for p in self.root.iterdir() if p.is_dir() and DATE.match(p.name)):
            for drive in sorted(p for p in date.iterdir() if p.is_dir()):
                if (drive / "image_02" / "data").is_dir():
                    drives[f"{date.name}/{drive.name}"] = drive
        if not drives:
            raise UserError(f"{self.root}: no KITTI raw drives found (expected "
                            f"ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png)")
        return drives

    def _frames(self, drive: str, folder: str) -> dict[int, Path]:
        """Frame files of one drive's `image_02`, `image_03`, `velodyne_points` folder."""
        key = (drive, folder)
        if key not in self._files:
            suffixes = (".bin",) if folder == "velodyne_points" else IMAGE_SUFFIXES
            self._files[key] = _index_files(self._drives[drive] / folder / "data", suffixes)
        return self._files[key]

    def _frame_path(self, drive: str, folder: str, index: int) -> Path:
        """The file of a frame, or where it was expected (for the error message)."""
        found = self._frames(drive, folder).get(index)
        ext = ".bin" if folder == "velodyne_points" else ".png"
        return found or self._drives[drive] / folder / "data" / f"{index:010d}{ext}"

    @classmethod
    def content_ids(cls, options: dict) -> dict:
        if not options.get("exclude"):
            return {}
        text = _read_list_file(options["exclude"], "exclude")
        return {"exclude_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def _read_exclude(self) -> set[tuple[str, int]]:
        """(DATE/DRIVE, frame) pairs no item may read: the listed frames and their margin."""
        value, margin = self.options.get("exclude"), self.options.get("exclude_margin", 0)
        try:
            margin = int(str(margin))
        except ValueError:
            margin = -1
        if margin < 0:
            raise UserError(f"dataset kitti_raw: source option exclude_margin={self.options.get('exclude_margin')!r}; "
                            f"use a whole number of frames >= 0")
        if not value:
            if "exclude_margin" in self.options:
                raise UserError("dataset kitti_raw: source option exclude_margin needs exclude=LIST")
            return set()
        listed = parse_exclude_list(_read_list_file(value, "exclude"), str(value))
        return {(drive, i + d) for drive, i in listed for d in range(-margin, margin + 1)}

    def _reads_excluded(self, kind: str, drive: str, index: int) -> bool:
        """Whether the item of `kind` at frame `index` reads a frame of the exclude list."""
        if not self.excluded:
            return False
        frames = (index - 1, index, index + 1) if kind == "video" else (index,)
        return any((drive, i) in self.excluded for i in frames)

    def _read_split(self, path: Path) -> list[tuple[str, str, int, int]]:
        """(drive, camera, frame, line number) of each line of a monodepth2 split file."""
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise UserError(f"--source-option split={path}: split file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: unreadable split file ({exc})") from None
        entries = []
        for lineno, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in SIDES:
                raise UserError(f"{path}:{lineno}: expected 'DATE/DRIVE FRAME l|r' "
                                f"(e.g. '2011_09_26/2011_09_26_drive_0022_sync 473 l'), got {line.strip()!r}")
            drive = parts[0].strip("/")
            if drive not in self._drives:
                raise UserError(f"{path}:{lineno}: {self.root / drive / 'image_02' / 'data'} not found "
                                f"(the split names drive {drive}, which ROOT does not hold)")
            entries.append((drive, SIDES[parts[2]], int(parts[1]), lineno))
        if not entries:
            raise UserError(f"{path}: the split file lists no frames")
        return entries

    def _depth_source(self) -> tuple[str, Path | None]:
        mode = self.options.get("depth")
        if mode not in (None, "velodyne", "annotated"):
            raise UserError(f"dataset kitti_raw: source option depth={mode!r}; use velodyne or annotated")
        given = self.options.get("depth_root")
        if given:
            folder = Path(given).expanduser()
            if not folder.is_dir():
                raise UserError(f"--source-option depth_root={given}: folder not found (it should be the "
                                f"data_depth_annotated folder holding train/ and val/)")
            return mode or "annotated", folder
        if mode == "velodyne":
            return mode, None
        for folder in (self.root / "data_depth_annotated", self.root.parent / "data_depth_annotated"):
            if folder.is_dir():
                return "annotated", folder
        if mode == "annotated":
            raise UserError(f"{self.root.parent / 'data_depth_annotated'}: folder not found; point "
                            f"--source-option depth_root at the KITTI depth benchmark's data_depth_annotated")
        return "velodyne", None

    def _annotated_dirs(self) -> dict[str, Path]:
        """{drive folder name: its proj_depth/groundtruth folder} over train/ and val/."""
        if self._annotated is None:
            self._annotated = {}
            for part in ("train", "val"):
                base = self.depth_root / part
                if base.is_dir():
                    for drive in base.iterdir():
                        if (drive / "proj_depth" / "groundtruth").is_dir():
                            self._annotated[drive.name] = drive / "proj_depth" / "groundtruth"
        return self._annotated

    def _annotated_path(self, drive: str, camera: str, index: int) -> Path:
        name = drive.split("/")[1]
        base = self._annotated_dirs().get(name, self.depth_root / "train" / name / "proj_depth" / "groundtruth")
        return base / camera / f"{index:010d}.png"

    # -- calibration ---------------------------------------------------------------------------

    def _calibration(self, drive: str, name: str) -> tuple[dict, Path]:
        date = drive.split("/")[0]
        key = (date, name)
        path = self.root / date / name
        if key not in self._calib:
            self._calib[key] = read_calib(path)
        return self._calib[key], path

    def projection(self, drive: str, camera: str) -> np.ndarray:
        calib, path = self._calibration(drive, "calib_cam_to_cam.txt")
        return calib_matrix(calib, f"P_rect_0{camera[-1]}", (3, 4), path)

    def intrinsics(self, drive: str, camera: str) -> np.ndarray:
        return self.projection(drive, camera)[:, :3].copy()

    def baseline(self, drive: str) -> float:
        return baseline_from_projections(self.projection(drive, "image_02"), self.projection(drive, "image_03"))

    def _velodyne_geometry(self, drive: str, camera: str):
        cam, cam_path = self._calibration(drive, "calib_cam_to_cam.txt")
        velo, velo_path = self._calibration(drive, "calib_velo_to_cam.txt")
        R_rect = calib_matrix(cam, "R_rect_00", (3, 3), cam_path)
        velo_to_cam = np.eye(4)
        velo_to_cam[:3, :3] = calib_matrix(velo, "R", (3, 3), velo_path)
        velo_to_cam[:3, 3] = calib_matrix(velo, "T", (3, 1), velo_path)[:, 0]
        return self.projection(drive, camera), R_rect, velo_to_cam

    # -- items ---------------------------------------------------------------------------------

    def _needs(self, kind: str, drive: str, camera: str, index: int) -> list[tuple[str, Path]]:
        """(folder or 'annotated', path) of every file an item needs."""
        if kind == "stereo":
            return [(c, self._frame_path(drive, c, index)) for c in ("image_02", "image_03")]
        needs = [(camera, self._frame_path(drive, camera, index))]
        if kind == "video":
            needs += [(camera, self._frame_path(drive, camera, j)) for j in (index - 1, index + 1)]
        elif kind == "depth" and self.depth_mode == "velodyne":
            needs.append(("velodyne_points", self._frame_path(drive, "velodyne_points", index)))
        elif kind == "depth":
            needs.append(("annotated", self._annotated_path(drive, camera, index)))
        return needs

    def _present(self, folder: str, drive: str, path: Path) -> bool:
        if folder == "annotated":
            return path.is_file()
        return int(path.stem) in self._frames(drive, folder)

    def items(self, kind: str) -> list[str]:
        if self._split is not None:
            candidates = [(d, c, i, n) for d, c, i, n in self._split]
        else:
            candidates = [(d, "image_02", i, None) for d in self._drives for i in sorted(self._frames(d, "image_02"))]
        ids = set()
        for drive, camera, index, lineno in candidates:
            if kind == "stereo":
                camera = "image_02"
            if self._reads_excluded(kind, drive, index):
                continue
            missing = [p for folder, p in self._needs(kind, drive, camera, index)
                       if not self._present(folder, drive, p)]
            if missing and lineno is not None:
                raise UserError(f"{self.options['split']}:{lineno}: {missing[0]} not found (the split names frame "
                                f"{index} of {drive}, which the {kind} items need)")
            if not missing:
                ids.add(f"{drive}/{camera}/{index:010d}")
        ids = require_items(list(ids), self.root, f"KITTI raw frames usable as {kind} items")
        self._check_calibration(kind, ids)
        return ids

    def _check_calibration(self, kind: str, ids: list[str]) -> None:
        """Read the calibration the items need now, so a missing file fails before training."""
        seen = set()
        for item in ids:
            drive, camera = item.rsplit("/", 2)[:2]
            if (drive, camera) in seen:
                continue
            seen.add((drive, camera))
            if kind == "video":
                self.intrinsics(drive, camera)
            elif kind == "stereo":
                self.baseline(drive)
            elif kind == "depth" and self.depth_mode == "velodyne":
                self._velodyne_geometry(drive, camera)

    def load(self, kind: str, item_id: str) -> dict:
        drive, camera, frame = item_id.rsplit("/", 2)
        index = int(frame)
        image = read_rgb(self._frame_path(drive, camera, index))
        if kind == "image":
            return {"image": image}
        if kind == "video":
            prev, nxt = (read_rgb(self._frame_path(drive, camera, j)) for j in (index - 1, index + 1))
            return {"frames": [prev, image, nxt], "K": self.intrinsics(drive, camera)}
        if kind == "stereo":
            return {"left": image, "right": read_rgb(self._frame_path(drive, "image_03", index)),
                    "K": self.intrinsics(drive, "image_02"), "baseline": self.baseline(drive)}
        if kind == "depth":
            if self.depth_mode == "velodyne":
                points = read_velodyne(self._frame_path(drive, "velodyne_points", index))
                depth = velodyne_depth(points, *self._velodyne_geometry(drive, camera), image.shape[:2])
            else:
                path = self._annotated_path(drive, camera, index)
                depth = read_png_uint16(path).astype(np.float32) / 256.0
                if depth.shape != image.shape[:2]:
                    raise UserError(f"{path}: depth map is {depth.shape[1]}x{depth.shape[0]} but its image is "
                                    f"{image.shape[1]}x{image.shape[0]}; it belongs to another drive or camera")
            return {"image": image, "depth": depth}
        raise ValueError(kind)
