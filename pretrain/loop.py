"""The pre-training loop shared by every method: resumable, deterministic, NaN-aware.

Batches and augmentations are drawn from a generator seeded by (seed, step), so a run resumed
from a snapshot sees exactly the batches an uninterrupted run would. Snapshots (`state.pt`:
weights, optimiser state, step) are written atomically every `state_every` steps and loaded with
`torch.load(weights_only=True)`; a snapshot whose config fingerprint differs is ignored.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import torch
from bench.atomic import write_bytes_atomic
from bench.augment import step_generator
from bench.progress import bar as progress_bar


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step


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
    warmup = min(int(config.get("warmup_steps", 0)) or max(1, steps // 20), steps)
    params = [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config.get("weight_decay", 1e-4)))
    state_path, history_path = out_dir / "state.pt", out_dir / "history.csv"

    start, history, skipped = 0, [], 0
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
            start, skipped = int(state["step"]), int(state["skipped"])
            history = _read_history(history_path, upto=start)
            log(f"resumed from step {start}")

    def snapshot(step: int) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "skipped": skipped,
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
    for step in range(start, steps):
        lr = float(config["lr"]) * lr_factor(step, steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, terms = task.loss(step_generator(seed, step), int(config["batch_size"]))
        if loss is None:  # no valid pixel in this batch: skip it rather than produce NaN
            skipped += 1
        else:
            value = float(loss.detach())
            if not math.isfinite(value):
                write_history(history_path, history)
                raise Diverged(step + 1, value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append({"step": step + 1, "loss": value, "lr": lr, **{k: float(v) for k, v in terms.items()}})
            bar.set_postfix(loss=f"{value:.4f}")
        bar.update(1)
        if (step + 1) % state_every == 0 and step + 1 < steps:
            snapshot(step + 1)
    bar.close()
    write_history(history_path, history)
    elapsed = time.perf_counter() - t0
    return {"steps": steps, "resumed_from": start, "skipped_batches": skipped, "wall_s": elapsed,
            "final_loss": history[-1]["loss"] if history else float("nan")}


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= upto]
