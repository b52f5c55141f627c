"""`cityscapes_seq`: Cityscapes for depth pre-training: the 30-frame video snippets, the stereo
pairs, and depth from the SGM disparity maps.

Layout (the official archives unpacked into ROOT; anything else there is ignored):

    ROOT/leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame:06d>_leftImg8bit.png
    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/rightImg8bit/<split>/<city>/<city>_<seq>_<frame>_rightImg8bit.png
    ROOT/disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png      uint16
    ROOT/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json
        {"extrinsic": {"baseline": metres, ...}, "intrinsic": {"fx", "fy", "u0", "v0"}}

Item ids are `<city>/<city>_<seq>_<frame>` (e.g. `aachen/aachen_000000_000019`).

Kinds:
- `video`: a sequence frame with frame-1 and frame+1 of the same `<city>_<seq>` (the ends of a
  snippet have no neighbour and are no items). K from the camera JSON of the same `<city>_<seq>`
  (the snippet's annotated frame, the nearest one if there are several).
- `stereo`: leftImg8bit + rightImg8bit, K and baseline from the frame's camera JSON.
- `depth`: leftImg8bit and depth = baseline * fx / d from its disparity map, where a pixel
  value p > 0 means d = (p - 1) / 256 pixels and p = 0 (or d = 0) no measurement.
- `image`: the sequence frames when leftImg8bit_sequence/<split> exists, else leftImg8bit.
A left image whose right image, disparity map or camera file is missing is an error naming the
missing file (a partial download), not a silently smaller dataset.

Options (`--source-option KEY=VALUE`):
- `split`: the split folder to read (default `train`; never pre-train on the images a transfer
  evaluates on).
- `crop_bottom`: fraction of rows cut from the bottom of every array (default 0.2: the ego car's
  bonnet, as monodepth2 / ManyDepth do before training at 192x512, the default size). Rows go
  from the bottom, so the origin and K stay as they are; the resize in `pretrain.batches` then
  scales K from the cropped height.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.core.errors import UserError

from .base import PretrainSource, read_png_uint16, read_rgb, register_source, require_items

OPTIONS = ("split", "crop_bottom")
SEQUENCE, LEFT, RIGHT, DISPARITY, CAMERA = "leftImg8bit_sequence", "leftImg8bit", "rightImg8bit", "disparity", "camera"
SUFFIX = {SEQUENCE: "_leftImg8bit.png", LEFT: "_leftImg8bit.png", RIGHT: "_rightImg8bit.png",
          DISPARITY: "_disparity.png", CAMERA: "_camera.json"}


def _snippet_and_frame(stem: str) -> tuple[str, int] | None:
    """`aachen/aachen_000000_000019` -> (`aachen/aachen_000000`, 19): the snippet and the frame
    number (city names may hold '-', but the last field is always the frame)."""
    snippet, _, frame = stem.rpartition("_")
    return (snippet, int(frame)) if snippet and frame.isdigit() else None


def read_camera(path: Path) -> tuple[np.ndarray, float]:
    """K (3x3) and baseline (metres) of a Cityscapes camera JSON."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: camera file not found; it comes with camera_trainvaltest.zip") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable camera JSON ({exc})") from None
    try:
        intr, baseline = data["intrinsic"], float(data["extrinsic"]["baseline"])
        fx, fy, u0, v0 = (float(intr[k]) for k in ("fx", "fy", "u0", "v0"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: expected extrinsic.baseline and intrinsic.fx/fy/u0/v0 numbers, "
                        f"missing or invalid {exc}") from None
    if fx <= 0 or fy <= 0 or baseline <= 0:
        raise UserError(f"{path}: fx, fy and baseline must be positive (got {fx}, {fy}, {baseline})")
    return np.array([[fx, 0.0, u0], [0.0, fy, v0], [0.0, 0.0, 1.0]]), baseline


def disparity_to_depth(raw: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Depth (metres, 0 = none) of a Cityscapes disparity PNG: p > 0 -> d = (p - 1) / 256 px."""
    d = (raw.astype(np.float64) - 1.0) / 256.0
    valid = (raw > 0) & (d > 0)
    depth = np.zeros(raw.shape, np.float64)
    depth[valid] = baseline * fx / d[valid]
    return depth.astype(np.float32)


@register_source
class CityscapesSequence(PretrainSource):
    name = "cityscapes_seq"
    description = "Cityscapes leftImg8bit_sequence video snippets (+ right views, camera files)"
    kinds = ("image", "depth", "video", "stereo")
    option_names = OPTIONS
    default_size = (192, 512)
    max_depth = 80.0

    def __init__(self, root, options):
        super().__init__(root, options)
        self.split = str(options.get("split") or "train")
        try:
            self.crop_bottom = float(options.get("crop_bottom", 0.2))
        except (TypeError, ValueError):
            self.crop_bottom = -1.0
        if not 0 <= self.crop_bottom < 1:
            raise UserError(f"--source-option crop_bottom={options.get('crop_bottom')!r}: give a fraction in [0, 1)")
        self._lists: dict[str, dict[str, Path]] = {}
        self._cameras: dict[str, tuple[np.ndarray, float]] = {}
        self._by_snippet: dict[str, list[tuple[int, Path]]] | None = None

    def _folder(self, kind: str) -> Path:
        return self.root / kind / self.split

    def _files(self, kind: str) -> dict[str, Path]:
        """{item id: path} of one folder's files of the split (listed once)."""
        if kind not in self._lists:
            base, suffix, found = self._folder(kind), SUFFIX[kind], {}
            if base.is_dir():
                for city in sorted(p for p in base.iterdir() if p.is_dir()):
                    for f in city.iterdir():
                        if f.name.endswith(suffix):
                            found[f"{city.name}/{f.name[:-len(suffix)]}"] = f
            self._lists[kind] = found
        return self._lists[kind]

    def _require(self, kind: str, what: str) -> dict[str, Path]:
        files = self._files(kind)
        if not files:
            raise UserError(f"{self._folder(kind)}: no *{SUFFIX[kind]} files found; the {what} need it "
                            f"(unpack the Cityscapes archive into ROOT, or choose --source-option split)")
        return files

    def _expected(self, kind: str, item_id: str) -> Path:
        return self._folder(kind) / f"{item_id}{SUFFIX[kind]}"

    def _partner(self, kind: str, item_id: str) -> Path:
        path = self._files(kind).get(item_id)
        if path is None:
            raise UserError(f"{self._expected(kind, item_id)}: not found, but its left image is there "
                            f"(a partial download? re-extract the {kind} archive)")
        return path

    def _sequence_camera(self, item_id: str) -> Path:
        """The camera JSON of a sequence frame: the one of its snippet, nearest in frame number."""
        if self._by_snippet is None:
            self._by_snippet = {}
            for cam_id, path in self._files(CAMERA).items():
                parsed = _snippet_and_frame(cam_id)
                if parsed:
                    self._by_snippet.setdefault(parsed[0], []).append((parsed[1], path))
        snippet, frame = _snippet_and_frame(item_id)
        candidates = self._by_snippet.get(snippet)
        if not candidates:
            city, name = snippet.split("/")
            raise UserError(f"{self._folder(CAMERA) / city / f'{name}_*_camera.json'}: not found; the video "
                            f"items of {name} need its intrinsics (camera_trainvaltest.zip)")
        return min(candidates, key=lambda c: (abs(c[0] - frame), c[0]))[1]

    def _camera(self, path: Path) -> tuple[np.ndarray, float]:
        key = str(path)
        if key not in self._cameras:
            self._cameras[key] = read_camera(path)
        return self._cameras[key]

    def items(self, kind: str) -> list[str]:
        if kind == "image":
            files = self._files(SEQUENCE) or self._require(LEFT, "image items")
            return require_items(list(files), self.root, "Cityscapes frames")
        if kind == "video":
            frames = self._require(SEQUENCE, "video items")
            ids = []
            for item_id in frames:
                snippet, frame = _snippet_and_frame(item_id) or (None, None)
                if snippet and all(f"{snippet}_{j:06d}" in frames for j in (frame - 1, frame + 1)):
                    ids.append(item_id)
            ids = require_items(ids, self._folder(SEQUENCE), "sequence frames with both neighbours")
            for snippet_id in {i.rpartition("_")[0]: i for i in ids}.values():
                self._camera(self._sequence_camera(snippet_id))  # fail now, not mid-training
            return ids
        lefts = require_items(list(self._require(LEFT, f"{kind} items")), self._folder(LEFT), "left images")
        partners = (RIGHT, CAMERA) if kind == "stereo" else (DISPARITY, CAMERA)
        for item_id in lefts:
            for partner in partners:
                self._partner(partner, item_id)
        return lefts

    def _crop(self, array: np.ndarray) -> np.ndarray:
        keep = array.shape[0] - int(round(array.shape[0] * self.crop_bottom))
        return array[:keep]

    def load(self, kind: str, item_id: str) -> dict:
        if kind == "image":
            path = self._files(SEQUENCE).get(item_id) or self._files(LEFT)[item_id]
            return {"image": self._crop(read_rgb(path))}
        if kind == "video":
            snippet, frame = _snippet_and_frame(item_id)
            frames = [self._crop(read_rgb(self._files(SEQUENCE).get(f"{snippet}_{j:06d}")
                                          or self._expected(SEQUENCE, f"{snippet}_{j:06d}")))
                      for j in (frame - 1, frame, frame + 1)]
            K, _ = self._camera(self._sequence_camera(item_id))
            return {"frames": frames, "K": K.copy()}
        left = read_rgb(self._files(LEFT).get(item_id) or self._expected(LEFT, item_id))
        K, baseline = self._camera(self._partner(CAMERA, item_id))
        if kind == "stereo":
            right = read_rgb(self._partner(RIGHT, item_id))
            return {"left": self._crop(left), "right": self._crop(right), "K": K.copy(), "baseline": baseline}
        if kind == "depth":
            path = self._partner(DISPARITY, item_id)
            raw = read_png_uint16(path)
            if raw.shape != left.shape[:2]:
                raise UserError(f"{path}: disparity is {raw.shape[1]}x{raw.shape[0]} but its image is "
                                f"{left.shape[1]}x{left.shape[0]}")
            return {"image": self._crop(left), "depth": self._crop(disparity_to_depth(raw, K[0, 0], baseline))}
        raise ValueError(kind)
