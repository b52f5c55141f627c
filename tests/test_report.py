"""report.html from a tiny hand-built results folder: self-contained (no external reference, every image
decodes), Markdown rendered, every figure captioned with its sentence, per-class table, pre-training
losses, provenance and the resolved manifest."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from bench.report import html as report
from bench.report.aggregate import write_reports

CLASSES = ["road", "car", "traffic sign"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LAYERS = ["act1", "layer1", "layer2"]


class Page(HTMLParser):
    """What the checks need of a page: every tag's attributes, style text, the text outside <pre>,
    each figure's image and caption, and the text of each <details> and <table>."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.styles, self.text, self.figures, self.details, self.tables = [], [], [], [], [], []
        self._open: list[str] = []
        self._img, self._caption = None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)
        if tag == "img":
            self._img = dict(attrs)
            self._open.pop()  # a void element
        elif tag == "figcaption":
            self._caption = ""
        elif tag == "details":
            self.details.append("")
        elif tag == "table":
            self.tables.append("")

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass
        if tag == "figcaption":
            self.figures.append((self._img, self._caption))
            self._img, self._caption = None, None

    def handle_data(self, data):
        if "style" in self._open:
            self.styles.append(data)
            return
        if "details" in self._open:
            self.details[-1] += data
        if "table" in self._open and data.strip():
            self.tables[-1] += data.strip() + "|"
        if self._caption is not None:
            self._caption += data
        if "pre" not in self._open:
            self.text.append(data)


def external_references(page: str) -> list[str]:
    """Anything the page would fetch from elsewhere: http(s) or protocol-relative URLs in src, href or
    url(), any <script src>, any <link href>."""
    parsed = Page(page)
    found = [f"<{tag} {key}={value}>" for tag, attrs in parsed.tags for key, value in attrs.items()
             if key in ("src", "href", "srcset", "data", "poster") and value
             and re.match(r"\s*(https?:)?//", value, flags=re.I)]
    found += [f"<{tag} src>" for tag, attrs in parsed.tags if tag == "script" and "src" in attrs]
    found += [f"<{tag} href>" for tag, attrs in parsed.tags if tag == "link" and "href" in attrs]
    found += re.findall(r"url\(\s*['\"]?\s*(?:https?:)?//[^)]*\)", " ".join(parsed.styles) + page, flags=re.I)
    return found


def test_the_external_reference_check_catches_each_kind():
    assert external_references('<img src="data:image/png;base64,AAAA"><a href="#x">x</a>') == []
    for bad in ('<img src="https://example.org/a.png">', '<script src="x.js"></script>',
                '<link rel="stylesheet" href="s.css">', '<style>body{background:url(http://e.org/b.png)}</style>',
                '<a href="//cdn.example.org/x">x</a>'):
        assert external_references(bad), bad


def _record(results, backbone, protocol, seed, miou):
    decoder = "linear" if protocol == "linear" else "monodepth2"
    name = f"{backbone}__synth__{protocol}__{decoder}__n16__s{seed}"
    fingerprint = f"fp-{name}"
    cell = {"backbone": backbone, "method": "depth_supervised" if backbone == "depth" else "none",
            "arch": "resnet18", "dataset": "synth", "protocol": protocol, "decoder": decoder, "train_size": 16,
            "seed": seed}
    per_class = {c: (miou + 10 * (1 - i)) / 100 for i, c in enumerate(CLASSES)}
    record = {
        "cell": cell, "status": "ok", "error": None, "fingerprint": fingerprint,
        "init": {"requested": "auto", "effective": "encoder" if backbone == "depth" else "none"},
        "config": {"init": "auto", "fingerprint": fingerprint},
        "metrics": {"miou": miou / 100, "pixel_acc": (miou + 20) / 100, "mean_class_acc": (miou + 5) / 100,
                    "per_class_iou": per_class},
        "curve": [{"step": s, "loss": 1.0 / s, "miou": miou / 100 * s / 30, "split": "validation"}
                  for s in (10, 20, 30)],
        "versions": {"harness": "0.1.0", "python": "3.11.7", "torch": "2.4.0", "timm": "1.0.9"},
        "harness_git": {"commit": COMMIT, "dirty": False},
    }
    folder = results / "runs" / name
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))
    if protocol == "full" and backbone == "depth":
        diag = [0.99, 0.9 - 0.01 * seed, 0.7]
        doc = {"schema": 1, "kind": "pretrained_vs_finetuned", "fingerprint": fingerprint, "layers_a": LAYERS,
               "layers_b": LAYERS, "matrix": [[d if i == j else 0.3 for j, d in enumerate(diag)] for i in range(3)],
               "within": {"layer": "act1", "pretrained": [1.0, 0.6, 0.4], "finetuned": [1.0, 0.5, 0.3]},
               "probe": {"images": 8, "batch_size": 4}}
        (folder / "cka.json").write_text(json.dumps(doc))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "tiny"
    (r / "runs").mkdir(parents=True)
    manifest = {"name": "tiny", "backbones": [
        {"name": "random", "arch": "resnet18", "pretrain": None},
        {"name": "depth", "arch": "resnet18", "pretrain": {"method": "depth_supervised", "steps": 40}}],
        "transfer": {"protocols": ["full", "frozen", "linear"], "tracking_uri": "http://mlflow.invalid:5000"}}
    (r / "manifest.resolved.json").write_text(json.dumps(manifest))
    for b_i, backbone in enumerate(["random", "depth"]):
        for p_i, protocol in enumerate(["full", "frozen", "linear"]):
            for seed in (0, 1):
                _record(r, backbone, protocol, seed, 40.0 + 8 * b_i + 3 * p_i + seed)
    history = r / "pretrain" / "depth"
    history.mkdir(parents=True)
    (history / "history.csv").write_text("step,loss,lr\n" + "".join(f"{s},{2.0 / s:.4f},0.001\n" for s in range(1, 41)))
    (history / "summary.json").write_text(json.dumps({"steps": 40, "harness_git": {"commit": COMMIT, "dirty": True}}))
    (r / "tables").mkdir()
    (r / "tables" / "synth.md").write_text(
        "## Table: `synth`, full\n\n| backbone | full |\n|---|---|\n| depth | **52.10** ± 0.50 |\n| random | 44.00 |\n")
    return r


def test_report_is_self_contained_rendered_and_captioned(results):
    table = write_reports(results)
    page = (results / "report.html").read_text()
    parsed = Page(page)

    # Self-contained: nothing fetched from elsewhere (the manifest's http:// URI is text in a <pre>).
    assert external_references(page) == []
    assert "http://mlflow.invalid:5000" in page

    # Every image is an inlined PNG that decodes, and is one of the figures the aggregator wrote.
    pngs = [p for p in table["plots"] if p.suffix == ".png"]
    written = {p.read_bytes(): p for p in pngs}
    assert len(parsed.figures) == len(pngs) == 6
    captions = {}
    for img, caption in parsed.figures:
        assert img["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"), validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and min(im.size) > 100
        captions[written[data].stem] = caption

    # Each figure's caption is its kind's sentence, filled with what it compares.
    C = report.CAPTIONS
    cell = "synth, full fine-tuning, monodepth2 decoder, init auto, 16 training images"
    assert captions == {
        "bars_synth": C["bars_"].format(subject="synth"),
        "frozen_vs_full_synth": C["frozen_vs_full_"].format(subject="synth"),
        "learning_curves_synth": C["learning_curves_"].format(subject="synth, 16 training images"),
        "cka_across_synth_full_monodepth2_init-auto_n16": C["cka_across_"].format(subject=cell),
        "depth__synth__full__monodepth2__n16__s0": C["cka_"].format(subject=f"depth on {cell}, seed 0"),
        "pretrain_loss_tiny": C["pretrain_loss_"].format(subject="depth (depth_supervised)"),
    }
    assert all(c not in captions.values() for c in captions)  # no file stem as a caption

    # Markdown rendered: the legend's backticks and the notes' / tables' bold are HTML, not literal.
    text = "".join(parsed.text)
    assert "`" not in text and "**" not in text
    assert "<code>ok</code>" in page and "<strong>52.10</strong>" in page
    assert "<h2>Table: <code>synth</code>, full</h2>" in page

    # The per-class table: classes as columns, one row per leaderboard row, IoU in % with one decimal.
    per_class = next(t for t in parsed.tables if "traffic sign" in t)
    assert all(f"|{c}|" in per_class for c in CLASSES)
    # depth, full: seeds at 48 and 49 mIoU; road = mIoU + 10 -> 58.5, car = mIoU -> 48.5, traffic sign 38.5.
    assert "|depth|full|monodepth2|auto|16|2|58.5|48.5|38.5|" in per_class

    # Provenance: the commit (records clean, the pre-training dirty), versions, the manifest in <details>.
    provenance = next(t for t in parsed.tables if COMMIT in t)
    assert f"|cell|{COMMIT}|no|12|" in provenance and f"|pre-training|{COMMIT}|yes|1|" in provenance
    versions = next(t for t in parsed.tables if "timm" in t)
    assert "|timm|1.0.9|12|" in versions and "|torch|2.4.0|12|" in versions
    [details] = parsed.details
    assert json.loads(details.split("manifest.resolved.json)", 1)[1]) == json.loads(
        (results / "manifest.resolved.json").read_text())


def test_captions_fall_back_to_the_file_name(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "qualitative_synth__depth.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "odd_one.png")
    assert report.caption(tmp_path / "qualitative_synth__depth.png") == \
        report.CAPTIONS["qualitative_"].format(subject="synth · depth")
    assert report.caption(tmp_path / "odd_one.png") == "Figure odd_one."
    assert report.figure_kind(tmp_path / "cka" / "depth__full.png") == "cka_"
    assert report.figure_kind(tmp_path / "cka_across_synth.png") == "cka_across_"


def test_unreadable_pretraining_histories_are_left_out(results):
    (results / "pretrain" / "broken").mkdir()
    (results / "pretrain" / "broken" / "history.csv").write_text("no,columns\n1,2\n")
    (results / "pretrain" / "empty").mkdir()
    (results / "pretrain" / "empty" / "history.csv").write_text("")
    histories = report.pretrain_histories(results)
    assert list(histories) == ["depth"]
    method, frame = histories["depth"]
    assert method == "depth_supervised" and list(frame["step"]) == list(range(1, 41))
