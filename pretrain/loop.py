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
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import torch
from bench.core.atomic import write_bytes_atomic
from bench.core.seeding import step_generator
from bench.core.progress import bar as progress_bar


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
    (name -> nn.Module) and `loss(generator, batch_size) -> (loss | None, terms)`."""
    steps, seed = int(config["steps"]), int(config["seed"])
    state_every = int(config.get("state_every", 100))
    max_bad = int(config.get("max_bad_steps", 20))
    clip = config.get("grad_clip")
    warmup = min(int(config.get("warmup_steps", 0)) or max(1, steps // 20), steps)
    params = [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    # Buffers change in the forward pass (BatchNorm statistics, a MoCo queue): a skipped step must
    # restore them too, or one NaN batch would poison the running statistics for good.
    buffers = [b for m in task.modules.values() for b in m.buffers()]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config.get("weight_decay", 1e-4)))
    state_path, history_path = out_dir / "state.pt", out_dir / "history.csv"

    start, history = 0, []
    counts = {"empty_batches": 0, "nonfinite_steps": 0, "consecutive_bad": 0, "last_good_step": 0}
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign snapshot is not worth dying for: start over
            log(f"ignoring unreadable snapshot {state_path}: {exc}")
            state = None
        if state is not None and state.get("fingerprint") == fingerprint:
            for name, module in task.modules.items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            counts.update({k: int(v) for k, v in state["counts"].items()})
            history = _read_history(history_path, upto=start)
            log(f"resumed from step {start}")

    def snapshot(step: int) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "counts": dict(counts),
                "modules": {n: m.state_dict() for n, m in task.modules.items()},
                "optimizer": optimizer.state_dict(),
            },
            buf,
        )
        write_bytes_atomic(state_path, buf.getvalue())
        write_history(history_path, history)

    for module in task.modules.values():
        module.train()
    t0 = time.perf_counter()
    bar = progress_bar(enabled=progress, total=steps, initial=start, unit="step",
                       desc=f"pretrain {config.get('name', config['method'])}")
    batch_size = int(config["batch_size"])
    reason = None
    for step in range(start, steps):
        lr = float(config["lr"]) * lr_factor(step, steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        saved = [b.detach().clone() for b in buffers]
        loss, terms = task.loss(step_generator(seed, step), batch_size)
        row = {"step": step + 1, "lr": lr}
        empty = loss is None or (not loss.requires_grad and math.isfinite(float(loss)))
        if empty:  # nothing to learn from in this batch: skip it rather than produce NaN
            counts["empty_batches"] += 1
            row["loss"] = float("nan")
        else:
            value = float(loss.detach())
            reason = None if math.isfinite(value) else f"loss {value}"
            optimizer.zero_grad(set_to_none=True)
            if reason is None:
                loss.backward()  # (a non-finite loss never gets here, with or without a graph)
                norm = float(torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else math.inf))
                reason = None if math.isfinite(norm) else f"gradient norm {norm}"
            row.update(loss=value, grad_norm=norm if reason is None else float("nan"),
                       **{k: float(v) for k, v in terms.items()})
            if reason is None:
                optimizer.step()
                task.after_step()
                counts["consecutive_bad"], counts["last_good_step"] = 0, step + 1
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{batch_size * (step + 1 - start) / (time.perf_counter() - t0):.1f}")
            else:
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for b, kept in zip(buffers, saved):
                        b.copy_(kept)
                counts["nonfinite_steps"] += 1
                counts["consecutive_bad"] += 1
        history.append({**row, "empty_batches": counts["empty_batches"], "nonfinite_steps": counts["nonfinite_steps"]})
        bar.update(1)
        if not empty and counts["consecutive_bad"] >= max_bad:
            bar.close()
            write_history(history_path, history)
            raise Diverged(step + 1, counts["consecutive_bad"], reason, counts["last_good_step"])
        if (step + 1) % state_every == 0 and step + 1 < steps and counts["consecutive_bad"] == 0:
            snapshot(step + 1)
    bar.close()
    write_history(history_path, history)
    if counts["last_good_step"] == 0 and counts["nonfinite_steps"]:
        # Shorter than max_bad_steps but not one good step: the weights are the initial ones,
        # and calling that a finished pre-training would hide it.
        raise Diverged(steps, counts["consecutive_bad"], reason, 0)
    elapsed = time.perf_counter() - t0
    finite = [r["loss"] for r in history if math.isfinite(r.get("loss", math.nan))]
    return {"steps": steps, "resumed_from": start, "empty_batches": counts["empty_batches"],
            "nonfinite_steps": counts["nonfinite_steps"], "wall_s": elapsed,
            "images_per_s": batch_size * (steps - start) / max(elapsed, 1e-9),
            "final_loss": finite[-1] if finite else float("nan")}


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= upto]
