"""The training of one transfer cell: fine-tune or probe a checkpoint on a few-shot split,
evaluate, record.

`train_cell(config, out_dir, log=...)` runs in one process (one DDP rank); `transfer.api.run_cell`
is the way in, which also starts the ranks of a data-parallel cell. It writes
`OUT/record.json` atomically (the run record: docs/results.md) and `OUT/train_split.txt`. The pieces,
in the order a cell runs them:

- `_open_data`: the few-shot training images and the evaluation set;
- `_build`: the model, its optimiser and the mixed-precision context;
- `StepBatches`: the batch of each step, from the (seed, step) generator, through the feature
  cache when the encoder is frozen;
- `_train_loop`: the steps, evaluations, resumable states and the divergence check;
- `_record` and `_finish`: the record, the CKA matrix of a full cell, the weights when kept, and
  the end of the in-cell state.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import math
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.core.checkpoint import load_checkpoint, state_sha256
from bench.core.claims import identity
from bench.core.devices import MIN_LOSS_SCALE, data_wait_warning, grad_scaler, resolve_device, resolve_precision
from bench.core.devices import autocast as make_autocast
from bench.core.errors import UserError
from bench.core.metrics import ConfusionMatrix, PerImageCounts, confusion_matrices
from bench.core.progress import bar as progress_bar
from bench.core.records import write_json_atomic
from bench.core.seeding import step_generator
from bench.core.sizes import pretrain_image_size
from bench.core.version import harness_checkout, library_versions
from transfer.cell_state import STATE_NAME, load_cell_state, save_cell_state
from transfer.data import CACHE_BYTES, dataset_settings, open_transfer_data
from transfer.decoders.linear_bank import LinearHeadBank
from transfer.distributed import all_reduce_sum, rank_and_world
from transfer.loader import view_loader
from transfer.feature_cache import DEFAULT_BUDGET_BYTES, DEFAULT_VIEWS_PER_IMAGE, FeatureCache
from transfer.kept import keep_cell_weights
from transfer.predictions import save_predictions
from transfer.model import build_model
from transfer.protocols import OptimizerPreset, build_optimizer, lr_factor, param_groups
from transfer.similarity import pretrained_vs_finetuned, write_cka
from transfer.splits import write_stems

RECORD_SCHEMA = 1
IMAGE_CACHE = "image_cache"  # resized evaluation images beyond the memory budget, while the cell runs


def evaluate(model, eval_images, num_classes: int, ignore_index: int, batch_size: int, *,
             cache: FeatureCache | None = None, device=None, autocast=None, split: str = "eval") -> dict:
    """Dataset-level confusion matrix on native-resolution labels: scores predicted at the eval
    size are upsampled (bilinear) to each label's size before the argmax. `split` names the image
    set in the feature cache's keys (validation and evaluation images are different images)."""
    model.eval()
    try:
        return _score(lambda features, size: [model.decoder(features, size)], model.features, 1, eval_images,
                      num_classes, ignore_index, batch_size, cache, device, autocast, split)[0]
    finally:
        model.train()


def evaluate_bank(bank: LinearHeadBank, active: list[int], eval_images, num_classes: int, ignore_index: int,
                  batch_size: int, *, cache: FeatureCache, device=None, autocast=None,
                  split: str = "validation") -> list[dict]:
    """`evaluate` for every active head of a bank at once, one pass over the cached features."""
    return _score(lambda features, size: bank.predict(features, size, active), None, len(active), eval_images,
                  num_classes, ignore_index, batch_size, cache, device, autocast, split)


@torch.no_grad()
def _score(predict, encode, heads: int, eval_images, num_classes: int, ignore_index: int, batch_size: int,
           cache, device, autocast, split: str) -> list[dict]:
    device = device or torch.device("cpu")
    rank, world = rank_and_world()
    cms = [ConfusionMatrix(num_classes, ignore_index) for _ in range(heads)]
    counts = [PerImageCounts(len(eval_images.samples), num_classes, ignore_index) for _ in range(heads)]
    for k, (index, images, labels) in enumerate(eval_images.indexed_batches(batch_size)):
        if k % world != rank:  # data-parallel: each rank scores its share, the matrices are summed
            continue
        with autocast or contextlib.nullcontext():
            if cache is not None:
                features = cache.features([(split, i) for i in index],
                                          lambda keys: _to(eval_images.load([i for _, i in keys]), device))
            else:
                features = encode(_to(images, device))
            all_scores = [s.float() for s in predict(features, images.shape[-2:])]
        labels = labels.to(device)
        preds = []
        for scores in all_scores:
            if scores.shape[-2:] != labels.shape[-2:]:
                scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            # max(1).indices, not argmax(1): the same first maximum, ~10x faster over channels on a CPU
            preds.append(scores.max(1).indices.cpu())
        # One confusion matrix per head and image, all counted at once: each gives the dataset's
        # matrix its pixels and is that image's own counts.
        matrices = confusion_matrices(torch.stack(preds), labels.cpu(), num_classes, ignore_index)
        for cm, per_image, mats in zip(cms, counts, matrices):
            cm.mat += mats.sum(0)
            for j, i in enumerate(index):
                per_image.set_from_matrix(i, mats[j])
    results = []
    for cm, per_image in zip(cms, counts):
        for t in (cm.mat, per_image.intersection, per_image.union):  # each rank filled its own images' rows
            all_reduce_sum(t)
        results.append({**cm.compute(), "per_image": per_image})
    return results


def _to(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    # channels-last is the fast convolution layout on GPUs (tensor cores); on CPU it does not pay.
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


class LossStep(torch.nn.Module):
    """One step's loss as a module -- images or cached features in -- so that DDP can wrap it."""

    def __init__(self, model, ignore_index: int):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, inputs, labels: torch.Tensor, cached: bool) -> torch.Tensor:
        features = inputs if cached else self.model.features(inputs)
        return self.model.decoder.loss(features, labels, self.ignore_index)


def train_cell(config: dict, out_dir: Path, *, progress: bool = True, log=print, device=None) -> dict:
    """Train and evaluate the cell `config` describes (one process, or one DDP rank); its record.

    Every optimiser candidate (one, or a `sweep`'s grid) trains on the same batches from the
    same initialisation; the one with the best final validation mIoU is selected, and only it is
    scored on the evaluation set. Frozen cells with a feature cache train all candidates in one
    pass (one encoder pass per view, K heads); others train them one after another."""
    cell = config["cell"]
    t_start = time.perf_counter()
    seed = int(cell["seed"])
    torch.manual_seed(seed)
    device = device or resolve_device(config.get("device"))
    rank, world = rank_and_world()
    data = _open_data(config, out_dir, lead=rank == 0)
    presets = candidate_presets(config)
    init_rng = torch.get_rng_state()  # every candidate starts from the same weights

    def build(preset):
        torch.set_rng_state(init_rng)
        return _build(config, data, device, world, preset)

    first = build(presets[0])
    together = len(presets) > 1 and first.model.encoder_frozen and config.get("feature_cache", True)
    batches = StepBatches(config, data, first, out_dir, device, rank, world)
    log(f"cell {cell} init {first.init_info['effective']} data {data.settings} optimizer {first.preset.model_dump()} "
        f"candidates {len(presets)} ({'in one pass' if together else 'one after another'}) device {device} "
        f"feature cache {'on' if batches.cache else 'off'} train images {len(data.train_stems)} "
        f"validation images {len(data.val_images.samples)} eval images {len(data.eval_images.samples)}")
    if together:
        nets = [first] + [_candidate(first, config, p) for p in presets[1:]]
        runs = _train_loop(config, data, nets, batches, out_dir, progress, log, device, rank, world, tag="")
    else:
        nets, runs = [], []
        for k, preset in enumerate(presets):
            net = first if k == 0 else build(preset)
            if k > 0:
                batches = StepBatches(config, data, net, out_dir, device, rank, world, cache=batches.cache)
            runs += _train_loop(config, data, [net], batches, out_dir, progress, log, device, rank, world,
                                tag=f"#candidate{k}" if len(presets) > 1 else "")
            nets.append(net)
    selected = select_candidate(runs)
    if selected is not None:  # only the selected candidate ever sees the evaluation set
        net, run = nets[selected], runs[selected]
        t_eval = time.perf_counter()
        run.final = evaluate(net.model, data.eval_images, data.dataset.num_classes, data.dataset.ignore_index,
                             batches.batch_size, cache=batches.cache, device=device, autocast=net.autocast)
        run.eval_s += time.perf_counter() - t_eval
        log(f"selected candidate {selected} ({_overrides(config, selected)}): validation mIoU "
            f"{run.curve[-1]['miou']:.4f}, evaluation mIoU {run.final['miou']:.4f}")
    record = _record(config, data, nets, batches, runs, selected, device, world, t_start, together)
    if warning := data_wait_warning(record["timings"]["data_wait_fraction"], batches.num_workers):
        log(warning)
    # While the fine-tuned encoder and the prepared evaluation images are still here.
    cka = _cell_cka(config, data, nets, selected, record, log) if rank == 0 else None
    if rank == 0 and selected is not None:  # a few evaluation images' predictions, for the qualitative grids
        _save_predictions(config, out_dir, nets[selected], data, batches, device, log)
    if batches.cache is not None:
        batches.cache.close()
    shutil.rmtree(out_dir / IMAGE_CACHE / f"rank{rank}", ignore_errors=True)
    with contextlib.suppress(OSError):  # the last rank out removes the folder
        (out_dir / IMAGE_CACHE).rmdir()
    if rank == 0:
        _finish(config, out_dir, nets, runs, selected, record, log, cka)
    return record


def candidate_presets(config: dict) -> list[OptimizerPreset]:
    """The optimiser of every candidate: the resolved preset, with each sweep entry over it."""
    base = config["optim"]  # resolved by transfer.api.resolve_cell_config
    return [OptimizerPreset(**{**base, **override}) for override in (config.get("sweep") or [{}])]


def _overrides(config: dict, k: int) -> dict:
    return (config.get("sweep") or [{}])[k]


def select_candidate(runs: list) -> int | None:
    """The candidate with the best final validation mIoU among those that did not diverge (the
    first on a tie); None when every candidate diverged."""
    finished = [k for k, r in enumerate(runs) if r.status == "ok" and r.curve]
    return max(finished, key=lambda k: (runs[k].curve[-1]["miou"], -k)) if finished else None


@dataclass
class CellData:
    settings: dict
    dataset: object  # the SegmentationDataset
    train_stems: list[str]
    train_images: object  # TrainImages
    val_images: object  # EvalImages of the validation split: selection and learning curves
    eval_images: object  # EvalImages of the evaluation set: the selected candidate's final score


def _open_data(config: dict, out_dir: Path, lead: bool) -> CellData:
    cell = config["cell"]
    settings = config.get("dataset") or dataset_settings(cell["dataset"])
    dataset, train_stems, train_images, val_images, eval_images = open_transfer_data(
        settings, config["dataset_root"], int(cell["train_size"]), int(cell["seed"]),
        augment=config.get("augment", True), spill_dir=out_dir / IMAGE_CACHE / f"rank{rank_and_world()[0]}",
        cache_bytes=int(config.get("image_cache_bytes", CACHE_BYTES)))
    if lead:  # published with the results: the exact images this cell trained on
        write_stems(out_dir / "train_split.txt", train_stems)
    return CellData(settings, dataset, train_stems, train_images, val_images, eval_images)


@dataclass
class CellNet:
    model: torch.nn.Module
    init_info: dict
    checkpoint: object  # the loaded harness Checkpoint, or None (random init)
    preset: OptimizerPreset
    optimizer: torch.optim.Optimizer
    autocast: object  # a torch.autocast context, or None
    sha_before: str  # the encoder's tensors before training, for the frozen-encoder check
    precision: str = "fp32"
    scaler: object = None  # fp16's gradient scaler, or None

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


def _build(config: dict, data: CellData, device: torch.device, world: int, preset: OptimizerPreset) -> CellNet:
    cell = config["cell"]
    checkpoint = load_checkpoint(config["checkpoint"]) if config.get("checkpoint") else None
    decoder_options = dict(config.get("decoder_options") or {})
    if config.get("decoder_spec"):
        decoder_options["spec"] = config["decoder_spec"]
    # A config without `random_init` predates the choice: its random encoders were timm's.
    model, init_info = build_model(cell["arch"], checkpoint, cell["decoder"], config.get("init", "auto"),
                                   data.dataset.num_classes, decoder_options, config.get("random_init", "timm"))
    groups = param_groups(model, cell["protocol"], preset.lr, preset.encoder_lr_mult, preset.decay_norms_and_embeddings)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if world > 1 and device.type == "cuda":
        # Statistics over the whole global batch; the converted layers keep the same parameters.
        model.decoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.decoder)
        if cell["protocol"] == "full":
            model.encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    optimizer = build_optimizer(groups, preset, update=_update(config))
    # bf16 autocast on GPUs by default: the speed of half precision without fp16's loss scaling.
    precision = resolve_precision(config.get("precision"), device)
    autocast = None if precision == "fp32" else make_autocast(precision, device)
    return CellNet(model, init_info, checkpoint, preset, optimizer, autocast,
                   state_sha256(model.encoder.state_dict()), precision, grad_scaler(precision, device))


def _update(config: dict) -> str | None:
    """Linear probes take the fused optimiser update (their head is a few small tensors, so the
    per-tensor loop is what a step costs: fused is one kernel, about 3x cheaper than the
    multi-tensor update on a CPU); other cells keep the device's default."""
    return "fused" if config["cell"]["protocol"] == "linear" else None


def _candidate(first: CellNet, config: dict, preset: OptimizerPreset) -> CellNet:
    """Another candidate of a cell whose candidates train together: a copy of the first one's
    network as built (so the same initial weights a rebuild from the same seed gives) sharing its
    frozen encoder, with an optimiser of its own."""
    encoder = first.model.encoder
    model = copy.deepcopy(first.model, memo={id(encoder): encoder})
    groups = param_groups(model, config["cell"]["protocol"], preset.lr, preset.encoder_lr_mult,
                          preset.decay_norms_and_embeddings)
    return CellNet(model, first.init_info, first.checkpoint, preset, build_optimizer(groups, preset, update=_update(config)), first.autocast,
                   first.sha_before, first.precision, grad_scaler(first.precision, first.model_device))


class StepBatches:
    """The batch of a step: (inputs, labels, cached), `inputs` being images or, when the frozen
    encoder's features are cached, those features. Every rank draws the same batch from the
    step's generator and keeps its own slice of it."""

    def __init__(self, config: dict, data: CellData, net: CellNet, out_dir: Path, device, rank: int, world: int,
                 cache: FeatureCache | None = None):
        self.images, self.device, self.rank, self.world = data.train_images, device, rank, world
        self.batch_size = int(config["batch_size"])
        if world > 1 and self.batch_size < world:
            raise UserError(f"batch size {self.batch_size} cannot be split over {world} processes; "
                            f"use at least {world}")
        self.cache, self.fixed_views = cache, None
        self.defer_labels = False  # cached batches' labels as a callable (set when a LinearHeadBank trains)
        self.num_workers = int(config.get("num_workers") or 0)
        self.prefetched, self._ahead, self.wait_s = None, None, 0.0
        if self.cache is None and net.model.encoder_frozen and config.get("feature_cache", True):
            self.cache = FeatureCache(net.model.features, spill_dir=out_dir / "feature_cache" / f"rank{rank}",
                                      budget_bytes=int(config.get("feature_cache_bytes", DEFAULT_BUDGET_BYTES)))
        if self.cache is not None and self.images.crop is not None:
            # A random crop makes every step a new view: cache a fixed set of crops per image.
            per_image = int(config.get("feature_cache_views", DEFAULT_VIEWS_PER_IMAGE))
            seed = int(config["cell"]["seed"])
            self.fixed_views = [self.images.fixed_views(i, per_image, seed) for i in range(len(self.images))]

    def __call__(self, gen: torch.Generator):
        if self.fixed_views is not None:
            pick = torch.randint(len(self.fixed_views), (self.batch_size,), generator=gen).tolist()
            which = torch.randint(len(self.fixed_views[0]), (self.batch_size,), generator=gen).tolist()
            views = [self.fixed_views[i][v] for i, v in zip(pick, which)]
        else:
            views = self.images.draw(gen, self.batch_size)
        views = views[self.rank::self.world]  # data-parallel: this rank's slice of the step's batch
        self.last_views = views  # what the batch's samples are (keys of per-view memos)
        t0 = time.perf_counter()
        if self.cache is not None:
            features = self.cache.features(views, lambda keys: _to(self.images.load(keys)[0], self.device))
            if self.defer_labels:  # a bank remembers each view's label histograms: render only when asked
                labels = lambda: self.images.labels(views).to(self.device)  # noqa: E731
            else:
                labels = self.images.labels(views).to(self.device)
            self.wait_s += time.perf_counter() - t0
            return features, labels, True
        x, y = self._take_prefetched(views) or self.images.load(views)
        self.wait_s += time.perf_counter() - t0
        non_blocking = self.prefetched is not None  # the loader pins its batches
        return _to(x, self.device), y.to(self.device, non_blocking=non_blocking), False

    def start_loader(self, seed: int, start: int, steps: int) -> None:
        """Render the views of steps start.. in DataLoader workers (cells without a feature cache)."""
        if self.cache is None and self.num_workers > 0:
            self.prefetched = view_loader(self.images, seed=seed, start=start, steps=steps,
                                          batch_size=self.batch_size, rank=self.rank, world=self.world,
                                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def stop_loader(self) -> None:
        self.prefetched, self._ahead = None, None

    def _take_prefetched(self, views: list) -> tuple | None:
        if self.prefetched is None:
            return None
        if self._ahead is None:
            self._ahead = next(self.prefetched, None)
        if self._ahead is None or self._ahead[0] != views:
            return None
        (_, x, y), self._ahead = self._ahead, None
        return x, y


@dataclass
class LoopResult:
    status: str = "ok"
    error: str | None = None
    curve: list = field(default_factory=list)  # validation: step, loss, miou, pixel_acc, mean_class_acc
    final: dict | None = None  # the evaluation set's metrics, for the selected candidate only
    steps_done: int = 0
    resumed: dict | None = None
    train_s: float = 0.0
    eval_s: float = 0.0


class _Optimizers:
    """The optimisers of candidates trained together, saved and restored as one state."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def state_dict(self) -> list:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list) -> None:
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)


def _train_loop(config: dict, data: CellData, nets: list[CellNet], batches: StepBatches, out_dir: Path,
                progress: bool, log, device, rank: int, world: int, tag: str) -> list[LoopResult]:
    """Train `nets` together on the same step batches (one candidate, or K heads on cached
    features); validation every `eval_every` steps. A candidate that diverges stops; the others
    go on. `tag` keeps a candidate's resumable state apart from the others'."""
    cell = config["cell"]
    seed, steps = int(cell["seed"]), int(config["steps"])
    step_losses = [LossStep(net.model, data.dataset.ignore_index) for net in nets]
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Heads may leave parameters unused in a step (auxiliary heads, Mask2Former's layers).
        step_losses = [DistributedDataParallel(sl, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=True) for sl in step_losses]
    # Linear heads with the grid loss on cached features train as one bank (one process only:
    # DDP wraps each head's loss on its own).
    decoders = [net.model.decoder for net in nets]
    # (fp16's per-head gradient scalers need one backward each: no bank.)
    bank = LinearHeadBank(decoders) if (world == 1 and batches.cache is not None and LinearHeadBank.fits(decoders)
                                        and all(net.scaler is None for net in nets)) else None
    batches.defer_labels = bank is not None
    eval_every = int(config.get("eval_every", steps)) or steps
    state_every = int(config.get("state_every") or 0)
    runs = [LoopResult() for _ in nets]
    models = torch.nn.ModuleList([net.model for net in nets])
    optimizers = _Optimizers([net.optimizer for net in nets])
    state_key = config["fingerprint"] + tag
    resumed = load_cell_state(out_dir / STATE_NAME, state_key, models, optimizers)
    if resumed is not None:
        for run, curve, status in zip(runs, resumed["curve"]["curves"], resumed["curve"]["status"], strict=True):
            run.resumed, run.steps_done, run.curve, (run.status, run.error) = resumed, resumed["step"], curve, status
        log(f"resumed from {STATE_NAME} at step {resumed['step']}")
    start = resumed["step"] if resumed is not None else 0
    models.train()
    t_train = time.perf_counter()
    eval_s, last_loss = 0.0, {}
    bar = progress_bar(enabled=progress, total=steps, unit="step", initial=start,
                       desc=f"{cell['backbone']}/{cell['protocol']}/s{seed}{tag}")
    batches.start_loader(seed, start, steps)  # (cells without a feature cache, num_workers > 0)
    try:
        for step in range(start, steps):
            active = [k for k, r in enumerate(runs) if r.status == "ok"]
            if not active:
                break
            gen = step_generator(seed, step)
            with nets[0].autocast or contextlib.nullcontext():
                inputs, y, cached = batches(gen)
            for k in active:
                # optimizer.param_groups, not the groups built: loading a resumed state replaces the dicts.
                net = nets[k]
                warmup = min(net.preset.warmup_steps if net.preset.warmup_steps is not None else max(1, steps // 20),
                             steps)
                for g in net.optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_factor(step, steps, warmup, net.preset.poly_power)
            values = []

            def diverged(k: int, value: float) -> bool:
                if math.isfinite(value):
                    return False
                runs[k].status, runs[k].error = "diverged", f"loss became {value} at step {step + 1}"
                log(f"candidate {k}: {runs[k].error}" if len(nets) > 1 or tag else runs[k].error)
                return True

            def optimise(k: int, value: float) -> None:
                net = nets[k]
                if net.scaler is not None:
                    net.scaler.unscale_(net.optimizer)
                if net.preset.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for g in net.optimizer.param_groups for p in g["params"]],
                                                   net.preset.grad_clip)
                if net.scaler is not None:
                    net.scaler.step(net.optimizer)  # skipped when the gradients overflowed
                    net.scaler.update()  # ... and then the scale goes down
                    if net.scaler.get_scale() < MIN_LOSS_SCALE:  # no longer a scale being found: divergence
                        runs[k].status = "diverged"
                        runs[k].error = f"fp16 gradients overflow below a loss scale of {MIN_LOSS_SCALE} (step {step + 1})"
                        log(runs[k].error)
                        return
                else:
                    net.optimizer.step()
                runs[k].steps_done = step + 1
                values.append(value)
                last_loss[k] = value

            if bank is not None:  # every active head's loss in one pass (transfer/decoders/linear_bank.py)
                with nets[0].autocast or contextlib.nullcontext():
                    losses = bank.losses(inputs, y, data.dataset.ignore_index, active, keys=batches.last_views)
                kept = [(j, k, v) for j, (k, v) in enumerate(zip(active, losses.detach().tolist()))
                        if not diverged(k, v)]
                for _, k, _ in kept:
                    nets[k].optimizer.zero_grad(set_to_none=True)
                if kept:  # the heads share no parameter: one backward of the sum is each head's own backward
                    losses[[j for j, _, _ in kept]].sum().backward()
                for _, k, v in kept:
                    optimise(k, v)
            else:  # one head after another, each graph freed before the next is built
                for k in active:
                    with nets[k].autocast or contextlib.nullcontext():
                        loss = step_losses[k](inputs, y, cached)
                    value = float(all_reduce_sum(loss.detach().clone())) / world  # every rank agrees on divergence
                    if diverged(k, value):
                        continue
                    nets[k].optimizer.zero_grad(set_to_none=True)
                    (nets[k].scaler.scale(loss) if nets[k].scaler is not None else loss).backward()
                    optimise(k, value)
            if values:
                bar.set_postfix(loss=f"{values[0]:.3f}")
            bar.update(1)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                t_eval = time.perf_counter()
                scored = [k for k, run in enumerate(runs) if run.status == "ok" and run.steps_done == step + 1]
                if bank is not None:
                    metrics = evaluate_bank(bank, scored, data.val_images, data.dataset.num_classes,
                                            data.dataset.ignore_index, batches.batch_size, cache=batches.cache,
                                            device=device, autocast=nets[0].autocast)
                else:
                    metrics = [evaluate(nets[k].model, data.val_images, data.dataset.num_classes,
                                        data.dataset.ignore_index, batches.batch_size, cache=batches.cache,
                                        device=device, autocast=nets[k].autocast, split="validation") for k in scored]
                for k, m in zip(scored, metrics):
                    runs[k].curve.append({"step": step + 1, "loss": last_loss[k], "miou": m["miou"],
                                          "pixel_acc": m["pixel_acc"], "mean_class_acc": m["mean_class_acc"],
                                          "split": "validation"})
                    log(f"step {step + 1}{f' candidate {k}' if len(nets) > 1 else ''} validation mIoU {m['miou']:.4f} "
                        f"pixAcc {m['pixel_acc']:.4f}")
                eval_s += time.perf_counter() - t_eval
            if rank == 0 and state_every and (step + 1) % state_every == 0 and step + 1 < steps:
                save_cell_state(out_dir / STATE_NAME, state_key, step + 1, models, optimizers,
                                {"curves": [r.curve for r in runs], "status": [(r.status, r.error) for r in runs]})
    finally:
        batches.stop_loader()
    bar.close()
    train_s = time.perf_counter() - t_train - eval_s
    for run in runs:  # candidates trained together share the clock
        run.train_s, run.eval_s = train_s / len(runs), eval_s / len(runs)
    return runs


def _record(config: dict, data: CellData, nets: list[CellNet], batches: StepBatches, runs: list[LoopResult],
            selected: int | None, device, world: int, t_start: float, together: bool) -> dict:
    cell = config["cell"]
    k = 0 if selected is None else selected
    net, run = nets[k], runs[k]
    checkpoint, final = net.checkpoint, run.final
    named = lambda ious: dict(zip(data.dataset.class_names, ious))  # noqa: E731
    cache = batches.cache
    status = "ok" if selected is not None else "diverged"
    error = None if selected is not None else "; ".join(
        f"candidate {i}: {r.error}" if len(runs) > 1 else r.error for i, r in enumerate(runs) if r.error) or \
        "no candidate finished"
    train_s, eval_s = sum(r.train_s for r in runs), sum(r.eval_s for r in runs)
    resumed = next((r.resumed for r in runs if r.resumed is not None), None)
    steps_done = max(r.steps_done for r in runs)
    return {
        "schema": RECORD_SCHEMA,
        "cell": cell,
        "fingerprint": config["fingerprint"],
        "status": status,
        "error": error,
        # The selected candidate's score on the evaluation set, the only one ever computed.
        "metrics": None if final is None else {
            "miou": final["miou"], "pixel_acc": final["pixel_acc"], "mean_class_acc": final["mean_class_acc"],
            "per_class_iou": named(final["per_class_iou"]),
        },
        # The selected candidate's validation curve (the evaluation set is scored once, at the end).
        "curve": run.curve,
        "validation": {"images": len(data.val_images.samples),
                       "miou": run.curve[-1]["miou"] if run.curve and selected is not None else None},
        "sweep": None if len(runs) == 1 else {
            "rule": "best final validation mIoU; diverged candidates excluded", "selected": selected,
            "trained": "in one pass (K heads on cached features)" if together else "one after another",
            "candidates": [{"optim": _overrides(config, i), "status": r.status, "error": r.error,
                            "validation_miou": r.curve[-1]["miou"] if r.curve and r.status == "ok" else None,
                            "curve": r.curve} for i, r in enumerate(runs)],
        },
        # The final evaluation per image: what paired statistics between backbones resample.
        "per_image": None if final is None else {
            "stems": [sample.stem for sample in data.eval_images.samples],
            "intersection": final["per_image"].intersection.tolist(), "union": final["per_image"].union.tolist()},
        "class_names": list(data.dataset.class_names),
        "dataset": {**data.settings, "num_eval_images": len(data.eval_images.samples),
                    "num_validation_images": len(data.val_images.samples)},
        "train_stems": data.train_stems,
        "init": net.init_info,
        "encoder_sha256_before": net.sha_before,
        "encoder_sha256_after": state_sha256(net.model.encoder.state_dict()),
        "checkpoint": None if checkpoint is None else {
            "path": str(checkpoint.path), "sha256": config.get("checkpoint_sha256"),
            "method": checkpoint.meta.get("method"), "steps": checkpoint.meta.get("steps"),
            # HxW the encoder was pre-trained at (None: the checkpoint does not say), for the
            # resolution axes (docs/results.md).
            "pretrain_size": pretrain_image_size(checkpoint.meta),
            # Imported checkpoints: source hashes, format and key report (`bench submit`).
            "provenance": checkpoint.meta.get("provenance"),
        },
        "optimizer": net.preset.as_config(),
        # Evaluation-side images: resized once, then from memory or (beyond its budget) from .npy files.
        "image_cache": {"validation": dict(data.val_images.items.stats),
                        "evaluation": dict(data.eval_images.items.stats)},
        "feature_cache": None if cache is None else {
            **cache.stats,
            "train_views": "exact" if batches.fixed_views is None else f"{len(batches.fixed_views[0])} per image"},
        "device": str(device),
        "precision": net.precision,
        "num_workers": batches.num_workers if batches.cache is None else 0,
        "processes": world,
        "timings": {
            "wall_s": time.perf_counter() - t_start, "train_s": train_s, "eval_s": eval_s,
            "steps_done": steps_done, "resumed_from_step": None if resumed is None else resumed["step"],
            # Steps of the training clock per second: candidates trained together share each step,
            # candidates trained one after another each take their own.
            "steps_per_s": ((steps_done - (resumed or {}).get("step", 0)) * (1 if together else len(runs)) / train_s
                            if train_s > 0 else None),
            # Training images (views) per second of the training clock, and the part of it spent
            # getting batches (decoding, rendering views, reading the feature cache).
            "images_per_s": ((steps_done - (resumed or {}).get("step", 0)) * (1 if together else len(runs))
                             * int(config["batch_size"]) / train_s if train_s > 0 else None),
            "data_wait_fraction": batches.wait_s / train_s if train_s > 0 else None,
            # Peak resident memory of the process that ran the cell (KiB on Linux).
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        },
        # The harness's git commit and dirty flag when it runs from a checkout (None otherwise):
        # a runtime fact, outside the fingerprint like everything here but `config`.
        "harness_git": harness_checkout(),
        "versions": library_versions(),
        "config": config,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # Which driver's process trained it (a shared results folder has several); not fingerprinted.
        "ran_by": identity(),
    }


def _finish(config: dict, out_dir: Path, nets: list[CellNet], runs: list[LoopResult], selected: int | None,
            record: dict, log, cka: dict | None) -> None:
    """The lead rank's last writes: the CKA matrix of a full cell and the kept weights, then the
    record, which supersedes the state."""
    if cka is not None:
        write_cka(out_dir, cka)
    if config.get("keep_weights") and selected is not None:
        # Only when asked: what rebuilds the model, in half precision (transfer/kept.py): a full
        # cell's encoder and decoder, a frozen or linear cell's decoder (its encoder is the checkpoint).
        keep_cell_weights(config, out_dir, nets[selected].model, runs[selected].steps_done)
    write_json_atomic(out_dir / "record.json", record)
    (out_dir / STATE_NAME).unlink(missing_ok=True)
    log(f"status {record['status']}; record written")


def _cell_cka(config: dict, data: CellData, nets: list[CellNet], selected: int | None, record: dict,
              log) -> dict | None:
    """The `cka.json` document of a full cell with a checkpoint (transfer/similarity.py): its
    pre-trained encoder against the fine-tuned one in memory, on its prepared evaluation images.
    Frozen and linear encoders are the checkpoint's. An analysis, not the result: a failure is
    logged and the cell stands."""
    if selected is None or config["cell"]["protocol"] != "full" or not config.get("checkpoint"):
        return None
    try:
        return pretrained_vs_finetuned(config, nets[selected].model.encoder, data.eval_images,
                                       encoder_sha256=record["encoder_sha256_after"])
    except Exception as exc:  # noqa: BLE001 -- e.g. under 4 evaluation images; the heatmap is left out
        log(f"CKA not stored: {type(exc).__name__}: {exc}")
        return None


def _save_predictions(config: dict, out_dir: Path, net: CellNet, data: CellData, batches: StepBatches, device,
                      log) -> None:
    """OUT/predictions/ (transfer/predictions.py), from the features the evaluation used. A
    picture, not the result: a failure is logged and the cell stands."""
    try:
        save_predictions(out_dir, config, net.model, data.eval_images, cache=batches.cache, device=device,
                         autocast=net.autocast)
    except Exception as exc:  # noqa: BLE001
        log(f"predictions not saved: {type(exc).__name__}: {exc}")

