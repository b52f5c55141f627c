"""`bench cka`: layer-wise CKA between two encoders, or one with itself (bench.report.layer_cka)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import classes_parent, eval_resize_parent, out_parent, root_parent
from bench.core.errors import UserError


def add_parser(sub) -> None:
    from transfer.datasets import list_datasets

    c = sub.add_parser("cka", help="layer-wise CKA between two encoders (or one with itself) on a dataset",
                       parents=[root_parent(), classes_parent(), eval_resize_parent(), out_parent()],
                       description="Writes OUT/cka.csv and the heatmap OUT/cka.png/.svg. --a/--b take a checkpoint "
                       "file, a pre-training folder (checkpoint.safetensors) or a transfer cell folder kept with "
                       "keep_weights (final.safetensors): pre-trained vs fine-tuned shows on its diagonal which "
                       "layers fine-tuning rewrote; --within compares one network's layers with each other.")
    c.add_argument("--a", required=True, help="first network: checkpoint file or run/pre-training folder")
    c.add_argument("--b", help="second network (omit with --within)")
    c.add_argument("--within", action="store_true", help="one network against itself (MeSa's layer 0 vs all)")
    c.add_argument("--dataset", default="synth", choices=list_datasets(), help="images to compare on (default: synth)")
    c.add_argument("--layers", default="stages", help="preset (stages, blocks) or comma-separated module names")
    c.add_argument("--images", type=int, default=64, help="evaluation images to use (default: 64)")
    c.add_argument("--batch-size", type=int, default=16, help="images per batch, at least 4 (default: 16)")
    c.add_argument("--reduce", default="mean", choices=["mean", "flatten", "subsample"],
                   help="spatial reduction of feature maps (default: mean = global average pooling)")
    c.set_defaults(fn=main)


def main(args) -> int:
    import pandas as pd

    from bench.report.layer_cka import dataset_batches, layer_cka, load_encoder, write_cka
    from transfer.data import dataset_settings

    if (args.b is None) != args.within:
        raise UserError("give --b (two networks) or --within (one network against itself), not both or neither")
    settings = dataset_settings(args.dataset, classes=args.classes, eval_resize=args.eval_resize)
    layers = args.layers if "," not in args.layers else [n.strip() for n in args.layers.split(",") if n.strip()]
    a = load_encoder(args.a)
    b = None if args.within else load_encoder(args.b)
    matrix, names_a, names_b = layer_cka(a, b, dataset_batches(settings, Path(args.root), args.images, args.batch_size),
                                         layers, reduce=args.reduce)
    label_a, label_b = Path(args.a).stem, Path(args.b).stem if args.b else Path(args.a).stem
    title = f"CKA on {args.dataset}: {label_a} vs {label_b}" + (" (within)" if args.within else "")
    paths = write_cka(matrix, names_a, names_b, Path(args.out) / "cka", title, label_a, label_b)
    print(pd.DataFrame(matrix, index=names_a, columns=names_b).round(3).to_string())
    print("\n" + "\n".join(str(p) for p in paths))
    return 0
