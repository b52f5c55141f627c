"""A cell's kept weights (`keep_weights`, bench.core.kept_weights): written at its end, and the
cell's model rebuilt from them (for `bench explain`).

A full cell keeps its fine-tuned encoder and decoder; a frozen or linear cell its decoder or head
only, since its encoder is the pre-training checkpoint, which the rebuild loads after checking its
sha256 against the one the cell recorded. A frozen or linear cell of the random baseline has no
checkpoint to name: it keeps its (random, untrained) encoder too.
"""

from __future__ import annotations

from pathlib import Path

from bench.core import results_folder as rf
from bench.core.errors import UserError
from bench.core.kept_weights import load_kept_weights, save_kept_weights, verified_checkpoint
from transfer.model import SegmentationModel, build_model



def keep_cell_weights(config: dict, out_dir: Path, model: SegmentationModel, steps_done: int) -> Path:
    """Write `OUT/final.safetensors` for the trained `model` of the cell `config` describes."""
    cell = config["cell"]
    # The encoder is kept where no file holds it: fine-tuned (full), or the random baseline's own.
    own_encoder = cell["protocol"] == "full" or not config.get("checkpoint_sha256")
    meta = {"arch": cell["arch"], "method": f"{cell['method']}+{cell['protocol']}", "data": cell["dataset"],
            "steps": steps_done, "normalization": model.encoder.normalization, "seed": int(cell["seed"]),
            "fingerprint": config["fingerprint"]}
    return save_kept_weights(
        Path(out_dir) / rf.KEPT_WEIGHTS, meta, decoder_state=model.decoder.state_dict(),
        encoder_state=model.encoder.state_dict() if own_encoder else None,
        checkpoint_sha256=config.get("checkpoint_sha256"),
        decoder={"kind": cell["decoder"], "num_classes": _num_classes(model), "options": config.get("decoder_options")})


def _num_classes(model: SegmentationModel) -> int | None:
    return getattr(model.decoder, "num_classes", None)


def rebuild_cell_model(record: dict, run_dir: Path) -> SegmentationModel:
    """The model of a finished cell from its kept weights, in eval mode, float32: its fine-tuned
    encoder (full cells) or the verified checkpoint's (frozen, linear), and its trained decoder."""
    run_dir = Path(run_dir)
    path = run_dir / rf.KEPT_WEIGHTS
    config = record.get("config") or {}
    cell = record["cell"]
    if not path.is_file():
        hint = "" if config.get("keep_weights") else " (run it with `transfer: {keep_weights: true}` or a list naming it)"
        raise UserError(f"{run_dir}: no kept weights ({rf.KEPT_WEIGHTS}){hint}")
    kept = load_kept_weights(path)
    if kept.meta.get("fingerprint") not in (None, record.get("fingerprint")):  # (older files name none)
        raise UserError(f"{path}: kept by another version of the cell (fingerprint {kept.meta['fingerprint'][:12]}..., "
                        f"the record's is {str(record.get('fingerprint'))[:12]}...); re-run it with keep_weights")
    if not kept.decoder:
        raise UserError(f"{path}: holds a fine-tuned encoder without its decoder (kept before decoders were); "
                        f"remove the cell's record and re-run it to keep both")
    checkpoint = None
    if kept.encoder_is_checkpoint:
        checkpoint = verified_checkpoint((record.get("checkpoint") or {}).get("path") or config.get("checkpoint"),
                                         kept.checkpoint_sha256 or config.get("checkpoint_sha256"),
                                         what=f"the encoder of {run_dir.name}")
    options = dict(config.get("decoder_options") or {})
    if config.get("decoder_spec"):
        options["spec"] = config["decoder_spec"]
    num_classes = len(record.get("class_names") or []) or (kept.meta.get("kept") or {}).get("decoder", {}).get(
        "num_classes")
    # init "encoder": the decoder's weights come from the kept file, never from the checkpoint.
    model, _ = build_model(cell["arch"], checkpoint, cell["decoder"], "encoder", int(num_classes), options,
                           config.get("random_init", "timm"))
    if kept.encoder is not None:
        model.encoder.load_state_dict(kept.encoder, strict=True)
        model.encoder.normalization = kept.meta["normalization"]
    model.decoder.load_state_dict(kept.decoder, strict=True)
    return model.float().eval()


def kept_weight_files(results_dir: Path) -> list[Path]:
    """The cell folders of a results folder that kept their weights, sorted."""
    return sorted(p.parent for p in Path(results_dir).glob(f"{rf.RUNS}/*/{rf.KEPT_WEIGHTS}"))

