"""`bench convert`: a foreign checkpoint into a harness .safetensors (bench.importers)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import import_parent
from bench.core.errors import UserError


def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="convert a foreign checkpoint into a harness .safetensors",
                        parents=[import_parent()],
                        description="Reads a checkpoint safely (pickles only with weights_only=True), checks key "
                        "coverage, finite weights and a forward pass, and writes a harness checkpoint with its "
                        "provenance. Use it for pickles that need more than plain tensors: convert them where you "
                        "trust them, then submit the safetensors.")
    # --checkpoint, as `bench submit` and `bench transfer` spell it; the positional is the older spelling.
    cv.add_argument("--checkpoint", help="weights file, or a monodepth2 folder")
    cv.add_argument("old_checkpoint", nargs="?", metavar="CHECKPOINT", help="the same as --checkpoint (older spelling)")
    cv.add_argument("--arch", required=True, help="registered backbone the weights are for (`bench list archs`)")
    cv.add_argument("--out", required=True, help="output .safetensors file")
    cv.set_defaults(fn=main)


def main(args) -> int:
    from bench.importers import convert

    checkpoint = _checkpoint(args)
    key_map = Path(args.key_map) if args.key_map else None
    if key_map is not None and not key_map.is_file():
        raise UserError(f"--key-map {key_map}: file not found")
    path, report = convert(Path(checkpoint), args.arch, Path(args.out), fmt=args.format, key_map=key_map,
                           allow_partial=args.allow_partial, name=Path(args.out).stem,
                           normalization=args.normalization)
    cov = report.get("coverage") or report
    print(f"{report.get('format')}: {cov.get('loaded')}/{cov.get('total')} encoder tensors, "
          f"{len(report.get('dropped') or [])} dropped, decoder {'yes' if report.get('decoder') else 'no'} -> {path}")
    return 0


def _checkpoint(args) -> str:
    given = {c for c in (args.checkpoint, args.old_checkpoint) if c}
    if not given:
        raise UserError("bench convert needs --checkpoint FILE_OR_FOLDER")
    if len(given) > 1:
        raise UserError(f"two checkpoints given ({' and '.join(sorted(given))}); pass one, with --checkpoint")
    return given.pop()
