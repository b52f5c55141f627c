"""Importing foreign checkpoints: read (`formats`), check (`validate`), write (`convert`).

    imported = read_foreign(path, arch, fmt="auto", key_map=None)    # encoder (+ decoder) in harness naming
    report = validate(imported, arch, allow_partial=False)            # refuses bad weights, JSON-able report
    out, report = convert(path, arch, out_path, ...)                  # validate, then save_checkpoint

Files are read safely (`safe_load`: safetensors, or `torch.load(weights_only=True)`; never an
unrestricted unpickle); user key maps are in `keymap`; the monodepth2 decoder layout in
`monodepth2`. Every refusal is a `bench.core.errors.UserError` with one line naming the file.
"""

from bench.importers.formats import FORMATS, Imported, detect_format, read_foreign
from bench.importers.validate import convert, validate

__all__ = ["FORMATS", "Imported", "convert", "detect_format", "read_foreign", "validate"]
