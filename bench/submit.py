"""Outside backbones: foreign checkpoints converted once, then run like any other backbone.

- `import_backbone` converts a file (any format `bench.importers` reads) into a harness checkpoint
  under `RESULTS/imports/<name>/`, with `import.json` (format, key report, source hashes). It is
  keyed by a fingerprint of the source's contents and the import settings, so a re-run converts
  nothing and a changed file converts again (and re-runs its cells, whose checkpoint hash moved).
- `bench submit` (`submit`) adds one such backbone to an existing manifest's matrix: it runs
  exactly that backbone's cells, re-uses every record already in the results folder, and
  rewrites the leaderboard and plots with the new rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.errors import UserError
from bench.records import fingerprint, write_json_atomic

IMPORT_REPORT = "import.json"


def source_digest(path: Path) -> dict:
    """sha256 per file of a source (a file, or every file of a folder such as monodepth2's)."""
    from bench.checkpoint import file_sha256

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"{path}: no files to import")
    return {(p.name if p == path else p.relative_to(path).as_posix()): file_sha256(p) for p in files}


def import_backbone(name: str, arch: str, spec, out_dir: Path, *, log=print) -> Path:
    """The harness checkpoint of an imported backbone, converted now unless it is current."""
    from bench.importers import convert

    folder = Path(out_dir) / "imports" / name
    settings = {"arch": arch, "format": spec.format, "allow_partial": spec.allow_partial,
                "source": source_digest(spec.file),
                "key_map": source_digest(spec.key_map) if spec.key_map else None}
    key = fingerprint(settings)
    target = folder / "checkpoint.safetensors"
    report_path = folder / IMPORT_REPORT
    if target.is_file() and report_path.is_file():
        try:
            if json.loads(report_path.read_text()).get("fingerprint") == key:
                return target
        except json.JSONDecodeError:
            pass  # a torn report: convert again
    created = [p for p in (folder.parent, folder) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _, report = convert(spec.file, arch, target, fmt=spec.format, key_map=spec.key_map,
                            allow_partial=spec.allow_partial, name=name)
    except BaseException:
        for p in reversed(created):  # a refused import leaves nothing behind
            shutil.rmtree(p, ignore_errors=True)
        raise
    write_json_atomic(report_path, {"fingerprint": key, "name": name, **settings, "report": report})
    log(f"imported {name}: {report.get('format')} -> {target}")
    return target


def submit(*, name: str, arch: str, checkpoint: Path, manifest: Path, fmt: str = "auto", key_map: Path | None = None,
           allow_partial: bool = False, out: Path | None = None, workers: int | None = None,
           progress: bool = True) -> int:
    """Convert `checkpoint`, then run the manifest's cells for this one backbone and refresh the
    reports. Nothing is added to the results when the checkpoint is refused."""
    from pydantic import ValidationError

    from bench.manifest import Backbone, ImportSpec, load_manifest
    from bench.runner import run_manifest

    m = load_manifest(manifest)
    if name in {b.name for b in m.backbones}:
        raise UserError(f"--name {name}: the manifest already has a backbone of that name; choose another")
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint}: not found")
    spec = ImportSpec(file=checkpoint, format=fmt, key_map=Path(key_map).resolve() if key_map else None,
                      allow_partial=allow_partial)
    try:
        backbone = Backbone(name=name, arch=arch, import_=spec)
    except ValidationError as exc:
        raise UserError(f"--name {name} --arch {arch}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") \
            from None
    return run_manifest(manifest, out=out, workers=workers, progress=progress, extra_backbones=[backbone],
                        only={name})
