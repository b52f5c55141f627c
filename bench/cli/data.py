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
    c = s.add_argument_group("controls", "the world's controls (docs/datasets.md); the defaults give today's world")
    c.add_argument("--materials-per-class", type=int, default=1, help="materials each class draws from (default: 1)")
    c.add_argument("--shared-materials", type=float, default=0.0, metavar="P",
                   help="chance that an instance takes a material of the bank shared by all classes (default: 0)")
    c.add_argument("--instance-jitter", type=float, default=0.0, metavar="J",
                   help="per-instance colour and texture-scale jitter, 0..1 (default: 0)")
    c.add_argument("--illumination", type=float, default=0.0, metavar="S",
                   help="per-sequence sun direction, strength and tint variation, 0..1 (default: 0: fixed sun)")
    c.add_argument("--shadows", action="store_true", help="cast shadows from the sun")
    c.add_argument("--object-scale", choices=("default", "near", "far", "wide"), default="default",
                   help="object sizes and building set-back (default: default)")
    c.add_argument("--pretrain-sequences", type=int, default=0,
                   help="extra sequences for pre-training only, never labelled or evaluated (default: 0)")
    c.add_argument("--pretrain-frames", type=int, default=None, help="frames of each (default: --frames)")
    c.add_argument("--ood-crops-per-class", type=int, default=0,
                   help="out-of-domain object-centric crops per class, under crops_ood/ (default: 0: none)")
    c.add_argument("--ood-background", choices=("clutter", "plain"), default="clutter",
                   help="their background (default: clutter)")
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
    from pydantic import ValidationError

    from bench.core.synth.world import SynthWorld

    fields = {k: getattr(args, k) for k in SynthWorld.model_fields}
    try:  # the manifest's bounds, so the flag and the data.synth key accept the same values
        world = SynthWorld(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    path = render_world(out, **world.model_dump())
    print(path)
    return 0


def inspect(args) -> int:
    from transfer.datasets import open_dataset
    from transfer.datasets.inspection import inspect_split

    dataset = open_dataset(args.name, Path(args.root), classes=args.classes)
    print(json.dumps(inspect_split(dataset, args.split, progress=args.progress)))
    return 0
