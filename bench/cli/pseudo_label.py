"""`bench pseudo-label`: a teacher's depth predictions for `depth_distill` (pretrain.pseudo_label)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import existing_dir, key_values, out_parent, progress_parent, root_parent


def add_parser(sub) -> None:
    from pretrain.sources import list_sources

    pl = sub.add_parser("pseudo-label", help="write a teacher's depth predictions for depth_distill",
                        parents=[root_parent(), out_parent(), progress_parent()],
                        description="Runs a teacher over every video frame of a pre-training dataset and writes "
                        "OUT/<item>.npy (relative disparity) and OUT/pseudo_labels.json. An interrupted run "
                        "resumes; a finished one with the same teacher is kept. Use the folder with "
                        "`bench pretrain --method depth_distill -o pseudo_labels=OUT`.")
    pl.add_argument("--teacher", required=True, help="a harness depth checkpoint (.safetensors with a depth "
                    "decoder), or a local Depth Anything model folder in Hugging Face format")
    pl.add_argument("--dataset", default="synth", choices=list_sources(), help="pre-training data (default: synth)")
    pl.add_argument("--resize", help="write labels at this HxW (default: the dataset's training size)")
    pl.add_argument("--short-side", type=int, default=518, help="Depth Anything input short side, rounded to a "
                    "multiple of 14 (default: 518)")
    pl.add_argument("--batch-size", type=int, default=4, help="frames per forward pass (default: 4)")
    pl.add_argument("--source-option", action="append", metavar="KEY=VALUE", help="a dataset reader option; repeatable")
    pl.set_defaults(fn=main)


def main(args) -> int:
    from bench.core.sizes import parse_size
    from pretrain.pseudo_label import run_pseudo_label

    root = existing_dir(args.root)
    resize = parse_size(args.resize, "--resize", allow_short_side=False) if args.resize else None
    print(run_pseudo_label(args.teacher, args.dataset, root, Path(args.out), batch_size=args.batch_size,
                           resize=resize, source_options=key_values(args.source_option, "--source-option"),
                           short_side=args.short_side, progress=args.progress))
    return 0
