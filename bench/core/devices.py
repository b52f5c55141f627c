"""Where and in what precision a training runs: one rule for pre-training and transfer.

- `device`: `auto` (CUDA when there is a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
- `precision`: `auto` (bf16 on CUDA, fp32 on the CPU), `fp32`, `bf16` (autocast; no loss scaling
  needed, bf16 has fp32's range) or `fp16` (autocast with a gradient scaler, since fp16 gradients
  underflow). bf16 on the CPU is CPU autocast: slower than fp32 on most CPUs, there to test the
  mixed-precision paths without a GPU.
- channels-last memory layout for CNNs on CUDA (cuDNN's fast path), off on the CPU.

The resolved values are recorded with every run (the pre-training summary, the cell record);
they say how a result was computed, not what, so they stay out of fingerprints.
"""

from __future__ import annotations

import contextlib

import torch

from bench.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16's scaler halves its scale on every overflow; below this scale an overflow is no longer
# "the scale is still being found" but a gradient that does not fit fp16: a bad step.
MIN_LOSS_SCALE = 1.0


def resolve_device(requested: str | None) -> torch.device:
    """`auto`/None, `cpu`, `cuda`, `cuda:N` -> a device; a CUDA device that is not there is one line."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise UserError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {requested}: no CUDA device is available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {requested}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def resolve_precision(requested: str | None, device: torch.device) -> str:
    if requested in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if requested not in PRECISIONS:
        raise UserError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device (CPU autocast has bf16 only); use bf16 or fp32")
    return requested


def autocast(precision: str, device: torch.device):
    """The forward pass's mixed-precision context (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16, None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def use_channels_last(requested: bool | None, device: torch.device) -> bool:
    return bool(requested) if requested is not None else device.type == "cuda"


# Of a run's training time: above it, the device is starved and the log says so.
DATA_WAIT_WARNING = 0.30


def data_wait_warning(fraction: float | None, num_workers: int, of: str = "the training time") -> str | None:
    """The log line of a run that spent more than DATA_WAIT_WARNING of its time waiting for data."""
    if fraction is None or fraction <= DATA_WAIT_WARNING:
        return None
    return (f"warning: {100 * fraction:.0f}% of {of} went to waiting for data ({num_workers} loader workers); "
            f"raise num_workers")


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory (MiB)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return out
