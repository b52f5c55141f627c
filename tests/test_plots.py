"""bench.plots: every figure renders to PNG and SVG from a small hand-made board and record set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import plots

BACKBONES = ["random", "depth", "cls"]
DATASETS = ["synth", "voc"]
PROTOCOLS = ["full", "frozen", "linear"]
SIZES = [16, 32]


def make_board() -> pd.DataFrame:
    rows = []
    for i, (dataset, protocol, backbone, n) in enumerate(
            (d, p, b, n) for d in DATASETS for p in PROTOCOLS for b in BACKBONES for n in SIZES):
        mean = 20.0 + 3 * BACKBONES.index(backbone) + 5 * PROTOCOLS.index(protocol) + 0.1 * n + 0.01 * i
        std = 1.0 + 0.1 * i
        rows.append({"backbone": backbone, "method": backbone, "arch": "resnet10t", "dataset": dataset,
                     "protocol": protocol, "decoder": "fpn", "init": "encoder", "train_size": n,
                     "n_seeds": 2, "n_not_ok": 0, "miou_mean": mean, "miou_std": std,
                     "miou_ci_low": mean - 2 * std, "miou_ci_high": mean + 2 * std,
                     "pixel_acc_mean": mean + 30, "mean_class_acc_mean": mean + 5})
    board = pd.DataFrame(rows)
    # A cell with a single seed (no CI) and one where every seed failed (no mean either).
    single = (board.dataset == "voc") & (board.backbone == "depth") & (board.protocol == "linear")
    board.loc[single, ["n_seeds", "miou_ci_low", "miou_ci_high"]] = [1, np.nan, np.nan]
    dead = (board.dataset == "voc") & (board.backbone == "cls") & (board.protocol == "frozen") & (board.train_size == 16)
    board.loc[dead, ["n_seeds", "n_not_ok", "miou_mean", "miou_std", "miou_ci_low", "miou_ci_high"]] = \
        [0, 2, np.nan, np.nan, np.nan, np.nan]
    return board


def make_records() -> pd.DataFrame:
    rows = []
    for dataset in DATASETS:
        for protocol in PROTOCOLS:
            for backbone in BACKBONES:
                for n in SIZES:
                    for seed in (0, 1):
                        final = 0.3 + 0.02 * BACKBONES.index(backbone) + 0.01 * seed
                        curve = [{"step": s, "loss": 2.0 / (1 + s), "miou": final * (s + 1) / 11, "pixel_acc": 0.5}
                                 for s in (0, 5, 10)]
                        rows.append({"backbone": backbone, "method": backbone, "arch": "resnet10t",
                                     "dataset": dataset, "protocol": protocol, "decoder": "fpn", "init": "encoder",
                                     "train_size": n, "seed": seed, "status": "ok", "miou": 100 * final,
                                     "pixel_acc": 50.0, "mean_class_acc": 40.0, "curve": curve})
    rows.append({**rows[0], "seed": 2, "status": "failed", "miou": np.nan, "pixel_acc": np.nan,
                 "mean_class_acc": np.nan, "curve": []})
    return pd.DataFrame(rows)


def check_files(paths, n_figures):
    assert len(paths) == 2 * n_figures
    assert sorted(p.suffix for p in paths) == [".png"] * n_figures + [".svg"] * n_figures
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0, p
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                assert im.format == "PNG" and min(im.size) > 100
        else:
            assert "<svg" in p.read_text()[:2000]


@pytest.fixture
def colours():
    return plots.backbone_colours(BACKBONES)


def test_colours_stable_and_distinct():
    full = plots.backbone_colours(BACKBONES + ["extra"])
    assert len(set(full.values())) == 4
    assert all(len(c) == 3 and all(0 <= x <= 1 for x in c) for c in full.values())
    # The same backbone keeps its colour whatever else is plotted, as long as the manifest order is the same.
    assert plots.backbone_colours(BACKBONES) == {b: full[b] for b in BACKBONES}
    many = plots.backbone_colours([f"b{i}" for i in range(13)])
    assert len(set(many.values())) == 10 and many["b10"] == many["b0"]
    styles = {(many[b], plots._hatch(many, b), plots._marker(many, b)) for b in many}
    assert len(styles) == 13  # past 10 backbones, the hatch/marker tells the cycles apart
    # A plot given a subset of the board uses the manifest colours, not colours by position in the subset.
    board = make_board()
    (_, fig, bars), _ = plots._bars_figures(board[board.backbone != "random"], plots.backbone_colours(BACKBONES))
    depth = board[(board.backbone == "depth") & (board.dataset == "synth")].index[0]
    assert tuple(bars[depth].get_facecolor()[:3]) == pytest.approx(full["depth"])


def test_bar_heights_are_the_board_miou(colours):
    board = make_board()
    figures = plots._bars_figures(board, colours)
    assert [name for name, _, _ in figures] == ["bars_synth", "bars_voc"]
    seen = set()
    for name, fig, bars in figures:
        dataset = name.removeprefix("bars_")
        expect = board[(board.dataset == dataset) & board.miou_mean.notna()]
        assert set(bars) == set(expect.index)
        for idx, row in expect.iterrows():
            assert bars[idx].get_height() == pytest.approx(row.miou_mean)
            assert bars[idx].get_height() != pytest.approx(row.pixel_acc_mean)
            # Nothing is clipped: every bar (and its interval) fits under its panel's y range.
            top = bars[idx].axes.get_ylim()[1]
            assert row.miou_mean <= top and (not np.isfinite(row.miou_ci_high) or row.miou_ci_high <= top)
        # Two train sizes: one panel per size; every bar drawn is one of ours.
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.patches]
        assert len(axes) == 2
        assert sum(len(ax.patches) for ax in axes) == len(expect)
        seen |= set(bars)
        fig.clear()
    assert len(seen) == board.miou_mean.notna().sum()


def test_write_all_renders_everything(tmp_path):
    import matplotlib.pyplot as plt

    board, records = make_board(), make_records()
    before = plt.get_fignums()
    paths = plots.write_all(board, records, tmp_path / "plots", BACKBONES)
    assert plt.get_fignums() == before  # nothing left open in pyplot
    names = sorted({p.stem for p in paths})
    assert names == sorted(f"{kind}_{d}" for kind in ("bars", "few_shot", "learning_curves", "frozen_vs_full")
                           for d in DATASETS)
    check_files(paths, len(names))
    assert all(p.parent == tmp_path / "plots" for p in paths)


def test_few_shot_needs_two_train_sizes(tmp_path, colours):
    board = make_board()
    assert plots.plot_few_shot(board[board.train_size == 16], tmp_path, colours) == []
    # Only the dataset with two sizes gets a figure.
    mixed = board[(board.dataset == "synth") | (board.train_size == 32)]
    assert sorted(p.name for p in plots.plot_few_shot(mixed, tmp_path, colours)) == ["few_shot_synth.png",
                                                                                     "few_shot_synth.svg"]


def test_frozen_vs_full_needs_both_protocols(tmp_path, colours):
    board = make_board()
    assert plots.plot_frozen_vs_full(board[board.protocol != "frozen"], tmp_path, colours) == []
    assert plots.plot_frozen_vs_full(board[board.protocol != "full"], tmp_path, colours) == []
    check_files(plots.plot_frozen_vs_full(board[board.protocol != "linear"], tmp_path, colours), 2)


def test_one_train_size_and_all_nan_cis(tmp_path):
    board = make_board()
    board = board[board.train_size == 32].copy()
    board[["miou_ci_low", "miou_ci_high"]] = np.nan
    paths = plots.write_all(board, None, tmp_path, BACKBONES)
    assert sorted({p.stem for p in paths}) == ["bars_synth", "bars_voc", "frozen_vs_full_synth", "frozen_vs_full_voc"]
    check_files(paths, 4)


def test_failed_records_only_draw_nothing(tmp_path, colours):
    records = make_records()
    records = records[records.dataset == "synth"].reset_index(drop=True)
    assert plots.plot_learning_curves(records[records.status != "ok"], tmp_path, colours) == []
    assert plots.plot_learning_curves(records.drop(columns="curve"), tmp_path, colours) == []
    # A record whose curve is NaN (missing in the frame) and a curve point without an mIoU are skipped.
    records.loc[0, "curve"] = math.nan
    records.at[1, "curve"] = [{"step": 0, "loss": 1.0}, {"step": 3, "loss": 0.5, "miou": 0.2, "pixel_acc": 0.4}]
    check_files(plots.plot_learning_curves(records, tmp_path, colours), 1)


def test_learning_curves_are_percent(colours, tmp_path):
    pts = plots._curve_points(make_records())
    assert pts.curve_miou.max() > 1.0 and pts.curve_miou.max() <= 100.0
    assert set(pts.status) == {"ok"}


def test_cka_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.uniform(size=(4, 5))
    paths = plots.plot_cka_heatmap(small, [f"l{i}" for i in range(4)], [f"m{i}" for i in range(5)], "CKA",
                                   tmp_path / "cka" / "depth_vs_random", "random layers", "depth layers")
    assert [p.name for p in paths] == ["depth_vs_random.png", "depth_vs_random.svg"]
    check_files(paths, 1)
    big = rng.uniform(size=(45, 45))
    big[0, 0] = np.nan
    names = [f"blocks.{i}.attn" for i in range(45)]
    check_files(plots.plot_cka_heatmap(big, names, names, "many layers", tmp_path / "big", "x", "y"), 1)
    with pytest.raises(ValueError):
        plots.plot_cka_heatmap(small, ["a"], ["b"], "t", tmp_path / "bad", "x", "y")



def test_a_tall_bar_in_a_later_panel_is_not_clipped(colours):
    board = make_board()
    last = board[(board.dataset == "synth") & board.miou_mean.notna()].train_size.max()
    tall = board[(board.dataset == "synth") & (board.train_size == last) & board.miou_mean.notna()].index[0]
    board.loc[tall, ["miou_mean", "miou_ci_low", "miou_ci_high"]] = [97.0, 96.0, 98.0]
    (_, fig, bars), *_ = plots._bars_figures(board, colours)
    assert bars[tall].axes.get_ylim()[1] >= 98.0
    fig.clear()


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_bars_mark_reused_decoders_only_where_a_comparison_mixes_inits():
    board = make_board()
    board["init_effective"] = np.where(board["backbone"] == "depth", "encoder+decoder", "encoder")
    board["mixed_init"] = board["dataset"] == "synth"  # voc: say its rows share one init
    figures = {name: fig for name, fig, _ in plots._bars_figures(board, plots.backbone_colours(BACKBONES))}
    synth, voc = figures["bars_synth"], figures["bars_voc"]
    # One mark per depth bar of synth (3 protocols x 2 sizes), none where the init is shared.
    assert _texts(synth).count(plots.REUSED_MARK) == 6 and plots.REUSED_MARK not in _texts(voc)
    assert any("pre-trained decoder reused" in t.get_text() for leg in synth.legends for t in leg.get_texts())


def test_no_plot_claims_error_bars_it_does_not_draw():
    board = make_board()
    one_seed = board.assign(n_seeds=1, miou_ci_low=np.nan, miou_ci_high=np.nan)
    (_, fig, _), *_ = plots._bars_figures(one_seed[one_seed.dataset == "synth"], plots.backbone_colours(BACKBONES))
    assert "no error bars" in fig._suptitle.get_text() and "95 % CI" not in fig._suptitle.get_text()
    (_, fig, _), *_ = plots._bars_figures(board[board.dataset == "synth"], plots.backbone_colours(BACKBONES))
    assert "error bars: 95 % CI over seeds" in fig._suptitle.get_text()


def test_curve_points_keep_the_split_each_curve_was_measured_on():
    records = make_records()
    records.loc[0, "curve"] = [{"step": 1, "miou": 0.2, "split": "validation"}]
    pts = plots._curve_points(records)
    assert {"validation", "evaluation set"} == set(pts["split"])  # old records: the evaluation set
