"""Imported backbones, converted once per results folder.

`import_backbone` converts a file (any format `bench.importers` reads) into a harness checkpoint
under `RESULTS/imports/<name>/`, with `import.json` (format, key report, source hashes). It is
keyed by a fingerprint of the source's contents and the import settings, so a re-run converts
nothing and a changed file converts again (and re-runs its cells, whose checkpoint hash moved).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.core import results_folder as rf
from bench.core.checkpoint import file_sha256
from bench.core.errors import UserError
from bench.core.models.backbones import parse_normalization
from bench.core.records import fingerprint, write_json_atomic
from bench.importers.validate import convert

# The conversion rules' version, in every import's key: a conversion that would now write another
# checkpoint from the same file (2: the monodepth2 family records its own 0.45/0.225 input
# normalisation instead of ImageNet's) converts again.
CONVERSION_RULES = 2


def source_digest(path: Path) -> dict:
    """sha256 per file of a source (a file, or every file of a folder such as monodepth2's)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"{path}: no files to import")
    return {(p.name if p == path else p.relative_to(path).as_posix()): file_sha256(p) for p in files}


def import_backbone(name: str, arch: str, spec, out_dir: Path, *, log=print) -> Path:
    """The harness checkpoint of an imported backbone, converted now unless it is current.
    `spec` has the fields of a manifest's `import:` entry (file, format, key_map, allow_partial,
    normalization)."""
    folder = rf.import_folder(out_dir, name)
    settings = {"arch": arch, "format": spec.format, "allow_partial": spec.allow_partial,
                "source": source_digest(spec.file),
                "key_map": source_digest(spec.key_map) if spec.key_map else None,
                "normalization": parse_normalization(spec.normalization, "import.normalization"),
                "rules": CONVERSION_RULES}
    key = fingerprint(settings)
    target = folder / rf.CHECKPOINT
    report_path = folder / rf.IMPORT_REPORT
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
                            allow_partial=spec.allow_partial, name=name, normalization=settings["normalization"])
    except BaseException:
        for p in reversed(created):  # a refused import leaves nothing behind
            shutil.rmtree(p, ignore_errors=True)
        raise
    write_json_atomic(report_path, {"fingerprint": key, "name": name, **settings, "report": report})
    log(f"imported {name}: {report.get('format')} -> {target}")
    return target
