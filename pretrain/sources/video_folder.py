"""`video_folder`: any videos, as folders of frames, for uncalibrated self-supervised training.

Layout: `ROOT/<video>/*.png|jpg|jpeg`, frames in name order (zero-pad the numbers); a ROOT that
holds frames itself is one more video (id prefix empty). Other files are ignored. Item ids are
`<video>/<frame stem>` (or `<frame stem>` for frames directly in ROOT).

Kinds: `image` (every frame) and `video` (every frame with a previous and a next one in the same
video). The camera is unknown: K is None, so `depth_video` needs `-o intrinsics=learned`, unless
the `intrinsics` option gives it. All frames of one video must have the size of its first frame
(checked as frames are read; a mismatch is an error naming the frame).

Options (`--source-option KEY=VALUE`):
- `intrinsics`: "fx,fy,cx,cy" in pixels of the native frames, one camera for every video.
- `size`: HxW the frames are resized to in training (default: native, the first frame's size;
  `--resize` overrides both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.errors import UserError
from bench.core.sizes import parse_size

from .base import PretrainSource, read_rgb, register_source, require_items

OPTIONS = ("intrinsics", "size")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_intrinsics(text) -> np.ndarray:
    try:
        fx, fy, cx, cy = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--source-option intrinsics={text!r}: expected 'fx,fy,cx,cy' in pixels, "
                        f"e.g. 720,720,640,360") from None
    if fx <= 0 or fy <= 0:
        raise UserError(f"--source-option intrinsics={text!r}: focal lengths must be positive")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _frames_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _frame_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.height, im.width
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


@register_source
class VideoFolder(PretrainSource):
    name = "video_folder"
    description = "any videos as folders of frames, uncalibrated (one sub-folder per video)"
    kinds = ("image", "video")
    option_names = OPTIONS

    def __init__(self, root, options):
        super().__init__(root, options)
        self.K = parse_intrinsics(options["intrinsics"]) if options.get("intrinsics") else None
        if options.get("size"):
            self.default_size = parse_size(options["size"], "--source-option size", allow_short_side=False)
        self._videos: dict[str, list[Path]] = {}
        for folder in [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            frames = _frames_in(folder)
            if frames:
                self._videos["" if folder == self.root else folder.name] = frames
        if not self._videos:
            raise UserError(f"{self.root}: no video frames found (expected ROOT/<video>/*.png|jpg|jpeg, "
                            f"or the frames of one video directly in ROOT)")
        self._where: dict[str, tuple[str, int]] = {}
        for video, frames in self._videos.items():
            for position, path in enumerate(frames):
                item_id = f"{video}/{path.stem}" if video else path.stem
                if item_id in self._where:
                    other = frames[self._where[item_id][1]]
                    raise UserError(f"{path}: same frame name as {other.name}; keep one of them")
                self._where[item_id] = (video, position)
        self._first_size: dict[str, tuple[int, int]] = {}

    def items(self, kind: str) -> list[str]:
        ids = [item_id for item_id, (video, position) in self._where.items()
               if kind != "video" or 0 < position < len(self._videos[video]) - 1]
        what = "frames with a previous and a next frame (videos of 3 frames or more)" if kind == "video" else "frames"
        return require_items(ids, self.root, what)

    def _read(self, video: str, position: int) -> np.ndarray:
        frames = self._videos[video]
        if video not in self._first_size:
            self._first_size[video] = _frame_size(frames[0])
        image = read_rgb(frames[position])
        expected = self._first_size[video]
        if image.shape[:2] != expected:
            raise UserError(f"{frames[position]}: frame is {image.shape[1]}x{image.shape[0]} but the video's "
                            f"first frame {frames[0].name} is {expected[1]}x{expected[0]}; frames of one video "
                            f"must share a size")
        return image

    def load(self, kind: str, item_id: str) -> dict:
        video, position = self._where[item_id]
        if kind == "image":
            return {"image": self._read(video, position)}
        if kind == "video":
            frames = [self._read(video, p) for p in (position - 1, position, position + 1)]
            return {"frames": frames, "K": None if self.K is None else self.K.copy()}
        raise ValueError(kind)
