"""The `bench` command line. Each verb is a thin layer over a library function.

User mistakes (`UserError`) print one line, `error: ...`, and exit with status 2; there is no
traceback for them. Set BENCH_DEBUG=1 to see one anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.core.version import __version__
from bench.core.errors import UserError
from transfer.datasets import list_datasets


def _cmd_run(args) -> int:
    from bench.runner import run_manifest

    slurm = {"partition": args.slurm_partition, "account": args.slurm_account, "time_min": args.slurm_time,
             "wait": False if args.no_wait else None}
    overrides = {"kind": args.executor, "ray_address": args.ray_address, "slurm": slurm}
    return run_manifest(args.manifest, out=args.out, workers=args.workers, dry_run=args.dry_run,
                        as_json=args.json, progress=not args.no_progress, executor_overrides=overrides)


def _cmd_status(args) -> int:
    import json

    from bench.status import format_status, matrix_status

    summary = matrix_status(Path(args.results_dir))
    print(json.dumps(summary, indent=2) if args.json else format_status(summary, verbose=args.all))
    return 0


def _cmd_submit(args) -> int:
    from bench.submit import submit

    arch = args.arch or f"entry:{args.entry}"
    return submit(name=args.name, arch=arch, checkpoint=Path(args.checkpoint), manifest=Path(args.manifest),
                  fmt=args.format, key_map=Path(args.key_map) if args.key_map else None,
                  allow_partial=args.allow_partial, out=args.out, workers=args.workers,
                  progress=not args.no_progress)


def _cmd_convert(args) -> int:
    from bench.importers import convert

    key_map = Path(args.key_map) if args.key_map else None
    if key_map is not None and not key_map.is_file():
        raise UserError(f"--key-map {key_map}: file not found")
    path, report = convert(Path(args.checkpoint), args.arch, Path(args.out), fmt=args.format, key_map=key_map,
                           allow_partial=args.allow_partial, name=Path(args.out).stem)
    cov = report.get("coverage") or report
    print(f"{report.get('format')}: {cov.get('loaded')}/{cov.get('total')} encoder tensors, "
          f"{len(report.get('dropped') or [])} dropped, decoder {'yes' if report.get('decoder') else 'no'} -> {path}")
    return 0


def _cmd_data_synth(args) -> int:
    from bench.core.synth import render_world

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new --out (worlds are never overwritten)")
    path = render_world(out, sequences=args.sequences, frames=args.frames, height=args.height,
                        width=args.width, seed=args.seed, crops_per_class=args.crops_per_class)
    print(path)
    return 0


def _key_values(pairs: list[str] | None, flag: str) -> dict:
    """`-o KEY=VALUE` pairs as a dict, each value read as YAML (so 0.9, true and [1, 2] are typed)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _cmd_pretrain(args) -> int:
    from bench.core.models.backbones import backbone_spec
    from pretrain.api import LAST_GOOD_NAME, run_pretrain
    from pretrain.loop import Diverged

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {root}: folder not found")
    backbone_spec(args.arch)  # unknown arch: one line before any work
    config = {
        "name": Path(args.out).name, "method": args.method, "arch": args.arch, "dataset": args.dataset,
        "root": str(root), "data_id": str(root), "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps, "seed": args.seed,
        "state_every": args.state_every, "max_bad_steps": args.max_bad_steps, "grad_clip": args.grad_clip,
        "resize": args.resize, "crop": args.crop,
        "init": str(Path(args.init).resolve()) if args.init else None,
        "options": _key_values(args.option, "--option"),
        "source_options": _key_values(args.source_option, "--source-option"),
    }
    try:
        print(run_pretrain(config, Path(args.out), progress=not args.no_progress))
    except Diverged as exc:
        print(f"error: diverged: {exc}; the last good weights are in {Path(args.out) / LAST_GOOD_NAME}",
              file=sys.stderr)
        return 3
    return 0


def _cmd_pseudo_label(args) -> int:
    from bench.core.sizes import parse_size
    from pretrain.pseudo_label import run_pseudo_label

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {root}: folder not found")
    resize = parse_size(args.resize, "--resize", allow_short_side=False) if args.resize else None
    print(run_pseudo_label(args.teacher, args.dataset, root, Path(args.out), batch_size=args.batch_size,
                           resize=resize, source_options=_key_values(args.source_option, "--source-option"),
                           short_side=args.short_side, progress=not args.no_progress))
    return 0


def _pretrain_epilog() -> str:
    from pretrain.methods import list_methods, method_class, options_help
    from pretrain.sources import list_sources

    lines = ["method options (-o KEY=VALUE):"]
    for name in list_methods():
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in options_help(method_class(name))] or ["    (none)"]
    lines.append(f"datasets: {', '.join(list_sources())} (reader options: README, 'Pre-training data')")
    return "\n".join(lines)


def _transfer_epilog() -> str:
    from transfer.decoders import decoder_class, list_decoders, options_help

    lines = ["decoder options (--decoder-option KEY=VALUE):"]
    for name in list_decoders():
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in options_help(decoder_class(name))] or ["    (none)"]
    return "\n".join(lines)


def _cmd_transfer(args) -> int:
    from bench.core.checkpoint import file_sha256, read_checkpoint_meta
    from bench.matrix import Cell, cell_config
    from transfer.data import dataset_settings
    from transfer.decoders import split_decoder_name
    from transfer.protocols import decoder_for, resolve_preset
    from transfer.train import run_transfer

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {root}: folder not found")
    if args.checkpoint == "none":
        if not args.arch:
            raise UserError("--checkpoint none (random init) needs --arch")
        arch, method, ckpt, sha = args.arch, "none", None, None
    else:
        meta = read_checkpoint_meta(args.checkpoint)
        arch, method = meta["arch"], meta["method"]
        ckpt, sha = str(Path(args.checkpoint).resolve()), file_sha256(args.checkpoint)
    decoder = decoder_for(args.protocol, args.decoder)
    decoder_options = _key_values(args.decoder_option, "--decoder-option")
    prefix, file_arg = split_decoder_name(decoder)
    if file_arg is not None:  # `mmseg:CONFIG` names a file relative to the cwd
        decoder_options["spec"] = str(Path(file_arg).resolve())
    flags = {"optimizer": args.optimizer, "lr": args.lr, "encoder_lr_mult": args.encoder_lr_mult,
             "weight_decay": args.weight_decay, "momentum": args.momentum, "warmup_steps": args.warmup_steps,
             "poly_power": args.poly_power}
    preset = resolve_preset(args.protocol, decoder, {args.protocol: flags})
    cell = Cell(args.name or (Path(args.checkpoint).parent.name if ckpt else "random"), method, arch,
                args.dataset, args.protocol, decoder, args.train_size, args.seed)
    settings = dataset_settings(args.dataset, classes=args.classes, train_split=args.train_split,
                                eval_split=args.eval_split, resize=args.resize, crop=args.crop,
                                eval_resize=args.eval_resize)
    config = cell_config(cell, data_id=str(root), dataset=settings, dataset_root=root, checkpoint=ckpt,
                         checkpoint_sha256=sha, init=args.init, steps=args.steps, batch_size=args.batch_size,
                         eval_every=args.eval_every or args.steps, optim=preset.model_dump(),
                         decoder_options=decoder_options, feature_cache=not args.no_feature_cache,
                         feature_cache_views=args.feature_cache_views, augment=not args.no_augment,
                         processes=args.processes)
    config["device"] = args.device
    config["state_every"] = args.state_every
    record = run_transfer(config, Path(args.out), progress=not args.no_progress)
    m = record["metrics"]
    print(f"{record['status']}: mIoU {100 * m['miou']:.2f} pixel acc {100 * m['pixel_acc']:.2f} -> "
          f"{Path(args.out) / 'record.json'}" if m else f"{record['status']}: {record['error']}")
    return 0 if record["status"] == "ok" else 1


def _cmd_data_inspect(args) -> int:
    from transfer.datasets import open_dataset
    from transfer.datasets.inspection import inspect_split

    dataset = open_dataset(args.name, Path(args.root), classes=args.classes)
    print(json.dumps(inspect_split(dataset, args.split, progress=args.progress)))
    return 0


def _cmd_cka(args) -> int:
    import pandas as pd

    from bench.layer_cka import dataset_batches, layer_cka, load_encoder, write_cka
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


def _cmd_aggregate(args) -> int:
    from bench.aggregate import where, write_reports

    table = write_reports(Path(args.results_dir), baseline=args.baseline)
    print(table["markdown"])
    print(f"\n{where(table)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="depth2seg-bench: pre-train encoders, transfer them to "
                                "semantic segmentation, and compare the results.")
    p.add_argument("--version", action="version", version=f"depth2seg-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a benchmark matrix from a manifest", description=
                       "Render data, pre-train, transfer every matrix cell, and write the leaderboard. "
                       "Finished cells (same config fingerprint) are skipped, so re-running resumes.")
    r.add_argument("manifest", help="manifest YAML file (see README, 'Manifest format')")
    r.add_argument("--out", help="results folder (default: the manifest's `out`, else results/<name>)")
    r.add_argument("--workers", type=int, help="cells run in this many parallel processes (default: manifest's `workers`)")
    r.add_argument("--dry-run", action="store_true", help="list the cells and exit; nothing is written")
    r.add_argument("--json", action="store_true", help="with --dry-run: print the cells as a JSON list")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    ex = r.add_argument_group("executor (default: the manifest's `executor:` section; README, 'Scaling out')")
    ex.add_argument("--executor", choices=["local", "ray", "slurm"], help="where jobs run")
    ex.add_argument("--ray-address", help="ray: auto or HOST:PORT joins a running cluster (default: a local Ray)")
    ex.add_argument("--slurm-partition", help="slurm: partition")
    ex.add_argument("--slurm-account", help="slurm: account")
    ex.add_argument("--slurm-time", type=int, metavar="MINUTES", help="slurm: time limit per job")
    ex.add_argument("--no-wait", action="store_true", help="slurm: submit and exit; `bench status` and a later "
                    "`bench run` pick up the results")
    r.set_defaults(fn=_cmd_run)

    def import_options(p) -> None:
        p.add_argument("--format", default="auto", help="checkpoint layout: auto (detected), harness, torchvision, "
                       "timm, monodepth2, depthtosemantic, nimbled, moco, dino, mae, depth_anything "
                       "(README, 'Adding a backbone')")
        p.add_argument("--key-map", help="YAML/JSON list of [regex, replacement] renames applied after unwrapping; "
                       "a null replacement drops the key")
        p.add_argument("--allow-partial", action="store_true", help="accept fewer than all encoder tensors "
                       "(recorded with every run of this backbone)")

    st = sub.add_parser("status", help="done / running / failed / skipped / pending cells of a results folder",
                        description="Summarises a matrix from its results folder alone (records, running markers, "
                        "in-cell states, Slurm job states): works while `bench run` runs, or after a Slurm driver "
                        "exited.")
    st.add_argument("results_dir", help="results folder of a `bench run`")
    st.add_argument("--all", action="store_true", help="list every cell, not only the ones needing attention")
    st.add_argument("--json", action="store_true", help="print the summary as JSON")
    st.set_defaults(fn=_cmd_status)

    sb = sub.add_parser("submit", help="add an outside checkpoint to a manifest's matrix and its leaderboard",
                        description="Validate and convert a checkpoint, run exactly the manifest's cells for it "
                        "(every record already there is re-used), and refresh the leaderboard and plots. A refused "
                        "checkpoint is one line and adds nothing to the results.")
    sb.add_argument("--name", required=True, help="backbone name in the leaderboard (new to the manifest)")
    which = sb.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="registered backbone the weights are for (README, 'Adding a backbone')")
    which.add_argument("--entry", metavar="MODULE:FUNCTION", help="your own encoder: FUNCTION() in the importable "
                       "MODULE returns an nn.Module whose forward gives a list of feature maps")
    sb.add_argument("--checkpoint", required=True, help="weights file, or a monodepth2 folder")
    import_options(sb)
    sb.add_argument("--manifest", required=True, help="the manifest whose matrix the backbone joins")
    sb.add_argument("--out", help="results folder (default: the manifest's)")
    sb.add_argument("--workers", type=int, help="parallel processes (default: the manifest's)")
    sb.add_argument("--no-progress", action="store_true", help="no progress bars")
    sb.set_defaults(fn=_cmd_submit)

    cv = sub.add_parser("convert", help="convert a foreign checkpoint into a harness .safetensors",
                        description="Reads a checkpoint safely (pickles only with weights_only=True), checks key "
                        "coverage, finite weights and a forward pass, and writes a harness checkpoint with its "
                        "provenance. Use it for pickles that need more than plain tensors: convert them where you "
                        "trust them, then submit the safetensors.")
    cv.add_argument("checkpoint", help="weights file, or a monodepth2 folder")
    cv.add_argument("--arch", required=True, help="registered backbone the weights are for")
    import_options(cv)
    cv.add_argument("--out", required=True, help="output .safetensors file")
    cv.set_defaults(fn=_cmd_convert)

    from pretrain.methods import list_methods
    from pretrain.sources import list_sources

    pt = sub.add_parser("pretrain", help="pre-train one encoder and write a checkpoint", description=
                        "Writes OUT/checkpoint.safetensors and OUT/history.csv; an interrupted run resumes "
                        "from OUT/state.pt, and a finished one with the same config is skipped. A run whose "
                        "loss or gradient stays non-finite for --max-bad-steps steps stops (exit 3) and keeps "
                        "its last good weights in OUT/last_good.safetensors.",
                        epilog=_pretrain_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("--method", required=True, choices=list_methods(), help="pre-training method")
    pt.add_argument("--arch", required=True, help="registered backbone name, e.g. resnet18")
    pt.add_argument("--dataset", default="synth", choices=list_sources(), help="pre-training data (default: synth)")
    pt.add_argument("--root", required=True, help="dataset folder (for synth: a folder written by `bench data synth`)")
    pt.add_argument("--steps", type=int, required=True, help="optimisation steps")
    pt.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    pt.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    pt.add_argument("--warmup-steps", type=int, help="linear warm-up steps before the cosine decay (default: 5%% of --steps)")
    pt.add_argument("--seed", type=int, default=0, help="seed for initialisation, batches and augmentation")
    pt.add_argument("--init", help="start from these weights: a harness checkpoint, or a torchvision/timm "
                    "state dict of the same arch (e.g. ImageNet weights); default: from scratch")
    pt.add_argument("--resize", help="training size HxW every item is resized to (default: the dataset's)")
    pt.add_argument("--crop", help="train on random HxW crops of the resized items (e.g. 256x256: 'Depth-cropped')")
    pt.add_argument("--state-every", type=int, default=100, help="snapshot for resume every N steps (default: 100)")
    pt.add_argument("--max-bad-steps", type=int, default=20, help="stop as diverged after this many consecutive "
                    "non-finite steps (default: 20)")
    pt.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value (default: no clipping)")
    pt.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="a method option (listed below); repeatable")
    pt.add_argument("--source-option", action="append", metavar="KEY=VALUE", help="a dataset reader option "
                    "(README, 'Pre-training data'); repeatable")
    pt.add_argument("--out", required=True, help="output folder")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.set_defaults(fn=_cmd_pretrain)

    pl = sub.add_parser("pseudo-label", help="write a teacher's depth predictions for depth_distill",
                        description="Runs a teacher over every video frame of a pre-training dataset and writes "
                        "OUT/<item>.npy (relative disparity) and OUT/pseudo_labels.json. An interrupted run "
                        "resumes; a finished one with the same teacher is kept. Use the folder with "
                        "`bench pretrain --method depth_distill -o pseudo_labels=OUT`.")
    pl.add_argument("--teacher", required=True, help="a harness depth checkpoint (.safetensors with a depth "
                    "decoder), or a local Depth Anything model folder in Hugging Face format")
    pl.add_argument("--dataset", default="synth", choices=list_sources(), help="pre-training data (default: synth)")
    pl.add_argument("--root", required=True, help="dataset folder")
    pl.add_argument("--resize", help="write labels at this HxW (default: the dataset's training size)")
    pl.add_argument("--short-side", type=int, default=518, help="Depth Anything input short side, rounded to a "
                    "multiple of 14 (default: 518)")
    pl.add_argument("--batch-size", type=int, default=4, help="frames per forward pass (default: 4)")
    pl.add_argument("--source-option", action="append", metavar="KEY=VALUE", help="a dataset reader option; repeatable")
    pl.add_argument("--out", required=True, help="output folder")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar")
    pl.set_defaults(fn=_cmd_pseudo_label)

    t = sub.add_parser("transfer", help="train and evaluate one segmentation transfer cell", description=
                       "Fine-tunes or probes a checkpoint on a seeded few-shot split and writes OUT/record.json.",
                       epilog=_transfer_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--checkpoint", required=True, help="harness checkpoint (.safetensors), or 'none' for random init")
    t.add_argument("--arch", help="backbone for --checkpoint none")
    t.add_argument("--name", help="backbone name in the record (default: the checkpoint's folder name)")
    t.add_argument("--dataset", default="synth", choices=list_datasets(), help="segmentation dataset (default: synth)")
    t.add_argument("--root", required=True, help="dataset folder (README, 'Datasets', gives each layout)")
    t.add_argument("--classes", type=int, help="class set where a dataset has several (nyuv2: 40 or 13)")
    t.add_argument("--train-split", help="official split to draw the few-shot subset from (default: the dataset's)")
    t.add_argument("--eval-split", help="official split to evaluate on (default: the dataset's)")
    t.add_argument("--resize", default="default", help="training resize: HxW, a short side, or native "
                   "(default: the dataset's)")
    t.add_argument("--crop", default="default", help="random training crop HxW, or none (default: the dataset's)")
    t.add_argument("--eval-resize", default="default", help="evaluation resize: HxW, a short side, or native; "
                   "metrics are always on native-size labels (default: the dataset's)")
    t.add_argument("--protocol", required=True, choices=["full", "frozen", "linear"], help="what trains (see README)")
    t.add_argument("--decoder", default="monodepth2", help="monodepth2, deeplabv3, mask2former, linear, or "
                   "mmseg:CONFIG.py (the [mmseg] extra); protocol linear always uses linear (default: monodepth2)")
    t.add_argument("--decoder-option", action="append", metavar="KEY=VALUE",
                   help="a decoder option (README, 'Decoders'; e.g. output_stride=8 for deeplabv3); repeatable")
    t.add_argument("--init", default="auto", choices=["auto", "encoder+decoder", "encoder"], help="reuse the checkpoint's decoder (auto: when it has one)")
    t.add_argument("--train-size", type=int, default=16, help="labelled training images, drawn with --seed (default: 16)")
    t.add_argument("--steps", type=int, default=300, help="optimisation steps (default: 300)")
    t.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    preset = t.add_argument_group("optimiser (default: the protocol/decoder preset, README 'Protocols')")
    preset.add_argument("--optimizer", choices=["adamw", "sgd"])
    preset.add_argument("--lr", type=float, help="peak learning rate of the decoder")
    preset.add_argument("--encoder-lr-mult", type=float, help="encoder lr = lr x this (protocol full)")
    preset.add_argument("--weight-decay", type=float)
    preset.add_argument("--momentum", type=float, help="SGD momentum")
    preset.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of the steps)")
    preset.add_argument("--poly-power", type=float, help="poly decay exponent (default: 0.9)")
    t.add_argument("--no-feature-cache", action="store_true", help="frozen/linear: run the frozen encoder on "
                   "every step instead of caching its features")
    t.add_argument("--feature-cache-views", type=int, default=8, help="cached crops per image for datasets with "
                   "a random crop (default: 8)")
    t.add_argument("--no-augment", action="store_true", help="no flips, centre crop (exactly reproducible probes)")
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    t.add_argument("--processes", type=int, default=1, help="data-parallel (DDP) ranks for this cell: one per GPU, "
                   "or gloo processes on CPU (default: 1); each rank trains on a slice of every batch")
    t.add_argument("--state-every", type=int, default=100, help="save a resumable state every N steps; a re-run "
                   "with the same options resumes from it (0: never; default: 100)")
    t.add_argument("--eval-every", type=int, help="evaluate every K steps for the learning curve (default: only at the end)")
    t.add_argument("--seed", type=int, default=0, help="seed for the few-shot split, initialisation and batches")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=_cmd_transfer)

    a = sub.add_parser("aggregate", help="rebuild leaderboards, plots and the report from run records", description=
                       "Reads RESULTS_DIR/runs/*/record.json only and writes leaderboard.csv/.md (mean, std, 95%% "
                       "Student-t CI, rank, difference to a baseline), per_class.csv, failures.csv, plots/ and "
                       "report.html.")
    a.add_argument("results_dir", help="results folder of a `bench run`")
    a.add_argument("--baseline", help="backbone to compare every row with (default: the manifest's first)")
    a.set_defaults(fn=_cmd_aggregate)

    c = sub.add_parser("cka", help="layer-wise CKA between two encoders (or one with itself) on a dataset",
                       description="Writes OUT/cka.csv and the heatmap OUT/cka.png/.svg. --a/--b take a checkpoint "
                       "file, a pre-training folder (checkpoint.safetensors) or a transfer cell folder kept with "
                       "keep_weights (final.safetensors): pre-trained vs fine-tuned shows on its diagonal which "
                       "layers fine-tuning rewrote; --within compares one network's layers with each other.")
    c.add_argument("--a", required=True, help="first network: checkpoint file or run/pre-training folder")
    c.add_argument("--b", help="second network (omit with --within)")
    c.add_argument("--within", action="store_true", help="one network against itself (MeSa's layer 0 vs all)")
    c.add_argument("--dataset", default="synth", choices=list_datasets(), help="images to compare on (default: synth)")
    c.add_argument("--root", required=True, help="dataset folder")
    c.add_argument("--classes", type=int, help="class set where a dataset has several (nyuv2: 40 or 13)")
    c.add_argument("--eval-resize", default="default", help="image size: HxW, a short side, or native (default: the dataset's)")
    c.add_argument("--layers", default="stages", help="preset (stages, blocks) or comma-separated module names")
    c.add_argument("--images", type=int, default=64, help="evaluation images to use (default: 64)")
    c.add_argument("--batch-size", type=int, default=16, help="images per batch, at least 4 (default: 16)")
    c.add_argument("--reduce", default="mean", choices=["mean", "flatten", "subsample"],
                   help="spatial reduction of feature maps (default: mean = global average pooling)")
    c.add_argument("--out", required=True, help="output folder")
    c.set_defaults(fn=_cmd_cka)

    d = sub.add_parser("data", help="generate or inspect data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="render the procedural driving world", description=
                        "RGB (left/right), metric depth, forward flow, semantic labels, poses and object crops.")
    s.add_argument("--out", required=True, help="new output folder")
    s.add_argument("--sequences", type=int, default=4, help="driving sequences (default: 4; at least 2)")
    s.add_argument("--frames", type=int, default=10, help="frames per sequence (default: 10)")
    s.add_argument("--height", type=int, default=64, help="image height in pixels (default: 64)")
    s.add_argument("--width", type=int, default=192, help="image width in pixels (default: 192)")
    s.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives identical files")
    s.add_argument("--crops-per-class", type=int, default=40, help="object-centric crops per class (default: 40)")
    s.set_defaults(fn=_cmd_data_synth)
    i = dsub.add_parser("inspect", help="count the pixels of each class in one split of a dataset", description=
                        "Reads every image and label of SPLIT at native resolution and prints one JSON object: "
                        "dataset, split, num_images, num_classes, class_names, class_pixels, ignore_pixels.")
    i.add_argument("name", choices=list_datasets(), help="dataset")
    i.add_argument("--root", required=True, help="dataset folder (README, 'Datasets', gives each layout)")
    i.add_argument("--split", required=True, help="official split name (e.g. cityscapes: train or val)")
    i.add_argument("--classes", type=int, help="class set where a dataset has several (nyuv2: 40 or 13)")
    i.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    i.set_defaults(fn=_cmd_data_inspect)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
