"""Paper-layout tables, the resolution table and `--compare`, from hand-made records and frames.

Each test reads the numbers back out of the Markdown (parsed into a {(row, column): cell} grid)
or the LaTeX, so a number in the wrong cell, a lost bold or an unescaped underscore fails."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from fixtures import one_line_error

from bench.report.aggregate import METRICS, write_reports
from bench.cli import main
from bench.report.compare import read_published
from bench.report.table_format import Cell, Table, tex_escape, to_latex, to_markdown
from bench.report.tables import resolution_tables

FIXTURE_CSV = Path(__file__).parent / "fixtures" / "published_tiny.csv"


def _record(results, backbone, seed, miou, *, status="ok", protocol="frozen", decoder="monodepth2", train_size=16,
            init="auto", effective="encoder", dataset="synth"):
    cell = {"backbone": backbone, "method": "m", "arch": "resnet18", "dataset": dataset, "protocol": protocol,
            "decoder": decoder, "train_size": train_size, "seed": seed}
    ok = status == "ok"
    record = {"cell": cell, "status": status, "error": None if ok else "loss became nan at step 3",
              "init": {"requested": init, "effective": effective} if ok else None, "config": {"init": init},
              "metrics": {"miou": miou / 100, "pixel_acc": (miou + 10) / 100, "mean_class_acc": (miou + 5) / 100,
                          "per_class_iou": {"road": miou / 100}} if ok else None}
    folder = results / "runs" / f"{backbone}__{dataset}__{protocol}__{decoder}__{init}__n{train_size}__s{seed}"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


def _folder(tmp_path, backbones=("imagenet", "depth", "single")) -> Path:
    r = tmp_path / "results"
    (r / "runs").mkdir(parents=True)
    (r / "manifest.resolved.json").write_text(json.dumps({"backbones": [{"name": b} for b in backbones],
                                                          "transfer": {"decoders": ["monodepth2", "deeplabv3"]}}))
    return r


@pytest.fixture
def results(tmp_path):
    """imagenet: 3 ok seeds + 1 failed; depth: 2 ok + 1 diverged; single: 1 seed (frozen, monodepth2)."""
    r = _folder(tmp_path)
    for seed, miou in enumerate([60.0, 62.0, 64.0]):
        _record(r, "imagenet", seed, miou)
    _record(r, "imagenet", 3, 0.0, status="failed")
    for seed, miou in enumerate([70.0, 71.0]):
        _record(r, "depth", seed, miou)
    _record(r, "depth", 2, 0.0, status="diverged")
    _record(r, "single", 0, 65.0)
    return r


def md_grid(text: str) -> dict:
    """{(first label, column header): cell text} of every Markdown table in `text`."""
    grid, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if header is None:
            header = cells
        elif not line.startswith("|:") and not line.startswith("|-"):
            grid.update({(cells[0], h): c for h, c in zip(header, cells)})
    return grid


def _compiles(tex: Path) -> None:
    """pdflatex on the .tex inside a minimal document, where pdflatex exists (structure is checked anyway)."""
    if shutil.which("pdflatex") is None:
        return
    doc = tex.parent / f"doc_{tex.stem}.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                   f"\\input{{{tex.name}}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", doc.name], cwd=tex.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:]


def test_paper_table_cells_std_n_failures_and_bold(results):
    write_reports(results, plots=False)
    md = (results / "tables" / "miou_synth.md").read_text()
    grid = md_grid(md)
    col = "frozen · monodepth2"
    # Usual n is 3 (ties between 3, 2 and 1 go to the larger): only the others show theirs.
    assert grid["imagenet", col] == "62.00 ± 2.00 (1 failed)"
    assert grid["depth", col] == "**70.50 ± 0.71 (n = 2; 1 diverged)**"  # the best mean, in bold
    assert grid["single", col] == "65.00 (n = 1)"  # one seed: no std
    assert [grid[b, "backbone"] for b in ("imagenet", "depth", "single")] == ["imagenet", "depth", "single"]
    assert md.index("| imagenet") < md.index("| depth") < md.index("| single")  # manifest order
    assert grid["depth", "effective init"] == "encoder"
    assert "over 3 seeds (n = k where a cell has another number)" in md and "16 training images" in md
    # The leaderboard is untouched by the tables.
    assert "| depth" in (results / "leaderboard.md").read_text()


def test_ties_bold_both_and_missing_failed_cells(tmp_path):
    r = _folder(tmp_path, ["a", "b", "c"])
    for b in ("a", "b"):
        for seed, miou in enumerate([50.0, 52.0]):
            _record(r, b, seed, miou)
    _record(r, "c", 0, 0.0, status="failed")
    _record(r, "c", 1, 0.0, status="failed")
    _record(r, "a", 0, 40.0, protocol="full")  # b and c never ran full
    write_reports(r, plots=False)
    grid = md_grid((r / "tables" / "miou_synth.md").read_text())
    assert grid["a", "frozen · monodepth2"] == grid["b", "frozen · monodepth2"] == "**51.00 ± 1.41**"
    assert grid["c", "frozen · monodepth2"] == "failed"
    assert grid["b", "full · monodepth2"] == "—" and grid["c", "full · monodepth2"] == "—"
    assert grid["a", "full · monodepth2"] == "40.00 (n = 1)"  # alone in its column: nothing to bold
    assert list(grid)[2][1] == "full · monodepth2"  # full before frozen, as the papers' columns
    assert grid["c", "effective init"] == "unknown"


def test_effective_init_marks_where_a_backbone_differs_across_columns(tmp_path):
    r = _folder(tmp_path, ["imagenet", "depth"])
    for seed in (0, 1):
        _record(r, "depth", seed, 50.0 + seed, effective="encoder+decoder")  # its U-Net decoder reused
        _record(r, "depth", seed, 45.0 + seed, decoder="deeplabv3", effective="encoder")
        _record(r, "imagenet", seed, 48.0 + seed)
        _record(r, "imagenet", seed, 46.0 + seed, decoder="deeplabv3")
    write_reports(r, plots=False)
    md = (r / "tables" / "miou_synth.md").read_text()
    grid = md_grid(md)
    assert grid["depth", "effective init"] == "mixed" and grid["imagenet", "effective init"] == "encoder"
    assert grid["depth", "frozen · monodepth2"] == "**50.50 ± 0.71**†"
    assert grid["depth", "frozen · deeplabv3"] == "45.50 ± 0.71‡"
    assert grid["imagenet", "frozen · deeplabv3"] == "**46.50 ± 0.71**"  # unmarked: one init for imagenet
    assert "† encoder+decoder (pre-trained encoder and its pre-trained decoder); ‡ encoder" in md
    assert "Columns mixing decoder reuse" in md and "frozen · monodepth2." in md
    assert list(grid)[2][1] == "frozen · monodepth2"  # the manifest's decoder order
    tex = (r / "tables" / "miou_synth.tex").read_text()
    assert r"\textbf{50.50 \ensuremath{\pm} 0.71}\textsuperscript{\dag}" in tex
    assert r"45.50 \ensuremath{\pm} 0.71\textsuperscript{\ddag}" in tex
    _compiles(r / "tables" / "miou_synth.tex")


def test_inits_and_train_sizes_split_tables_and_columns(tmp_path):
    r = _folder(tmp_path, ["depth", "imagenet"])
    for n, base in ((4, 30.0), (16, 50.0)):
        _record(r, "depth", 0, base, train_size=n)
        _record(r, "imagenet", 0, base - 5, train_size=n)
        _record(r, "depth", 0, base - 1, train_size=n, init="encoder")
    write_reports(r, plots=False)
    names = sorted(p.name for p in (r / "tables").iterdir())
    assert names == ["miou_synth_init-auto.md", "miou_synth_init-auto.tex",
                     "miou_synth_init-encoder.md", "miou_synth_init-encoder.tex"]
    grid = md_grid((r / "tables" / "miou_synth_init-auto.md").read_text())
    assert grid["depth", "frozen · monodepth2 · 4 images"] == "**30.00**"
    assert grid["imagenet", "frozen · monodepth2 · 16 images"] == "45.00"
    enc = md_grid((r / "tables" / "miou_synth_init-encoder.md").read_text())
    assert enc["depth", "frozen · monodepth2 · 16 images"] == "49.00" and ("imagenet", "backbone") not in enc
    tex = (r / "tables" / "miou_synth_init-auto.tex").read_text()
    # Three header levels: protocol and decoder merged over their train sizes, with rules under them.
    assert r" &  & \multicolumn{2}{c}{frozen} \\" in tex and r"\cmidrule(lr){3-4}" in tex
    assert r" &  & \multicolumn{2}{c}{monodepth2} \\" in tex
    assert r"backbone & effective init & 4 images & 16 images \\" in tex
    _compiles(r / "tables" / "miou_synth_init-auto.tex")


def test_several_datasets_also_share_one_table_as_lao_table_6(tmp_path):
    r = _folder(tmp_path, ["mae", "depth_anything"])
    for dataset, base in (("ade20k", 50.0), ("voc", 80.0)):
        for protocol, shift in (("full", 5.0), ("linear", 0.0)):
            _record(r, "mae", 0, base + shift, dataset=dataset, protocol=protocol, decoder="linear")
            _record(r, "depth_anything", 0, base + shift + 1, dataset=dataset, protocol=protocol, decoder="linear")
    _record(r, "mae", 0, 99.0, dataset="voc", protocol="frozen", decoder="linear")  # the best, but voc's only
    write_reports(r, plots=False)
    names = sorted(p.stem for p in (r / "tables").glob("*.md"))
    assert names == ["miou_across_datasets", "miou_ade20k", "miou_voc"]
    grid = md_grid((r / "tables" / "miou_across_datasets.md").read_text())
    assert list(grid)[2:7] == [("mae", h) for h in ("ade20k · full · linear", "ade20k · linear · linear",
                                                     "voc · full · linear", "voc · frozen · linear",
                                                     "voc · linear · linear")]
    assert grid["depth_anything", "ade20k · full · linear"] == "**56.00**" and grid["mae", "ade20k · full · linear"] == "55.00"
    assert grid["depth_anything", "voc · linear · linear"] == "**81.00**"
    assert grid["mae", "voc · frozen · linear"] == "99.00" and grid["depth_anything", "voc · frozen · linear"] == "—"
    # Per-dataset tables hold the same numbers.
    assert md_grid((r / "tables" / "miou_voc.md").read_text())["mae", "full · linear"] == "85.00"
    tex = (r / "tables" / "miou_across_datasets.tex").read_text()
    assert r" &  & \multicolumn{2}{c}{ade20k} & \multicolumn{3}{c}{voc} \\" in tex
    assert r"\cmidrule(lr){3-4} \cmidrule(lr){5-7}" in tex
    assert r"depth\_anything & encoder & \textbf{56.00}" in tex
    _compiles(r / "tables" / "miou_across_datasets.tex")


def test_latex_escaping_booktabs_caption_and_label(tmp_path):
    table = Table(name="miou_synth@r96x320", title="mIoU on synth@r96x320", caption="50% of 100_000 & more",
                  labels=["backbone"], columns=[("full", "monodepth2"), ("full", "deeplabv3")],
                  rows=[(["depth_r18#1"], [Cell("51.00 ± 1.41", bold=True), Cell("—")])], notes=["$x^2$ {a}"])
    tex = to_latex(table)
    lines = tex.splitlines()
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert r"\caption{mIoU on synth@r96x320. 50\% of 100\_000 \& more}" in tex
    assert r"\label{tab:miou-synth-r96x320}" in tex
    assert r"depth\_r18\#1 & \textbf{51.00 \ensuremath{\pm} 1.41} & --- \\" in tex
    assert r"\$x\textasciicircum{}2\$ \{a\}" in tex
    assert r"\begin{tabular}{lcc}" in tex and r"\multicolumn{2}{c}{full}" in tex
    assert tex_escape("a\\b") == r"a\textbackslash{}b"
    md = to_markdown(table)
    assert "| depth_r18#1 | **51.00 ± 1.41** | — |" in md and md.startswith("### mIoU on synth@r96x320")
    path = tmp_path / "t.tex"
    path.write_text(tex)
    _compiles(path)


def test_markdown_renders_as_a_table_with_the_best_in_strong():
    """report.html embeds tables/*.md through Python-Markdown: a pipe in a name stays in its cell."""
    markdown = pytest.importorskip("markdown")
    table = Table(name="x", title="T", caption="c", labels=["backbone"], columns=[("full", "monodepth2")],
                  rows=[(["depth_r18"], [Cell("51.00 ± 1.41", bold=True, mark="†")]), (["a|b"], [Cell("—")])])
    page = markdown.markdown(to_markdown(table), extensions=["tables"])
    assert page.count("<tr>") == 3 and "<td style=\"text-align: left;\">a|b</td>" in page
    assert "<strong>51.00 ± 1.41</strong>†" in page and "depth_r18</td>" in page


def test_stale_tables_are_removed(results):
    (results / "tables").mkdir()
    (results / "tables" / "miou_gone.md").write_text("old")
    (results / "tables" / "resolution_gone.tex").write_text("old")
    (results / "tables" / "per_class.md").write_text("another part's table")
    table = write_reports(results, plots=False)
    assert not (results / "tables" / "miou_gone.md").exists() and not (results / "tables" / "resolution_gone.tex").exists()
    assert (results / "tables" / "per_class.md").read_text() == "another part's table"
    assert sorted(p.name for p in table["tables"]) == ["miou_synth.md", "miou_synth.tex"]


# --- resolution ------------------------------------------------------------------------------------------------


def _frame(rows) -> pd.DataFrame:
    """A records frame with the columns contract 1 gives it (only those the tables read)."""
    out = []
    for backbone, bvar, psize, dataset, dvar, tsize, seed, miou in rows:
        out.append({"backbone": backbone if bvar is None else f"{backbone}@{bvar}", "backbone_variant": bvar,
                    "dataset": dataset if dvar is None else f"{dataset}@{dvar}", "dataset_variant": dvar,
                    "pretrain_size": psize, "transfer_size": tsize, "protocol": "full", "decoder": "monodepth2",
                    "init": "auto", "init_effective": "encoder", "train_size": 16, "seed": seed,
                    "status": "ok" if miou is not None else "diverged",
                    "miou": math.nan if miou is None else miou})
    return pd.DataFrame(out)


def test_resolution_table_pivots_pretrain_by_transfer_size():
    rows = []
    for seed in (0, 1):
        for bvar, psize, base in (("crop256", "256x256", 60.0), ("full", "192x640", 55.0)):
            rows.append(("depth", bvar, psize, "synth", "r96x320", "96x320", seed, base + seed))
            rows.append(("depth", bvar, psize, "synth", None, "48x144", seed, base - 10 + seed))
        rows.append(("imagenet", None, "224x224", "synth", "r96x320", "96x320", seed, 50.0 + 2 * seed))
        rows.append(("imagenet", None, None, "synth", None, None, seed, None))  # diverged: no sizes recorded
    tables = resolution_tables(_frame(rows), ["depth@crop256", "depth@full", "imagenet"])
    assert list(tables) == ["resolution_synth"]
    md = "\n".join(to_markdown(t) for t in tables["resolution_synth"])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == "| backbone | pre-train size | transfer 48x144 | transfer 96x320 |"
    # Rows: backbones in manifest order, then pre-train size fewest pixels first (256x256 < 192x640).
    assert lines[1:] == ["| depth | 256x256 | **50.50 ± 0.71** | **60.50 ± 0.71** |",
                         "| depth | 192x640 | 45.50 ± 0.71 | 55.50 ± 0.71 |",
                         "| imagenet | 224x224 | diverged | 51.00 ± 1.41 |"]
    assert "full · monodepth2" in md
    tex = to_latex(tables["resolution_synth"][0])
    assert r"depth & 256x256 & \textbf{50.50 \ensuremath{\pm} 0.71} & \textbf{60.50 \ensuremath{\pm} 0.71} \\" in tex


def test_resolution_table_is_a_no_op_without_varying_sizes():
    rows = [("depth", None, "192x640", "synth", None, "48x144", s, 50.0 + s) for s in (0, 1)]
    rows += [("imagenet", None, None, "synth", None, "48x144", s, 40.0 + s) for s in (0, 1)]
    assert resolution_tables(_frame(rows), []) == {}  # constant
    # Sizes that differ between backbones only (no backbone has two) are no resolution study.
    rows += [("cls", None, "64x64", "synth", None, "48x144", s, 45.0 + s) for s in (0, 1)]
    assert resolution_tables(_frame(rows), []) == {}
    assert resolution_tables(_frame(rows).drop(columns=["pretrain_size", "transfer_size"]), []) == {}  # absent


def test_resolution_variants_at_one_size_stay_apart():
    """Two variants of one backbone at the same pre-training size (another lr, say) are two rows."""
    rows = []
    for bvar, psize, base in (("lr1", "256x256", 60.0), ("lr2", "256x256", 40.0), ("small", "128x128", 30.0)):
        rows.append(("depth", bvar, psize, "synth", None, "48x144", 0, base))
    table = resolution_tables(_frame(rows), [])["resolution_synth"][0]
    assert [r[0] for r in table.rows] == [["depth", "128x128"], ["depth", "256x256 (depth@lr1)"],
                                         ["depth", "256x256 (depth@lr2)"]]
    assert [r[1][0].text for r in table.rows] == ["30.00", "60.00", "40.00"]


# --- --compare -------------------------------------------------------------------------------------------------


def test_compare_matches_rows_difference_and_not_run(results, capsys):
    # The verb as a user runs it, minus the plots (seconds of matplotlib that these tables do not need).
    assert main(["aggregate", str(results), "--compare", str(FIXTURE_CSV), "--no-plots"]) == 0
    assert "compare_published_tiny.md" in capsys.readouterr().out
    md = (results / "tables" / "compare_published_tiny.md").read_text()
    grid = {}
    for line in md.splitlines()[1:]:
        if line.startswith("| ") and not line.startswith("| backbone"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            grid[cells[0], cells[6]] = cells
    depth = grid["depth", "miou"]
    assert depth[4:] == ["16", "auto (encoder)", "miou", "70.50 ± 0.71 (n = 2)", "68.25", "+2.25",
                         "Made up for the tests, Table 1, row Depth, column frozen"]
    # Empty train_size: this comparison's only size; 62.00 - 63.5.
    assert grid["imagenet", "miou"][4:10] == ["16", "auto (encoder)", "miou", "62.00 ± 2.00 (n = 3)", "63.5", "-1.50"]
    assert grid["depth", "pixel_acc"][7:10] == ["80.50 ± 0.71 (n = 2)", "80.10", "+0.40"]
    assert grid["mae", "miou"][7:9] == ["not run", "47.18"] and grid["mae", "miou"][9] == "—"
    assert "Matched 3 of 4 published rows; not run here: 1 (mae on synth)." in md
    tex = (results / "tables" / "compare_published_tiny.tex").read_text()
    assert r"70.50 \ensuremath{\pm} 0.71 (n = 2) & 68.25 & +2.25" in tex
    _compiles(results / "tables" / "compare_published_tiny.tex")
    # Without --compare the next aggregation derives no comparison: it does not linger with old numbers.
    write_reports(results, plots=False)
    assert not (results / "tables" / "compare_published_tiny.md").exists()


def test_compare_rows_per_requested_init_and_cells_with_no_ok_seed(tmp_path):
    r = _folder(tmp_path, ["depth", "flow"])
    for seed in (0, 1):
        _record(r, "depth", seed, 50.0 + seed, effective="encoder+decoder")
        _record(r, "depth", seed, 45.0 + seed, init="encoder")
        _record(r, "flow", seed, 0.0, status="diverged")
    csv = tmp_path / "table3.csv"
    csv.write_text("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                   "depth,synth,frozen,monodepth2,16,miou,46.69,Table 3 row Depth (encoder only)\n"
                   "flow,synth,frozen,monodepth2,16,miou,38.47,Fig. 7 row Flow\n")
    write_reports(r, plots=False, compare=csv)
    table = [line for line in (r / "tables" / "compare_table3.md").read_text().splitlines() if line.startswith("| ")]
    assert table[1:] == [
        "| depth | synth | frozen | monodepth2 | 16 | auto (encoder+decoder) | miou | 50.50 ± 0.71 (n = 2) | 46.69 | +3.81 "
        "| Table 3 row Depth (encoder only) |",
        "| depth | synth | frozen | monodepth2 | 16 | encoder (encoder) | miou | 45.50 ± 0.71 (n = 2) | 46.69 | -1.19 "
        "| Table 3 row Depth (encoder only) |",
        "| flow | synth | frozen | monodepth2 | 16 | auto (unknown) | miou | no ok seed | 38.47 | — | Fig. 7 row Flow |"]
    assert "Matched 2 of 2 published rows; every published row has a result here." in \
        (r / "tables" / "compare_table3.md").read_text()


BAD_CSVS = {
    "missing": ("backbone,dataset,protocol,decoder,metric,published,source\n", "missing column(s) train_size"),
    "typo": ("backbone,dataset,protocol,decoder,train_size,metric,publised,source\n",
             "missing column(s) published; unknown column(s) publised (expected exactly backbone,dataset,"),
    "protocol": ("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                 "depth,synth,frozen,monodepth2,16,miou,50,src\ndepth,synth,finetune,monodepth2,16,miou,50,src\n",
                 "row 2 (line 3), column protocol: unknown protocol 'finetune'"),
    "published": ("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                  "depth,synth,frozen,monodepth2,16,miou,fifty,src\n",
                  "row 1 (line 2), column published: 'fifty' is not a number"),
    "train_size": ("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                   "depth,synth,frozen,monodepth2,16.5,miou,50,src\n", "row 1 (line 2), column train_size"),
    "metric": ("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
               "depth,synth,frozen,monodepth2,16,iou,50,src\n", "column metric: unknown metric 'iou'"),
    "duplicate": ("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                  "depth,synth,frozen,monodepth2,16,miou,50,a\ndepth,synth,frozen,monodepth2,16,miou,51,b\n",
                  "row 2 (line 3): the same cell and metric as row 1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CSVS))
def test_compare_csv_errors_name_file_row_and_column(tmp_path, kind):
    text, expected = BAD_CSVS[kind]
    path = tmp_path / f"{kind}.csv"
    path.write_text(text)
    message = one_line_error(read_published, path, METRICS)
    assert message.startswith(str(path)) and expected in message


def test_compare_with_a_header_only_is_an_empty_comparison(results, tmp_path):
    """A figure published as a plot only (Lao et al. Fig. 8) has a CSV with no rows."""
    csv = tmp_path / "fig8.csv"
    csv.write_text("backbone,dataset,protocol,decoder,train_size,metric,published,source\n")
    write_reports(results, plots=False, compare=csv)
    md = (results / "tables" / "compare_fig8.md").read_text()
    assert "The file holds no published rows" in md and "| depth" not in md
    _compiles(results / "tables" / "compare_fig8.tex")


def test_compare_refusals_write_nothing(results, tmp_path):
    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text("backbone,dataset,protocol,decoder,train_size,metric,published,source\n"
                         "depth,synth,frozen,monodepth2,,miou,50,src\n")
    _record(results, "depth", 0, 40.0, train_size=4)  # depth now ran 4 and 16 images: empty is ambiguous
    message = one_line_error(write_reports, results, plots=False, compare=ambiguous)
    assert "row 1 (line 2), column train_size: empty, but depth on synth (frozen, monodepth2) ran train sizes 4, 16" \
        in message
    assert not (results / "leaderboard.md").exists() and not (results / "tables").exists()
    assert main(["aggregate", str(results), "--compare", str(tmp_path / "nope.csv")]) == 2
    assert not (results / "leaderboard.md").exists()
