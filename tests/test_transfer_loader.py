"""How a transfer cell runs, on CPU: DataLoader workers render the same views (identical records
but for timings), the record states precision and throughput, and fp16 needs CUDA."""

import pytest
import torch

from bench.core.errors import UserError
from tests.conftest import cell_config
from transfer.api import Cell, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")
TIMINGS = {"timings", "finished_at", "config", "feature_cache"}


def _run(world, ckpt, out, **settings):
    cell = Cell("b", "m", "resnet10t", "synth", "full", "monodepth2", 4, 0)
    config = cell_config(world, cell, checkpoint=ckpt, steps=4, batch_size=2, eval_every=2, **settings)
    return run_cell(config, out, progress=False)


@pytest.mark.parametrize("geometry", [{}, {"crop": "48x64"}])  # a random crop: the workers measure the sizes
def test_loader_workers_give_the_same_cell(tiny_world, tiny_depth_ckpt, tmp_path, geometry):
    plain = _run(tiny_world, tiny_depth_ckpt, tmp_path / "w0", dataset=geometry)
    workers = _run(tiny_world, tiny_depth_ckpt, tmp_path / "w2", num_workers=2, dataset=geometry)
    assert workers["config"]["num_workers"] == 2 and "num_workers" not in plain["config"]
    assert workers["config"]["fingerprint"] == plain["config"]["fingerprint"]
    assert workers["num_workers"] == 2 and plain["num_workers"] == 0
    same = lambda r: {k: v for k, v in r.items() if k not in TIMINGS | {"num_workers"}}  # noqa: E731
    assert same(workers) == same(plain)  # metrics, curves, per-image counts, encoder digests
    for record in (plain, workers):
        t = record["timings"]
        assert record["precision"] == "fp32" and t["images_per_s"] > 0 and 0 <= t["data_wait_fraction"] < 1


def test_bf16_on_cpu_and_fp16_needs_cuda(tiny_world, tiny_depth_ckpt, tmp_path):
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path / "bf16", precision="bf16")
    assert record["status"] == "ok" and record["precision"] == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16 needs a CUDA device"):
            _run(tiny_world, tiny_depth_ckpt, tmp_path / "fp16", precision="fp16")


def test_evaluation_images_beyond_the_memory_budget_are_read_back_from_disk(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                            monkeypatch):
    import transfer.data as data

    cell = Cell("b", "m", "resnet10t", "synth", "full", "monodepth2", 4, 0)
    config = cell_config(tiny_world, cell, checkpoint=tiny_depth_ckpt, steps=4, batch_size=2, eval_every=1)
    in_memory = run_cell(config, tmp_path / "memory", progress=False)
    decoded, original = [], data.read_pair
    monkeypatch.setattr(data, "read_pair", lambda dataset, sample: decoded.append(sample.stem) or
                        original(dataset, sample))
    spilled = run_cell({**config, "image_cache_bytes": 0}, tmp_path / "disk", progress=False)
    cache = spilled["image_cache"]["validation"]
    # 4 validation passes: each image decoded once, then read back three times
    assert cache["prepared"] == spilled["validation"]["images"] and cache["from_disk"] == 3 * cache["prepared"]
    assert len(decoded) == len(set(decoded))  # no image decoded twice
    assert spilled["metrics"] == in_memory["metrics"] and spilled["curve"] == in_memory["curve"]
    assert not (tmp_path / "disk" / "image_cache").exists()  # removed when the cell ends


def test_a_failed_cell_removes_its_spilled_images_and_keeps_its_state(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                      monkeypatch):
    import transfer.train as train_mod

    def fail(*_args, **_kw):
        raise RuntimeError("injected failure after training")

    monkeypatch.setattr(train_mod, "_record", fail)
    cell = Cell("b", "m", "resnet10t", "synth", "full", "monodepth2", 4, 0)
    config = cell_config(tiny_world, cell, checkpoint=tiny_depth_ckpt, steps=2, batch_size=2, eval_every=1,
                         state_every=1)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_cell({**config, "image_cache_bytes": 0}, tmp_path / "cell", progress=False)
    assert not (tmp_path / "cell" / "image_cache").exists()  # spilled evaluation images: a cache, not a result
    assert (tmp_path / "cell" / "state.pt").is_file()  # what a re-run resumes from stays
