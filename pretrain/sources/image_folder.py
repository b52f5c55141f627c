"""`image_folder`: labelled images in the ImageNet layout, for classification pre-training.

Layout: `ROOT/<split>/<class>/*.JPEG|jpg|jpeg|png` (ROOT may also be the split folder itself,
e.g. `.../ILSVRC/Data/CLS-LOC/train`). The classes are the sorted names of the class folders;
a class folder without images still counts (its index stays stable), but a split without any
image is an error. Other files (and hidden ones) are ignored. Item ids are
`<class>/<file stem>`.

Kinds: `label` (image + class index into `class_names`) and `image`. Items are resized to the
default size 224x224 (the classification method crops from there with `--crop`).

Options (`--source-option KEY=VALUE`):
- `split`: the split folder under ROOT (default `train`).
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError

from .base import PretrainSource, read_rgb, register_source, require_items

OPTIONS = ("split",)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@register_source
class ImageFolder(PretrainSource):
    name = "image_folder"
    description = "an ImageFolder tree of labelled images (ImageNet layout), for classification"
    kinds = ("label", "image")
    option_names = OPTIONS
    default_size = (224, 224)

    def __init__(self, root, options):
        super().__init__(root, options)
        split = str(options.get("split") or "train")
        self.folder = self.root / split if (self.root / split).is_dir() else self.root
        self.class_names = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.class_names:
            raise UserError(f"{self.folder}: no class folders found (expected ROOT/{split}/<class>/*.JPEG)")
        self._files: dict[str, tuple[Path, int]] | None = None  # listed on first use: ImageNet has 1.28M

    def _index(self) -> dict[str, tuple[Path, int]]:
        if self._files is None:
            files = {}
            for label, name in enumerate(self.class_names):
                for path in (self.folder / name).iterdir():
                    if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                        item_id = f"{name}/{path.stem}"
                        if item_id in files:
                            raise UserError(f"{path}: same name as {files[item_id][0].name}; keep one of them")
                        files[item_id] = (path, label)
            self._files = files
        return self._files

    def items(self, kind: str) -> list[str]:
        return require_items(list(self._index()), self.folder, "images (*.JPEG, *.jpg, *.png) in the class folders")

    def load(self, kind: str, item_id: str) -> dict:
        path, label = self._index()[item_id]
        image = read_rgb(path)
        return {"image": image, "label": label} if kind == "label" else {"image": image}
