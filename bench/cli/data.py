"""`bench data synth` (render the generated world) and `bench data inspect` (count a split's pixels)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cli.common import classes_parent, root_parent
from bench.core.errors import UserError


def add_parser(sub) -> None:
    from transfer.datasets import list_datasets

    d = sub.add_parser("data", help="generate or inspect data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND", help="synth or inspect")
    s = dsub.add_parser("synth", help="render the procedural driving world", description=
                        "RGB (left/right), metric depth, forward flow, semantic labels, poses and object crops.")
    s.add_argument("--out", required=True, help="new output folder")
    s.add_argument("--sequences", type=int, default=4, help="driving sequences (default: 4; at least 2)")
    s.add_argument("--frames", type=int, default=10, help="frames per sequence (default: 10)")
    s.add_argument("--height", type=int, default=64, help="image height in pixels (default: 64)")
    s.add_argument("--width", type=int, default=192, help="image width in pixels (default: 192)")
    s.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives identical files")
    s.add_argument("--crops-per-class", type=int, default=40, help="object-centric crops per class (default: 40)")
    s.set_defaults(fn=synth)
    i = dsub.add_parser("inspect", help="count the pixels of each class in one split of a dataset",
                        parents=[root_parent(), classes_parent()], description=
                        "Reads every image and label of SPLIT at native resolution and prints one JSON object: "
                        "dataset, split, num_images, num_classes, class_names, class_pixels, ignore_pixels.")
    i.add_argument("name", choices=list_datasets(), help="dataset")
    i.add_argument("--split", required=True, help="official split name (e.g. cityscapes: train or val)")
    i.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress on stderr, as every verb's (default: on)")
    i.set_defaults(fn=inspect)


def synth(args) -> int:
    from bench.core.synth import render_world

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new --out (worlds are never overwritten)")
    path = render_world(out, sequences=args.sequences, frames=args.frames, height=args.height,
                        width=args.width, seed=args.seed, crops_per_class=args.crops_per_class)
    print(path)
    return 0


def inspect(args) -> int:
    from transfer.datasets import open_dataset
    from transfer.datasets.inspection import inspect_split

    dataset = open_dataset(args.name, Path(args.root), classes=args.classes)
    print(json.dumps(inspect_split(dataset, args.split, progress=args.progress)))
    return 0
