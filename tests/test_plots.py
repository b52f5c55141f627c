"""bench.report.plots: every figure renders to PNG and SVG from a small hand-made board and record set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.report import plots

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


# ---------------------------------------------------------------- panels and shared scales
def _decoder_records() -> pd.DataFrame:
    """Two decoders for full/frozen, the linear probe's own decoder for linear: of the 3 × 3
    protocol × decoder combinations only 5 exist. Steps differ per protocol (linear trains longer)."""
    rows = []
    for protocol, decoders in (("full", ["monodepth2", "deeplabv3"]), ("frozen", ["monodepth2", "deeplabv3"]),
                               ("linear", ["linear"])):
        steps = (0, 50, 100) if protocol == "linear" else (0, 20, 40)
        for decoder in decoders:
            for backbone in BACKBONES:
                final = 0.3 + 0.05 * BACKBONES.index(backbone) + 0.1 * PROTOCOLS.index(protocol)
                curve = [{"step": s, "miou": final * (s + 10) / (steps[-1] + 10), "split": "validation"}
                         for s in steps]
                rows.append({"backbone": backbone, "method": backbone, "arch": "resnet18", "dataset": "synth",
                             "protocol": protocol, "decoder": decoder, "init": "auto", "train_size": 16,
                             "seed": 0, "status": "ok", "miou": 100 * final, "curve": curve})
    return pd.DataFrame(rows)


def test_learning_curve_grid_has_exactly_the_panels_with_data(colours):
    records = _decoder_records()
    [(name, fig, panels)] = plots._learning_curve_figures(records, colours)
    assert name == "learning_curves_synth"
    expect = {"full · decoder=monodepth2", "full · decoder=deeplabv3", "frozen · decoder=monodepth2",
              "frozen · decoder=deeplabv3", "linear · decoder=linear"}
    assert set(panels) == expect
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert sorted(ax.get_title() for ax in visible) == sorted(expect)  # no empty panel for linear × deeplabv3
    for title, ax in panels.items():
        protocol, decoder = title.split(" · decoder=")
        sub = records[(records.protocol == protocol) & (records.decoder == decoder)]
        assert len(ax.lines) == sub.backbone.nunique()
        ys = sorted(round(float(y), 6) for line in ax.lines for y in line.get_ydata())
        want = sorted(round(100 * pt["miou"], 6) for curve in sub.curve for pt in curve)
        assert ys == want
    # One x (steps) and y scale for every panel, covering the real steps (0..100), not a 0–1 default.
    xlims = {tuple(np.round(ax.get_xlim(), 6)) for ax in panels.values()}
    ylims = {tuple(np.round(ax.get_ylim(), 6)) for ax in panels.values()}
    assert len(xlims) == 1 and len(ylims) == 1
    (lo, hi), = xlims
    assert lo <= 0 and hi >= 100
    fig.clear()


def test_frozen_vs_full_panels_share_one_miou_scale(colours):
    """One panel spans 50–53.5, the other 35–72: on their own ranges a 0.3-point gap would look huge."""
    rows = []
    for decoder, values in (("monodepth2", {"random": (50.0, 50.3), "depth": (52.9, 53.5), "cls": (51.0, 51.2)}),
                            ("deeplabv3", {"random": (35.0, 72.0), "depth": (40.0, 60.0), "cls": (45.0, 50.0)})):
        for backbone, (frozen, full) in values.items():
            for protocol, m in (("frozen", frozen), ("full", full)):
                rows.append({"backbone": backbone, "dataset": "synth", "protocol": protocol, "decoder": decoder,
                             "init": "auto", "train_size": 16, "miou_mean": m, "miou_ci_low": np.nan,
                             "miou_ci_high": np.nan})
    [(name, fig, axes)] = plots._frozen_vs_full_figures(pd.DataFrame(rows), colours)
    assert name == "frozen_vs_full_synth" and len(axes) == 2
    fig.canvas.draw()
    lims = [tuple(ax.get_xlim()) for ax in axes]
    assert lims[0] == pytest.approx(lims[1])
    assert lims[0][0] < 35.0 and lims[0][1] > 72.0  # every point of both panels is inside the shared range
    fig.clear()


def test_few_shot_panels_share_scales(colours):
    board = make_board()
    fig, panels = plots._line_grid_figure(board[board.dataset == "synth"], colours,
                                          lambda ax, s, b: ax.plot(s.train_size, s.miou_mean), "n", "t")
    assert set(panels) == {"full", "frozen", "linear"}
    assert len({tuple(ax.get_xlim()) for ax in panels.values()}) == 1
    assert len({tuple(ax.get_ylim()) for ax in panels.values()}) == 1
    fig.clear()


# ---------------------------------------------------------------- CKA across backbones, pre-training losses
LAYERS = ["act1", "layer1", "layer2", "layer3"]


def cka_document(fingerprint, diagonal, within=None):
    """A `cka.json` as a full cell writes it: off-diagonal entries below the diagonal's, so a figure
    that drew a row or column instead of the diagonal would be caught."""
    matrix = [[d if i == j else d / 3 for j, d in enumerate(diagonal)] for i in range(len(diagonal))]
    doc = {"schema": 1, "kind": "pretrained_vs_finetuned", "fingerprint": fingerprint, "layers_a": LAYERS,
           "layers_b": LAYERS, "matrix": matrix, "probe": {"images": 8}}
    if within is not None:
        doc["within"] = {"layer": LAYERS[0], "pretrained": within[0], "finetuned": within[1]}
    return doc


def cka_records(tmp_path, decoders=("monodepth2", "deeplabv3")):
    """Full cells (and a frozen one, which has no CKA) with cka.json documents; returns (frame, documents)."""
    import json

    rows, docs = [], {}
    for d_i, decoder in enumerate(decoders):
        for b_i, backbone in enumerate(BACKBONES):
            for protocol in ("full", "frozen"):
                run = tmp_path / "runs" / f"{backbone}__{protocol}__{decoder}"
                run.mkdir(parents=True)
                fp = f"fp-{backbone}-{protocol}-{decoder}"
                if protocol == "full":
                    diag = [1.0 - 0.05 * (b_i + 1) * j - 0.01 * d_i for j in range(len(LAYERS))]
                    within = None if backbone == "cls" else (  # cls: a document from before `within`
                        [1.0, 0.8 - 0.1 * b_i, 0.6, 0.5 + 0.1 * b_i], [1.0, 0.7, 0.5 - 0.1 * b_i, 0.4])
                    docs[(backbone, decoder)] = cka_document(fp, diag, within)
                    (run / "cka.json").write_text(json.dumps(docs[(backbone, decoder)]))
                rows.append({"backbone": backbone, "dataset": "synth", "protocol": protocol, "decoder": decoder,
                             "init": "auto", "train_size": 16, "seed": 0, "status": "ok",
                             "record": str(run / "record.json"), "config": {"fingerprint": fp}})
    return pd.DataFrame(rows), docs


def test_cka_across_lines_are_the_stored_diagonals(tmp_path, colours):
    from bench.report.layer_cka import cka_across_frame

    df, docs = cka_records(tmp_path)
    # A cell whose stored matrix is of another fingerprint is not taken.
    df.loc[(df.backbone == "random") & (df.decoder == "deeplabv3") & (df.protocol == "full"), "config"] = \
        [{"fingerprint": "stale"}]
    frame = cka_across_frame(df)
    figures = {name: (fig, axes) for name, fig, axes in plots._cka_across_figures(frame, colours)}
    assert set(figures) == {"cka_across_synth_full_monodepth2_init-auto_n16",
                            "cka_across_synth_full_deeplabv3_init-auto_n16"}
    for decoder in ("monodepth2", "deeplabv3"):
        fig, axes = figures[f"cka_across_synth_full_{decoder}_init-auto_n16"]
        assert list(axes) == ["pretrained_vs_finetuned", "within_pretrained", "within_finetuned"]
        drawn = {line.get_label(): list(line.get_ydata()) for line in axes["pretrained_vs_finetuned"].lines}
        expect = {b: [docs[(b, decoder)]["matrix"][i][i] for i in range(len(LAYERS))] for b in BACKBONES
                  if not (b == "random" and decoder == "deeplabv3")}
        assert drawn.keys() == expect.keys()
        for b in expect:
            assert drawn[b] == pytest.approx(expect[b])
        for side in ("pretrained", "finetuned"):
            within = {line.get_label(): list(line.get_ydata()) for line in axes[f"within_{side}"].lines}
            assert "cls" not in within  # its document predates `within`: no line rather than a made-up one
            for b, ys in within.items():
                assert ys == pytest.approx(docs[(b, decoder)]["within"][side])
        assert [t.get_text() for t in axes["pretrained_vs_finetuned"].get_xticklabels()] == LAYERS
        assert len({tuple(ax.get_ylim()) for ax in axes.values()}) == 1  # one CKA scale
        assert decoder in fig._suptitle.get_text() and "full" in fig._suptitle.get_text()
        fig.clear()
    paths = plots.plot_cka_across(frame[frame.decoder == "deeplabv3"], tmp_path / "plots", colours)
    check_files(paths, 1)
    with Image.open(next(p for p in paths if p.suffix == ".png" and "deeplabv3" in p.name)) as im:
        assert im.info[plots.SUBJECT_KEY] == "synth, full fine-tuning, deeplabv3 decoder, init auto, 16 training images"


def test_pretrain_loss_panels_are_the_histories(tmp_path, colours):
    histories = {b: (f"method_{b}", pd.DataFrame({"step": range(1, 41), "loss": [3.0 / (s + i) for s in range(1, 41)]}))
                 for i, b in enumerate(BACKBONES)}
    fig, panels = plots._pretrain_loss_figure(histories, colours, "tiny")
    assert list(panels) == BACKBONES
    for b, ax in panels.items():
        raw = ax.lines[0]
        assert list(raw.get_xdata()) == list(range(1, 41))
        assert list(raw.get_ydata()) == pytest.approx(list(histories[b][1]["loss"]))
        assert ax.get_title() == f"{b} (method_{b})" and ax.get_xlabel() == "step"
    fig.clear()
    check_files(plots.plot_pretrain_losses(histories, tmp_path, colours, "tiny"), 1)
    assert plots.plot_pretrain_losses({}, tmp_path, colours, "tiny") == []
