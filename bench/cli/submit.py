"""`bench submit`: one outside checkpoint joins a manifest's matrix and leaderboard (bench.study.submit)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import import_parent, plots_parent, positive_int, progress_parent


def add_parser(sub) -> None:
    sb = sub.add_parser("submit", help="add an outside checkpoint to a manifest's matrix and its leaderboard",
                        parents=[import_parent(), progress_parent(), plots_parent()],
                        description="Validate and convert a checkpoint, run exactly the manifest's cells for it "
                        "(every record already there is re-used), and refresh the leaderboard and plots. A refused "
                        "checkpoint is one line and adds nothing to the results.")
    sb.add_argument("--name", required=True, help="backbone name in the leaderboard (new to the manifest)")
    which = sb.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="registered backbone the weights are for (`bench list archs`)")
    which.add_argument("--entry", metavar="MODULE:FUNCTION", help="your own encoder: FUNCTION() in the importable "
                       "MODULE returns an nn.Module whose forward gives a list of feature maps")
    sb.add_argument("--checkpoint", required=True, help="weights file, or a monodepth2 folder")
    sb.add_argument("--manifest", required=True, help="the manifest whose matrix the backbone joins")
    sb.add_argument("--out", help="results folder (default: the manifest's)")
    sb.add_argument("--workers", type=positive_int, help="parallel processes (default: the manifest's)")
    sb.set_defaults(fn=main)


def main(args) -> int:
    from bench.study.submit import submit

    arch = args.arch or f"entry:{args.entry}"
    return submit(name=args.name, arch=arch, checkpoint=Path(args.checkpoint), manifest=Path(args.manifest),
                  fmt=args.format, key_map=Path(args.key_map) if args.key_map else None,
                  allow_partial=args.allow_partial, normalization=args.normalization, out=args.out,
                  workers=args.workers, progress=args.progress, plots=args.plots)
