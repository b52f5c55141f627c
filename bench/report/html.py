"""report.html: one self-contained page of a results folder, derived from what `bench aggregate` wrote.

What it holds, in order: the leaderboard (its legend and each comparison's note rendered from
Markdown), the paper-layout tables (`RESULTS/tables/*.md`, when present), the per-class IoU per
dataset (classes as columns), the failed cells, every figure with a caption that says what it shows,
and the provenance: harness commits and package versions from the records, and the resolved manifest.

Self-contained: no script, no stylesheet or image from elsewhere; every image is inlined as base64
PNG, so the file can be mailed or archived alone.

Captions: one sentence per kind of figure, chosen by file-name prefix (CAPTIONS; the heatmaps under
`cka/` are the `cka_` kind), filled with what the figure compares: the `Subject` text the figure
functions write into their PNGs (bench.report.plots.SUBJECT_KEY), else the rest of the file name.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import markdown as md
import pandas as pd
from PIL import Image

from bench.core import results_folder as rf
from bench.core.records import iter_records, read_json

CAPTIONS = {  # prefix -> sentence; {subject} is what the figure compares
    "bars_": ("Mean mIoU (%) of every backbone on {subject}, grouped by transfer protocol, one panel per decoder, "
              "init or training-set size that varies, all panels on one mIoU scale; error bars are the 95 % "
              "confidence interval over seeds where two or more ran, and an × marks a cell without a successful seed."),
    "few_shot_": ("mIoU (%) against the number of training images on {subject}, one line per backbone and one panel "
                  "per protocol (and decoder or init where they vary), all panels on the same axes; the band is the "
                  "95 % confidence interval over seeds."),
    "learning_curves_": ("Validation mIoU (%) against training step on {subject}: one line per backbone (mean over "
                         "seeds, band from the lowest to the highest seed), one panel per protocol and decoder that "
                         "was run, all panels on the same step and mIoU scales."),
    "frozen_vs_full_": ("Frozen encoder (open circle) against full fine-tuning (filled circle) for every backbone on "
                        "{subject}, with 95 % intervals over seeds where there are several; the number on the right "
                        "is full minus frozen in mIoU points, and all panels share one mIoU scale."),
    "cka_across_": ("Layer-wise CKA of every backbone for {subject}: left, each layer of the pre-trained encoder "
                    "against the same layer after fine-tuning (the diagonals of the CKA heatmaps; low means "
                    "fine-tuning rewrote that layer); then, within each network whose rows the cells stored (the "
                    "panel titles say which: pre-trained, fine-tuned), the first layer against every layer "
                    "(MeSa's analyses)."),
    "cka_": ("Linear CKA between every layer of the pre-trained encoder (rows) and every layer of the fine-tuned "
             "encoder (columns) of {subject}, on the first evaluation images; a bright diagonal means fine-tuning "
             "left those layers' representations in place."),
    "qualitative_": ("Qualitative results for {subject}: evaluation images with their ground truth and the "
                     "predictions of the cells named in the figure."),
    "explain_": ("Grad-CAM of {subject} (bench explain): the evaluation images and, per backbone, where the "
                 "gradient of the sum of each pixel's predicted-class score with respect to that layer's "
                 "activations concentrates, as a heat map over the image, each map divided by its maximum "
                 "(0..1 per image)."),
    "contrast_": ("The baseline's advantage over each other backbone ({subject}): the baseline's mIoU minus the "
                  "other's, in points, in each variant of the dataset (a world study's worlds), with the paired 95 % "
                  "interval over seeds of the leaderboard; above the zero line the baseline transfers better."),
    "pretrain_loss_": ("Training loss against step of each pre-training of this folder ({subject}): one panel per "
                       "pre-training with its method's own loss and scale (the losses of different methods are not "
                       "comparable), the thin line every step, the thick one a running mean."),
}
FIGURE_ORDER = ["bars_", "contrast_", "few_shot_", "frozen_vs_full_", "learning_curves_", "cka_across_", "cka_", "qualitative_",
                "explain_", "pretrain_loss_"]
SECTION_TITLES = {"bars_": "mIoU by protocol", "few_shot_": "Few-shot curves", "frozen_vs_full_": "Frozen vs full",
                  "contrast_": "The baseline's advantage, per dataset variant",
                  "learning_curves_": "Learning curves", "cka_across_": "CKA across backbones",
                  "cka_": "CKA heatmaps: pre-trained vs fine-tuned", "qualitative_": "Qualitative results",
                  "explain_": "Grad-CAM (bench explain)", "pretrain_loss_": "Pre-training losses", None: "Other figures"}
PER_CLASS_KEYS = ["backbone", "protocol", "decoder", "init", "train_size", "n_seeds"]
PER_CLASS_META = {"backbone", "method", "arch", "dataset", "protocol", "decoder", "init", "init_effective",
                  "train_size", "n_seeds", "backbone_variant", "dataset_variant", "pretrain_size", "transfer_size"}

CSS_DPI, DEFAULT_DPI = 96.0, 150.0  # a CSS pixel is 1/96 inch; bench.report.plots draws at 150 dpi
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:88%;margin:.5em 0 1.2em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} code{background:#f3f3f3;padding:0 .2em}
.figures{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
figure{margin:1em 0 1.5em;max-width:100%} img{width:100%;height:auto} figcaption{color:#333;font-size:92%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:85%} details{margin:1em 0} .scroll{overflow-x:auto}"""


def render_markdown(text: str) -> str:
    """Markdown (with pipe tables) as HTML: backticks become <code>, ** bold, tables real tables."""
    return md.markdown(text, extensions=["tables"], output_format="html")


def figure_kind(path: Path) -> str | None:
    """The figure's kind by file-name prefix (longest first: cka_across_ before cka_); the heatmaps under
    `cka/` are named by their cell id, and are the `cka_` kind."""
    stem = Path(path).stem
    for prefix in sorted(CAPTIONS, key=len, reverse=True):
        if stem.startswith(prefix):
            return prefix
    return "cka_" if Path(path).parent.name == rf.CKA else None


def figure_subject(path: Path) -> str:
    """What the figure compares: its PNG's Subject text, else the file name without its prefix."""
    from bench.report.plots import SUBJECT_KEY

    try:
        with Image.open(path) as im:
            subject = im.info.get(SUBJECT_KEY)
    except OSError:
        subject = None
    if subject:
        return str(subject)
    kind = figure_kind(path)
    rest = Path(path).stem.removeprefix(kind) if kind and Path(path).stem.startswith(kind) else Path(path).stem
    return rest.replace("__", " · ").replace("_", " ")


def caption(path: Path) -> str:
    kind = figure_kind(path)
    if kind is None:
        return f"Figure {Path(path).stem}."
    return CAPTIONS[kind].format(subject=figure_subject(path))


def pretrain_histories(results_dir: Path) -> dict:
    """{pre-training: (method, frame of step and loss)} from `pretrain/*/history.csv`; a history that cannot
    be read, or has no step and loss, is left out (the report never fails on it)."""
    methods = {}
    resolved = read_json(rf.resolved_manifest(results_dir)) or {}
    for b in resolved.get("backbones", []) or []:
        if isinstance(b, dict) and b.get("name"):
            method = (b.get("pretrain") or {}).get("method")
            methods[b["name"]] = method
            if b.get("variant"):
                methods[f"{b['name']}@{b['variant']}"] = method
    out = {}
    for history in sorted((results_dir / rf.PRETRAIN).glob(f"*/{rf.HISTORY}")):
        try:
            frame = pd.read_csv(history)
        except (OSError, ValueError):
            continue
        if {"step", "loss"} <= set(frame.columns) and not frame.empty:
            out[history.parent.name] = (methods.get(history.parent.name), frame[["step", "loss"]].dropna())
    return out


def provenance(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(harness commits, package versions) over the records and pre-trainings, each with how many carry it."""
    commits, versions = Counter(), Counter()
    sources = [(r, "cell") for _, r in iter_records(results_dir)]
    sources += [(read_json(p) or {}, "pre-training")
                for p in sorted((results_dir / rf.PRETRAIN).glob(f"*/{rf.SUMMARY}"))]
    for doc, kind in sources:
        git = doc.get("harness_git")
        commits[(kind, git.get("commit", "?"), "yes" if git.get("dirty") else "no") if isinstance(git, dict)
                else (kind, "not from a git checkout", "")] += 1
        for package, version in sorted((doc.get("versions") or {}).items()):
            versions[(package, str(version))] += 1
    commit_rows = [{"written by": k, "harness commit": c, "uncommitted changes": d, "n": n}
                   for (k, c, d), n in sorted(commits.items())]
    version_rows = [{"package": p, "version": v, "records": n} for (p, v), n in sorted(versions.items())]
    return pd.DataFrame(commit_rows), pd.DataFrame(version_rows)


def per_class_html(per_class: pd.DataFrame) -> str:
    """One table per dataset: a row per leaderboard row, a column per class of that dataset, IoU in %."""
    if per_class is None or per_class.empty:
        return "<p>No successful cells.</p>"
    parts = []
    for dataset, d in per_class.groupby("dataset", sort=True):
        classes = [c for c in d.columns if c not in PER_CLASS_META and d[c].notna().any()]
        keys = [k for k in PER_CLASS_KEYS if k in d.columns]
        shown = d[keys + classes].rename(columns={"train_size": "train size", "n_seeds": "n"})
        parts.append(f"<h3>{html.escape(str(dataset))}</h3>\n<div class=\"scroll\">"
                     f"{shown.to_html(index=False, na_rep='—', float_format=lambda v: f'{v:.1f}')}</div>")
    return "\n".join(parts)


def _figures_html(pngs: list[Path]) -> str:
    if not pngs:
        return "<p>No plots.</p>"
    by_kind: dict = {}
    for p in pngs:
        by_kind.setdefault(figure_kind(p), []).append(p)
    parts = []
    for kind in [*FIGURE_ORDER, None]:
        figures = by_kind.get(kind, [])
        if not figures:
            continue
        parts.append(f'<h3>{html.escape(SECTION_TITLES[kind])}</h3>\n<div class="figures">')
        for p in figures:  # side by side where they fit (the heatmaps), one per row where they do not
            text = caption(p)
            parts.append(f'<figure{_display_width(p)}><img alt="{html.escape(text)}" src="data:image/png;base64,'
                         f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(text)}'
                         f'</figcaption></figure>')
        parts.append("</div>")
    return "\n".join(parts)


def _display_width(png: Path) -> str:
    """The figure at its printed size (its pixels at the figure's dpi, shown at the browser's 96 per inch), so
    that every figure's text reads the same size; wider than the page, it shrinks to fit (max-width)."""
    try:
        with Image.open(png) as im:
            dpi = float((im.info.get("dpi") or (DEFAULT_DPI,))[0]) or DEFAULT_DPI
            return f' style="width:{round(im.size[0] * CSS_DPI / dpi)}px"'
    except (OSError, ValueError, TypeError):
        return ""


def _tables_html(results_dir: Path) -> str:
    tables = sorted((results_dir / "tables").glob("*.md"))
    if not tables:
        return ""
    body = "\n".join(f'<div class="scroll">{render_markdown(t.read_text())}</div>' for t in tables)
    return f"<h2>Tables</h2>\n{body}"


def _frame_html(frame: pd.DataFrame, empty: str) -> str:
    return frame.to_html(index=False, na_rep="—") if not frame.empty else f"<p>{html.escape(empty)}</p>"


def render_report(results_dir: Path, legend: str, sections, failures: pd.DataFrame, per_class: pd.DataFrame,
                  pngs: list[Path]) -> str:
    """The page. `legend`: the leaderboard's Markdown legend; `sections`: (header, Markdown note, shown
    table) per comparison; `pngs`: the figures, in any order (grouped here by kind)."""
    results_dir = Path(results_dir)
    name = results_dir.name
    tables = "\n".join(f"<h3>{html.escape(header)}</h3>\n{render_markdown(note)}\n"
                       f'<div class="scroll">{shown.to_html(index=False, na_rep="—")}</div>'
                       for header, note, shown in sections)
    fail = failures.drop(columns=["record"], errors="ignore")
    commits, versions = provenance(results_dir)
    manifest = rf.resolved_manifest(results_dir)
    manifest_html = (f"<details><summary>Resolved manifest (<code>{manifest.name}</code>)</summary>\n"
                     f"<pre>{html.escape(_pretty_json(manifest))}</pre></details>" if manifest.is_file()
                     else f"<p>No <code>{manifest.name}</code> in this folder.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>depth2seg-bench: {html.escape(name)}</title>
<style>{_STYLE}</style>
</head><body>
<h1>Leaderboard: {html.escape(name)}</h1>
{render_markdown(legend)}
{tables}
{_tables_html(results_dir)}
<h2>Per-class IoU (%)</h2>
<p>Mean over the seeds whose run is ok, one row per leaderboard row; — where a class is absent from both
prediction and ground truth.</p>
{per_class_html(per_class)}
<h2>Failed or diverged cells</h2>
{_frame_html(fail, "None.")}
<h2>Figures</h2>
{_figures_html(pngs)}
<h2>Provenance</h2>
<h3>Harness commit</h3>
{_frame_html(commits, "No records.")}
<h3>Versions</h3>
{_frame_html(versions, "The records carry no versions.")}
{manifest_html}
</body></html>
"""


def _pretty_json(path: Path) -> str:
    try:
        return json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True)
    except (OSError, ValueError) as e:
        return f"(unreadable: {e})"

