"""`bench submit`: add one outside checkpoint to an existing manifest's matrix.

The checkpoint is converted like a manifest's `import:` backbone (`bench.importers.cache`), then
exactly that backbone's cells run; every record already in the results folder is re-used, and
the leaderboard and plots are rewritten with the new rows.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError


def submit(*, name: str, arch: str, checkpoint: Path, manifest: Path, fmt: str = "auto", key_map: Path | None = None,
           allow_partial: bool = False, normalization=None, out: Path | None = None, workers: int | None = None,
           progress: bool = True, plots: bool = True) -> int:
    """Convert `checkpoint`, then run the manifest's cells for this one backbone and refresh the
    reports. Nothing is added to the results when the checkpoint is refused."""
    from pydantic import ValidationError

    from bench.study.manifest import Backbone, ImportSpec, load_manifest
    from bench.study.runner import run_manifest

    m = load_manifest(manifest)
    if name in {b.name for b in m.backbones}:
        raise UserError(f"--name {name}: the manifest already has a backbone of that name; choose another")
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint}: not found")
    try:
        spec = ImportSpec(file=checkpoint, format=fmt, key_map=Path(key_map).resolve() if key_map else None,
                          allow_partial=allow_partial, normalization=normalization)
    except ValidationError as exc:
        raise UserError(f"--normalization: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    try:
        backbone = Backbone(name=name, arch=arch, import_=spec)
    except ValidationError as exc:
        raise UserError(f"--name {name} --arch {arch}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") \
            from None
    return run_manifest(manifest, out=out, workers=workers, progress=progress, extra_backbones=[backbone],
                        only={name}, plots=plots)
