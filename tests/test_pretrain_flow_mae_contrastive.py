"""Flow, masked reconstruction and MoCo v2 pre-training: they learn on the generated world, their
checkpoints load in transfer, and their parts (masks, momentum update, queue, InfoNCE, views,
resume) do what they claim."""

import csv
import math

import pytest
import torch

import pretrain.api as api
import pretrain.methods.contrastive as moco
from bench.core.checkpoint import load_checkpoint
from bench.core.errors import UserError
from pretrain.api import build_method, run_pretrain
from pretrain.methods.mae import patch_mask, rectangle_mask
from pretrain.moco_views import moco_v2_view
from tests.learning import first_step_fall, pretrain_before_and_after
from tests.margins import assert_above, assert_below
from transfer.model import build_model

QUIET = {"progress": False, "log": lambda m: None}
SMALL_VIEWS = {"view_size": "40x120"}  # MoCo's per-sample augmentations dominate a tiny test: keep them small


# Identical kernels for the resume comparison, and no oversubscription on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(world, method, **kw):
    return {"name": method, "method": method, "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": 8, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 3, **kw}


def _losses(out_dir, column="loss"):
    with open(out_dir / "history.csv") as f:
        return [float(r[column]) for r in csv.DictReader(f)]


def _mean(values):
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------- mae

def test_mae_learns_and_transfer_reuses_its_decoder_body(tiny_world, tmp_path, monkeypatch):
    # One fixed batch (and mask) before and after (tests/learning.py): 8 steps take its loss to
    # 0.74-0.75 x over seeds and thread counts; a no-op optimiser would leave it equal.
    path, before, after = pretrain_before_and_after(_config(tiny_world, "mae"), tmp_path, monkeypatch, **QUIET)
    assert_below(after, 0.95 * before, "mae: fixed-batch loss after 8 steps vs 0.95 x before")
    losses = _losses(tmp_path)
    masked = _mean(_losses(tmp_path, "masked_fraction"))  # drawn rectangles: about the ratio, 0.5
    assert_above(masked, 0.4, "mae: mean masked fraction (low side)")
    assert_below(masked, 0.6, "mae: mean masked fraction (high side)")
    assert _losses(tmp_path, "reconstruction") == losses
    ckpt = load_checkpoint(path)
    assert ckpt.meta["decoder"]["kind"] == "monodepth2" and ckpt.meta["decoder"]["out_channels"] == 3
    model, info = build_model("resnet10t", ckpt, "monodepth2", "encoder+decoder", num_classes=7)
    assert info["effective"] == "encoder+decoder"
    state = model.decoder.state_dict()
    body = [k for k in ckpt.decoder if not k.startswith("heads.")]
    assert body and all(torch.equal(state[k], ckpt.decoder[k]) for k in body)
    assert all(torch.equal(v, ckpt.encoder[k]) for k, v in model.encoder.state_dict().items())


def test_rectangles_cover_about_the_ratio():
    gen = torch.Generator().manual_seed(0)
    for ratio in (0.3, 0.5, 0.75):
        cover = rectangle_mask(gen, 16, 48, 144, ratio).float().mean(dim=(1, 2))
        assert (cover >= ratio - 0.02).all() and (cover <= ratio + 0.06).all(), (ratio, cover)


def test_patches_align_to_the_grid_and_hit_the_ratio_exactly():
    gen = torch.Generator().manual_seed(0)
    mask = patch_mask(gen, 4, 48, 150, 0.75, 16)  # 150 is not a multiple of 16: partial right column
    assert mask.shape == (4, 48, 150)
    # Extend the partial last column by repeating its edge pixel: a 16 px patch stays constant.
    grid = torch.cat([mask, mask[..., -1:].expand(4, 48, 10)], dim=-1).view(4, 3, 16, 10, 16)
    # Each 16 px patch is all masked or all visible...
    assert torch.equal(grid.all(dim=4).all(dim=2), grid.any(dim=4).any(dim=2))
    # ... and exactly round(0.75 x 30) of the 30 patches are masked in every image.
    assert (grid[:, :, 0, :, 0].sum(dim=(1, 2)) == round(0.75 * 30)).all()


def test_same_generator_same_mask():
    for draw in (lambda g: rectangle_mask(g, 3, 48, 144, 0.5), lambda g: patch_mask(g, 3, 48, 144, 0.5, 16)):
        a, b = draw(torch.Generator().manual_seed(7)), draw(torch.Generator().manual_seed(7))
        c = draw(torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_mae_loss_counts_masked_pixels_only(tiny_world):
    task = build_method(_config(tiny_world, "mae", options={"mask": "patches", "mask_ratio": 0.5}))
    drawn, grads = {}, {}
    draw = task.draw_mask
    task.draw_mask = lambda *a: drawn.setdefault("mask", draw(*a))
    task.decoder.head_conv(0).register_full_backward_hook(lambda m, gi, go: grads.update(out=go[0]))
    loss, terms = task.loss(torch.Generator().manual_seed(3), 2)
    loss.backward()
    hidden = drawn["mask"][:, None].expand_as(grads["out"])
    assert float(terms["masked_fraction"]) == float(drawn["mask"].float().mean())
    assert torch.count_nonzero(grads["out"][~hidden]) == 0  # visible pixels: nothing to learn
    assert torch.count_nonzero(grads["out"][hidden]) > 0.9 * hidden.sum()


# --------------------------------------------------------------------------------------- flow

def test_flow_trains_and_its_decoder_is_never_reused(tiny_world, tmp_path):
    # 3e-4: the photometric loss of a flow at zero is rough; AdamW at 1e-3 overshoots it early.
    path = run_pretrain(_config(tiny_world, "flow", steps=10, lr=3e-4), tmp_path, **QUIET)
    assert {"photometric", "smoothness"} <= set(csv.DictReader(open(tmp_path / "history.csv")).fieldnames)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["decoder"]["kind"] == "flow" and ckpt.decoder
    # The flow heads start at zero (no flow); the optimiser moved every one of them.
    heads = [k for k in ckpt.decoder if k.startswith("heads.")]
    assert len(heads) == 8 and all(bool(ckpt.decoder[k].any()) for k in heads), heads
    with pytest.raises(UserError, match="needs monodepth2 decoder weights") as exc:
        build_model("resnet10t", ckpt, "monodepth2", "encoder+decoder", num_classes=7)
    assert "\n" not in str(exc.value)
    for init in ("encoder", "auto"):
        model, info = build_model("resnet10t", ckpt, "monodepth2", init, num_classes=7)
        assert info["effective"] == "encoder"
        assert all(torch.equal(v, ckpt.encoder[k]) for k, v in model.encoder.state_dict().items())


def test_flow_upsampling_rescales_the_vectors():
    low = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 6, 18)
    from pretrain.methods.flow import Flow

    full = Flow.to_full_resolution(low, (48, 144))  # 8x in both directions
    assert torch.allclose(full[:, 0], torch.full((1, 48, 144), 8.0))
    assert torch.allclose(full[:, 1], torch.full((1, 48, 144), -16.0))


def test_a_flow_step_lowers_the_loss_of_its_batch_as_its_gradient_predicts(tiny_world, tmp_path, monkeypatch):
    # Whether flow learns cannot be told from a few steps on the generated world: its frames move
    # ~9 px apart, far beyond what a flow starting at zero reaches in a few steps, and 10 steps
    # lower the loss of a fixed batch by 3-4 % (the curve's last steps against its first were
    # decided by 2 %). One step of the training loop at a small learning rate is decisive instead:
    # AdamW's first step moves each weight by lr x the sign of its gradient g, so the loss of the
    # batch it stepped on must fall by lr x |g|_1 to first order; a step of the wrong sign raises
    # it as much, a no-op leaves it. The heads start at a flow of half a pixel rather than zero:
    # at zero the bilinear warp has a kink, where any sub-pixel flow blurs the frame towards its
    # neighbour and lowers the loss whichever way it points (a climbing step "fell" 1.6 x lr |g|_1).
    def half_pixel(build):
        def build_at_half_a_pixel(config):
            task = build(config)
            with torch.no_grad():
                for s in range(4):  # heads' weights are zero: the flow is their bias, 2^s x at full size
                    task.decoder.head_conv(s).bias.fill_(0.5 / 2 ** s)
            return task
        return build_at_half_a_pixel

    monkeypatch.setattr(api, "build_method", half_pixel(api.build_method))
    config = _config(tiny_world, "flow", steps=1, lr=1e-5)
    fall = first_step_fall(config, tmp_path, monkeypatch, batch_size=2, **QUIET)  # measured 0.99; -1.01 uphill
    assert_above(fall, 0.5, "flow: one step's fall of its batch's loss / lr x L1 norm of g (low side)")
    assert_below(fall, 1.5, "flow: one step's fall of its batch's loss / lr x L1 norm of g (high side)")


# -------------------------------------------------------------------------------- contrastive

def _moco_config(world, **kw):
    options = {**SMALL_VIEWS, "queue_size": 8, **kw.pop("options", {})}
    return _config(world, "contrastive", batch_size=4, options=options, **kw)


def test_moco_learns_and_its_checkpoint_is_encoder_only(tiny_world, tmp_path):
    # MoCo's loss is not stationary: the queue starts as random unit vectors (easy negatives) and
    # fills with real keys, so its raw curve rises at first by design, and 8 near-identical
    # frames give no loss fall within a few steps. The same run without updates (lr 0: the
    # same batches, views and queue warm-up) is the baseline the optimiser must beat, by a wide
    # margin: at temperature 0.1 (default 0.2) the last 6 steps' loss is 0.66 x the baseline's
    # over seeds and thread counts, against 0.83-0.85 x (a 15 % margin on 1 x) at 0.2.
    options = {"temperature": 0.1}
    path = run_pretrain(_moco_config(tiny_world, steps=12, lr=3e-3, options=options), tmp_path / "run", **QUIET)
    run_pretrain(_moco_config(tiny_world, steps=12, lr=0.0, options=options), tmp_path / "still", **QUIET)
    trained, still = _losses(tmp_path / "run"), _losses(tmp_path / "still")
    assert trained[0] == still[0]
    assert_below(_mean(trained[-6:]), 0.9 * _mean(still[-6:]),
                 "moco: mean loss of the last 6 steps, trained vs 0.9 x lr 0", (trained, still))
    acc = _losses(tmp_path / "run", "contrastive_acc")
    assert all(0 <= a <= 1 for a in acc) and _losses(tmp_path / "run", "info_nce") == trained
    ckpt = load_checkpoint(path)
    assert ckpt.decoder is None and ckpt.meta["decoder"] is None
    assert not any(k.startswith(("key", "head", "queue")) for k in ckpt.encoder)
    model, info = build_model("resnet10t", ckpt, "monodepth2", "auto", num_classes=7)
    assert info["effective"] == "encoder"
    assert all(torch.equal(v, ckpt.encoder[k]) for k, v in model.encoder.state_dict().items())


def test_a_moco_step_lowers_the_info_nce_of_its_batch_as_its_gradient_predicts(tiny_world, tmp_path, monkeypatch):
    # The lr-0 comparison above fails for a no-op optimiser, but an optimiser climbing the loss
    # also leaves the lr-0 run behind in 12 steps (the queue's warm-up dominates them). One step
    # at a small learning rate tells the two apart (tests/learning.py): measured 0.94 x the first-
    # order fall downhill, -1.06 x uphill. The key networks and the queue are compared as they
    # were before the step (the momentum update and the enqueued keys are not the optimiser's).
    config = _moco_config(tiny_world, steps=1, lr=1e-5, options={"temperature": 0.1})
    fall = first_step_fall(config, tmp_path, monkeypatch, batch_size=4, keep=("key_encoder", "key_head", "queue"),
                           **QUIET)
    assert_above(fall, 0.5, "moco: one step's fall of its batch's loss / lr x L1 norm of g (low side)")
    assert_below(fall, 1.5, "moco: one step's fall of its batch's loss / lr x L1 norm of g (high side)")


def test_key_networks_move_only_by_momentum_and_the_queue_advances(tiny_world):
    m = 0.9
    task = build_method(_moco_config(tiny_world, options={"momentum": m}))
    trainable = [p for mod in task.modules.values() for p in mod.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in task.key_encoder.parameters())
    assert not any(p.requires_grad for p in task.key_head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for mod in task.modules.values():
        mod.train()
    loss, _ = task.loss(torch.Generator().manual_seed(0), 4)
    name = next(n for n, _ in task.encoder.named_parameters())
    key_param, query_param = task.key_encoder.get_parameter(name), task.encoder.get_parameter(name)
    key_before = key_param.detach().clone()
    assert torch.equal(key_before, query_param.detach())  # synced at the first step
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.equal(key_param, key_before)  # the optimiser never touches the key encoder
    query_after = query_param.detach().clone()
    assert not torch.equal(query_after, key_before)
    head_k, head_q = task.key_head[0].weight.detach().clone(), task.head[0].weight.detach().clone()
    pending = task._pending.clone()
    assert int(task.queue.ptr) == 0
    task.after_step()
    torch.testing.assert_close(key_param, m * key_before + (1 - m) * query_after, rtol=0, atol=1e-7)
    torch.testing.assert_close(task.key_head[0].weight, m * head_k + (1 - m) * head_q, rtol=0, atol=1e-7)
    assert int(task.queue.ptr) == 4 and torch.equal(task.queue.keys[:4], pending)


def test_queue_pointer_wraps():
    queue = moco.KeyQueue(10, 3)
    batches = [torch.nn.functional.normalize(torch.randn(4, 3), dim=1) for _ in range(3)]
    for b in batches:
        queue.enqueue(b)
    assert int(queue.ptr) == 2  # 12 mod 10
    assert torch.equal(queue.keys[4:8], batches[1])
    assert torch.equal(queue.keys[8:10], batches[2][:2]) and torch.equal(queue.keys[0:2], batches[2][2:])
    assert {"keys", "ptr", "synced"} <= set(queue.state_dict())  # snapshots hold them


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss, logits = moco.info_nce(q, k, negatives, temperature=0.5)
    # Row 1: logits (0.6, 0, -1) / 0.5; row 2: (1, 1, 0) / 0.5; the positive is the first.
    row1 = -1.2 + math.log(math.exp(1.2) + math.exp(0.0) + math.exp(-2.0))
    row2 = -2.0 + math.log(math.exp(2.0) + math.exp(2.0) + math.exp(0.0))
    assert math.isclose(float(loss), (row1 + row2) / 2, rel_tol=1e-6)
    assert torch.allclose(logits, torch.tensor([[1.2, 0.0, -2.0], [2.0, 2.0, 0.0]]))


def test_views_are_reproducible_and_sized():
    images = (torch.rand(3, 3, 48, 144, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a = moco_v2_view(torch.Generator().manual_seed(1), images, (40, 120))
    b = moco_v2_view(torch.Generator().manual_seed(1), images, (40, 120))
    c = moco_v2_view(torch.Generator().manual_seed(2), images, (40, 120))
    assert a.shape == (3, 3, 40, 120) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_bad_view_size_and_small_queue_are_one_line_errors(tiny_world):
    with pytest.raises(UserError, match="view_size"):
        build_method(_moco_config(tiny_world, options={"view_size": "40by120"}))
    with pytest.raises(UserError, match="queue_size") as exc:
        build_method(_moco_config(tiny_world, options={"queue_size": 2}))
    assert "\n" not in str(exc.value)


class _Crash(Exception):
    pass


def test_moco_resume_reproduces_the_uninterrupted_run(tiny_world, tmp_path, monkeypatch):
    # 6 steps of 4 keys through a queue of 8: the pointer wraps, and the resumed run only matches
    # if the snapshot restored the queue, its pointer and the key networks.
    config = _moco_config(tiny_world, steps=6)
    reference = load_checkpoint(run_pretrain(config, tmp_path / "ref", **QUIET))
    original = moco.MoCo.loss
    calls = {"n": 0}

    def crashing(self, gen, batch_size):
        calls["n"] += 1
        if calls["n"] == 5:  # after the snapshot at step 3
            raise _Crash()
        return original(self, gen, batch_size)

    monkeypatch.setattr(moco.MoCo, "loss", crashing)
    with pytest.raises(_Crash):
        run_pretrain(config, tmp_path / "run", **QUIET)
    assert (tmp_path / "run" / "state.pt").exists()
    monkeypatch.setattr(moco.MoCo, "loss", original)
    messages = []
    resumed = load_checkpoint(run_pretrain(config, tmp_path / "run", progress=False, log=messages.append))
    assert "resumed from step 3" in messages
    for k, v in reference.encoder.items():
        torch.testing.assert_close(resumed.encoder[k], v, rtol=1e-5, atol=1e-6)
