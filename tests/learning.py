"""Whether a few pre-training steps learned, judged on one fixed batch before and after.

A loss curve of a few steps mixes learning with batch noise: each step draws its own images and
augmentations, so the mean of the last steps against the mean of the first was decided by a
fraction of a per cent on some machines (a CPU, BLAS or thread count changes the float sums,
the trajectory, and the batches' share of the curve). The loss of ONE batch, drawn from a fixed
generator and evaluated the same way with the initial and with the trained networks, has no batch
noise: a no-op optimiser leaves it exactly equal, a loss of the wrong sign raises it, so any fall
is learning, and the tests ask for a fall far from their bound.

Where a few steps show little (flow on frames ~9 px apart, MoCo on near-identical frames), one
step at a small learning rate is decisive: `first_step_fall` compares the fall of the loss of the
batch it stepped on with what the gradient predicts to first order (about 1 for a step downhill,
about -1 for one uphill, 0 for none).
"""

from __future__ import annotations

import torch

import pretrain.api as api
from bench.core.seeding import step_generator

# Not a training step's generator (the loop draws step k from seed * 1_000_003 + k).
FIXED_BATCH_SEED = 12345


def fixed_batch_loss(task, batch_size: int = 4, step: int | None = None, grad: bool = False):
    """`task`'s loss on one batch (with its augmentations, masks and noise): the batch of the
    generator seeded FIXED_BATCH_SEED, or with `step` the batch the loop draws at that step. The
    networks are in training mode: BatchNorm normalises by the batch's own statistics, as in the
    steps the optimiser took (the running statistics it updates are not used by the loss). The
    global RNG is seeded too, for anything drawn without the generator. A float, or with `grad`
    the loss tensor with its graph."""
    for module in task.modules.values():
        module.train()
    task.step = 0 if step is None else step
    gen = torch.Generator().manual_seed(FIXED_BATCH_SEED) if step is None else \
        step_generator(int(task.config["seed"]), step)
    torch.manual_seed(FIXED_BATCH_SEED)
    with torch.set_grad_enabled(grad):
        loss, _ = task.loss(gen, batch_size)
    return loss if grad else float(loss)


def pretrain_before_and_after(config: dict, out_dir, monkeypatch, batch_size: int = 4, **run_kw):
    """Pre-train `config` with `run_pretrain`; returns (checkpoint path, fixed-batch loss of the
    initial networks, fixed-batch loss of the trained ones, `batch_size` images). The initial
    networks are a second build of the config, which is the run's start (build_method seeds the
    initialisation); the trained ones are the run's own (the pose net and camera head of video
    depth, for one, are not in the checkpoint)."""
    before = fixed_batch_loss(api.build_method(api.resolve_config(config)), batch_size)
    path, trained = _run_keeping_the_task(config, out_dir, monkeypatch, **run_kw)
    return path, before, fixed_batch_loss(trained, batch_size)


def first_step_fall(config: dict, out_dir, monkeypatch, batch_size: int, keep: tuple[str, ...] = (), **run_kw) -> float:
    """One step of `run_pretrain` (config: 1 step at a small lr): the fall of the loss of the batch it
    stepped on, over lr x |g|_1, the fall to first order (AdamW's first step moves each weight by
    lr x g / (|g| + eps)). `keep`: modules of `task.modules` that change beside the optimiser's step
    (a momentum encoder, a queue of keys), evaluated after the step as they were before it."""
    assert int(config["steps"]) == 1
    start = api.build_method(api.resolve_config(config))
    loss = fixed_batch_loss(start, batch_size, step=0, grad=True)
    loss.backward()
    grads = [p.grad for m in start.modules.values() for p in m.parameters() if p.grad is not None]
    predicted = float(config["lr"]) * float(sum((g * g / (g.abs() + 1e-8)).sum() for g in grads))
    _, trained = _run_keeping_the_task(config, out_dir, monkeypatch, **run_kw)
    for name in keep:
        trained.modules[name].load_state_dict(start.modules[name].state_dict())
    return (float(loss.detach()) - fixed_batch_loss(trained, batch_size, step=0)) / predicted


def _run_keeping_the_task(config: dict, out_dir, monkeypatch, **run_kw):
    """(checkpoint path, the task `run_pretrain` trained), kept by a spy on its build."""
    built = []
    build = api.build_method
    monkeypatch.setattr(api, "build_method", lambda c: built.append(build(c)) or built[-1])
    path = api.run_pretrain(config, out_dir, **run_kw)
    monkeypatch.setattr(api, "build_method", build)
    assert len(built) == 1, "expected one build of the method in run_pretrain"
    return path, built[0]
