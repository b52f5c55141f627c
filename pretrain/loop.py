"""The pre-training loop shared by every method: resumable, deterministic, NaN-aware.

Batches and augmentations are drawn from a generator seeded by (seed, step), so a run resumed
from a snapshot sees exactly the batches an uninterrupted run would. Snapshots (`state.pt`:
weights, optimiser state, step, counters) are written atomically every `state_every` steps and
loaded with `torch.load(weights_only=True)`; a snapshot whose config fingerprint differs is ignored.

Per the NaN-divergence paper, a step whose loss or gradient is not finite is skipped (no update,
and the buffers its forward pass touched are restored) and counted; `max_bad_steps` consecutive
bad steps end the run as `Diverged`, and so does a run that ends without a single good step.
Because bad steps never update the weights, the networks at that point are the last good ones,
and the caller keeps them. A batch without anything to learn from (loss None, or a loss without
gradient such as the SILog of an empty mask, e.g. no valid depth pixel) is skipped and counted
separately. Both counters are columns of `history.csv`.

Where and how (bench/core/devices.py): the networks and batches live on `device`; the forward
pass runs under `precision`'s autocast (bf16 by default on CUDA); fp16 adds a gradient scaler,
whose overflow steps (a non-finite gradient at a loss scale above `MIN_LOSS_SCALE`) lower the
scale, move nothing and do not count as bad steps; CNNs go channels-last on CUDA. Items are
decoded by `num_workers` DataLoader processes (pretrain/loader.py). With `processes > 1` every
rank trains on its slice of each step's batch; gradients are averaged over the ranks after the
backward pass (one flat all-reduce: methods call their networks directly, so no DDP wrapper is
needed), buffers (BatchNorm statistics, a MoCo queue) follow rank 0 after each step, and only
rank 0 writes snapshots and `history.csv`.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.core.atomic import write_bytes_atomic
from bench.core.devices import (MIN_LOSS_SCALE, autocast, data_wait_warning, grad_scaler, peak_memory,
                                resolve_precision)
from bench.core.distributed import rank_and_world
from bench.core.progress import bar as progress_bar
from bench.core.seeding import step_generator
from pretrain.loader import attach_loader, detach_loader


class Diverged(RuntimeError):
    def __init__(self, step: int, bad_steps: int, reason: str, last_good_step: int):
        super().__init__(f"{bad_steps} consecutive non-finite steps up to step {step} ({reason}); "
                         f"last good step {last_good_step}")
        self.step, self.bad_steps, self.reason, self.last_good_step = step, bad_steps, reason, last_good_step


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def write_history(path: Path, rows: list[dict]) -> None:
    columns = ["step", "loss", "lr"] + sorted({k for r in rows for k in r} - {"step", "loss", "lr"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def train(task, config: dict, fingerprint: str, out_dir: Path, *, progress: bool = True, log=print) -> dict:
    """Optimise `task` for config['steps'] steps; returns a summary. `task` provides `modules`
    (name -> nn.Module, already on `task.device`), `loss(generator, batch_size) -> (loss |
    None, terms)`, `adjust_gradients()` and `after_step()` (pretrain.methods.base), and gets
    `task.step` set before each loss; `config["precision"]` as bench.core.devices resolves it."""
    steps, seed = int(config["steps"]), int(config["seed"])
    state_every = int(config.get("state_every", 100))
    max_bad = int(config.get("max_bad_steps", 20))
    clip = config.get("grad_clip")
    warmup = min(int(config.get("warmup_steps", 0)) or max(1, steps // 20), steps)
    device = task.device
    precision = resolve_precision(config.get("precision"), device)
    rank, world = rank_and_world()
    params = [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    # Buffers change in the forward pass (BatchNorm statistics, a MoCo queue): a skipped step must
    # restore them too, or one NaN batch would poison the running statistics for good.
    buffers = [b for m in task.modules.values() for b in m.buffers()]
    saved = [torch.empty_like(b) for b in buffers]  # their values before the step's forward pass
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config.get("weight_decay", 1e-4)))
    scaler = grad_scaler(precision, device)
    state_path, history_path = out_dir / "state.pt", out_dir / "history.csv"

    start, history = 0, []
    counts = {"empty_batches": 0, "nonfinite_steps": 0, "consecutive_bad": 0, "last_good_step": 0,
              "overflow_steps": 0}
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as exc:  # a torn or foreign snapshot is not worth dying for: start over
            log(f"ignoring unreadable snapshot {state_path}: {exc}")
            state = None
        if state is not None and state.get("fingerprint") == fingerprint:
            for name, module in task.modules.items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start = int(state["step"])
            counts.update({k: int(v) for k, v in state["counts"].items()})
            history = _read_history(history_path, upto=start)
            log(f"resumed from step {start}")

    def snapshot(step: int) -> None:
        if rank != 0:
            return
        buf = io.BytesIO()
        torch.save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "counts": dict(counts),
                "modules": {n: m.state_dict() for n, m in task.modules.items()},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            buf,
        )
        write_bytes_atomic(state_path, buf.getvalue())
        write_history(history_path, history)

    def finish_history() -> None:
        if rank == 0:
            write_history(history_path, history)

    for module in task.modules.values():
        module.train()
    batch_size = int(config["batch_size"])
    task.batches.wait_s = 0.0
    attach_loader(task.batches, seed=seed, start=start, steps=steps, batch_size=batch_size,
                  num_workers=int(config.get("num_workers") or 0), pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    bar = progress_bar(enabled=progress, total=steps, initial=start, unit="step",
                       desc=f"pretrain {config.get('name', config['method'])}")
    reason = None
    try:
        for step in range(start, steps):
            lr = float(config["lr"]) * lr_factor(step, steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if buffers:
                torch._foreach_copy_(saved, buffers)  # one kernel for every buffer, into tensors kept for it
            task.step = step
            with autocast(precision, device):
                loss, terms = task.loss(step_generator(seed, step), batch_size)
            row = {"step": step + 1, "lr": lr}
            empty = loss is None or (not loss.requires_grad and math.isfinite(float(loss)))
            if world > 1:  # every rank must take the same branch
                empty = bool(_all_max(float(empty), device))
            if empty:  # nothing to learn from in this batch: skip it rather than produce NaN
                counts["empty_batches"] += 1
                row["loss"] = float("nan")
            else:
                value = _all_mean(float(loss.detach()), device) if world > 1 else float(loss.detach())
                reason = None if math.isfinite(value) else f"loss {value}"
                optimizer.zero_grad(set_to_none=True)
                overflow = False
                if reason is None:
                    # (a non-finite loss never gets here, with or without a graph)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    if world > 1:
                        _average_gradients(params, world)
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    task.adjust_gradients()
                    norm = _gradient_norm(params, clip)
                    if not math.isfinite(norm):
                        reason = f"gradient norm {norm}"
                        # fp16: an overflow while the scale is still being found is the scaler's
                        # business (it lowers the scale), not a sign of divergence.
                        overflow = scaler is not None and scaler.get_scale() > MIN_LOSS_SCALE
                row.update(loss=value, grad_norm=norm if reason is None else float("nan"),
                           **{k: float(v) for k, v in terms.items()})
                if reason is None:
                    if scaler is not None:
                        scaler.step(optimizer)  # (finite gradients: it steps)
                        scaler.update()
                    else:
                        optimizer.step()
                    if world > 1:
                        _follow_rank0(buffers)
                    task.after_step()
                    counts["consecutive_bad"], counts["last_good_step"] = 0, step + 1
                    bar.set_postfix(loss=f"{value:.4f}",
                                    img_s=f"{batch_size * (step + 1 - start) / (time.perf_counter() - t0):.1f}")
                else:
                    if scaler is not None and "gradient" in reason:
                        scaler.update()  # unscale_ found the inf: the scale goes down
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for b, kept in zip(buffers, saved):
                            b.copy_(kept)
                    if overflow:
                        counts["overflow_steps"] += 1
                    else:
                        counts["nonfinite_steps"] += 1
                        counts["consecutive_bad"] += 1
            history.append({**row, "empty_batches": counts["empty_batches"],
                            "nonfinite_steps": counts["nonfinite_steps"]})
            bar.update(1)
            if not empty and counts["consecutive_bad"] >= max_bad:
                bar.close()
                finish_history()
                raise Diverged(step + 1, counts["consecutive_bad"], reason, counts["last_good_step"])
            if (step + 1) % state_every == 0 and step + 1 < steps and counts["consecutive_bad"] == 0:
                snapshot(step + 1)
    finally:
        detach_loader(task.batches)
    bar.close()
    finish_history()
    if counts["last_good_step"] == 0 and counts["nonfinite_steps"]:
        # Shorter than max_bad_steps but not one good step: the weights are the initial ones,
        # and calling that a finished pre-training would hide it.
        raise Diverged(steps, counts["consecutive_bad"], reason, 0)
    elapsed = time.perf_counter() - t0
    finite = [r["loss"] for r in history if math.isfinite(r.get("loss", math.nan))]
    wait = task.batches.wait_s / max(elapsed, 1e-9)
    if warning := data_wait_warning(wait, int(config.get("num_workers") or 0), of="the run's time"):
        log(warning)
    return {"steps": steps, "resumed_from": start, "empty_batches": counts["empty_batches"],
            "nonfinite_steps": counts["nonfinite_steps"], "overflow_steps": counts["overflow_steps"],
            "wall_s": elapsed, "images_per_s": batch_size * (steps - start) / max(elapsed, 1e-9),
            "data_wait_fraction": wait, "device": str(device), "precision": precision, "processes": world,
            "num_workers": int(config.get("num_workers") or 0), **peak_memory(device),
            "final_loss": finite[-1] if finite else float("nan")}


def _gradient_norm(params: list, clip) -> float:
    """The gradients' total norm (the NaN check reads it), clipping them to `clip` when set. Without
    clipping, only the norm is taken: clip_grad_norm_ with an infinite limit would also multiply
    every gradient by 1."""
    if clip:
        return float(torch.nn.utils.clip_grad_norm_(params, float(clip)))
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if grads[0].device.type != "cpu":
        return float(torch.nn.utils.get_total_norm(grads))  # one multi-tensor kernel on an accelerator
    # On a CPU, each gradient's squared norm as one BLAS dot product (a single read of it): torch's
    # norm kernels take 2-4x as long, which made the check a few per cent of a step. The square of
    # a finite gradient past ~1e19 overflows float32 where torch's norm may not (a lone element's
    # norm is its absolute value), so a non-finite total is decided by torch's norm; a NaN or
    # infinite element is non-finite in both.
    norm = float(torch.stack([_squared_norm(g) for g in grads]).sum().sqrt())
    return norm if math.isfinite(norm) else float(torch.nn.utils.get_total_norm(grads))


def _squared_norm(g: torch.Tensor) -> torch.Tensor:
    if g.dtype in (torch.float32, torch.float64) and g.is_contiguous():
        v = g.view(-1)
        return torch.dot(v, v).float()
    return torch.linalg.vector_norm(g, dtype=torch.float32).square()


def _all_mean(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _all_max(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _average_gradients(params: list, world: int) -> None:
    """Gradients averaged over the ranks in one flat all-reduce (a parameter a rank's forward
    pass did not reach counts as a zero gradient there, so every rank reduces the same tensors)."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def _follow_rank0(buffers: list) -> None:
    """Every rank's buffers become rank 0's (as DDP's broadcast_buffers does)."""
    if buffers:
        flat = torch._utils._flatten_dense_tensors([b.data.float() for b in buffers])
        dist.broadcast(flat, 0)
        for b, value in zip(buffers, torch._utils._unflatten_dense_tensors(flat, buffers)):
            b.data.copy_(value.to(b.dtype))


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= upto]
