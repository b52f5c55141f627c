"""The documentation stays true: its manifests load, its links resolve, and the README stays the
front door (short, and starting with the two commands a fresh clone needs).

Nothing here trains; the files a manifest names are written with the harness's own helpers and
the tests' fixture builders, so the reference example is checked the way `bench run` loads it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MANIFEST_DOC = DOCS / "manifest.md"
# The complete example is the first ```yaml block after this marker (an HTML comment: invisible on GitHub).
REFERENCE_MARKER = "<!-- reference-manifest"
MAX_README_LINES = 250
FRONT_DOOR = ["make quickstart", "make test"]


# --- markdown ---------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, index of the opening line) of every fenced code block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((m.group(2).lower(), "\n".join(body) + "\n", start))
        i += 1
    return blocks


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (code blocks hold no links or headings)."""
    inside = set()
    for _, body, start in code_blocks(text):
        inside.update(range(start, start + body.count("\n") + 2))
    return [line for i, line in enumerate(text.splitlines()) if i not in inside]


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and '_', as GitHub does
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_anchor(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")  # GitHub numbers repeated headings
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def links(path: Path) -> list[str]:
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "code", line)  # inline code is not a link
        out += LINK.findall(line)
        if m := REFERENCE_LINK.match(line):
            out.append(m.group(1))
    return out


def doc_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def reference_example() -> str:
    text = MANIFEST_DOC.read_text(encoding="utf-8")
    at = text.find(REFERENCE_MARKER)
    if at < 0:
        pytest.fail(f"{MANIFEST_DOC.relative_to(ROOT)}: marker {REFERENCE_MARKER!r} not found; it must precede "
                    f"the complete manifest example")
    after = text[:at].count("\n")
    for language, body, start in code_blocks(text):
        if start >= after and language in ("yaml", "yml"):
            return body
    pytest.fail(f"{MANIFEST_DOC.relative_to(ROOT)}: no ```yaml block after the marker {REFERENCE_MARKER!r}")


# --- the files a manifest names ---------------------------------------------------------------

def _harness_checkpoint(path: Path, arch: str) -> None:
    from bench.core.checkpoint import save_checkpoint
    from bench.core.models.backbones import create_encoder

    encoder = create_encoder(arch)
    save_checkpoint(path, encoder.state_dict(), {"arch": arch, "method": "external", "data": "docs", "steps": 0,
                                                 "normalization": encoder.normalization, "seed": 0})


def _timm_weights(arch: str) -> dict:
    """A plain (timm/torchvision-named) state dict of `arch`, classifier included."""
    from bench.core.models.backbones import backbone_spec
    from fixtures.checkpoint_formats import timm_state

    return timm_state(backbone_spec(arch).timm_name)


KEY_PREFIX = "backbone."  # the weights of an import with a key map carry it; the key map strips it


def _import_file(path: Path, arch: str, fmt: str, with_key_map: bool) -> None:
    import torch

    from fixtures.checkpoint_formats import write_moco_v2

    if fmt == "harness":
        _harness_checkpoint(path, arch)
    elif fmt == "moco" or (fmt == "auto" and "moco" in path.name.lower()):
        write_moco_v2(path, _timm_weights(arch))
    elif fmt in ("auto", "timm", "torchvision"):
        state = _timm_weights(arch)
        torch.save({KEY_PREFIX + k: v for k, v in state.items()} if with_key_map else state, path)
    else:
        pytest.fail(f"the reference example imports format {fmt!r}; teach tests/test_docs.py to write one")


def _pretrain_root(dest: Path, dataset: str, scratch: Path) -> None:
    from fixtures import pretrain_layouts as layouts

    builders = {"kitti_raw": layouts.build_kitti_raw, "cityscapes_seq": layouts.build_cityscapes_seq,
                "nyuv2_depth": layouts.build_nyuv2_depth, "video_folder": layouts.build_video_folder,
                "image_folder": layouts.build_image_folder}
    if dataset not in builders:
        pytest.fail(f"the reference example pre-trains on {dataset!r} from a root; add its builder here")
    built = Path(builders[dataset](scratch / dataset))  # kitti_raw writes its ROOT below the folder given
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(dest))


def _dataset_root(dest: Path, name: str) -> None:
    from fixtures.ade20k import build_ade20k
    from fixtures.cityscapes import build_cityscapes
    from fixtures.kitti import build_kitti
    from fixtures.nyuv2 import build_nyuv2
    from fixtures.voc import build_voc

    builders = {"kitti": build_kitti, "cityscapes": build_cityscapes, "nyuv2": build_nyuv2, "ade20k": build_ade20k,
                "voc": build_voc}
    if name not in builders:
        pytest.fail(f"the reference example names a root for dataset {name!r}; add its builder here")
    dest.mkdir(parents=True, exist_ok=True)
    builders[name](dest)


def write_inputs(raw: dict, base: Path) -> None:
    """Create every file and folder the manifest `raw` (parsed YAML) names, relative to `base`."""
    def at(p) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else base / path

    scratch = base / ".scratch"
    for b in raw.get("backbones") or []:
        if b.get("checkpoint"):
            at(b["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
            _harness_checkpoint(at(b["checkpoint"]), b["arch"])
        if imp := b.get("import"):
            at(imp["file"]).parent.mkdir(parents=True, exist_ok=True)
            _import_file(at(imp["file"]), b["arch"], imp.get("format", "auto"), bool(imp.get("key_map")))
            if imp.get("key_map"):  # a rule that strips the prefix (capture the rest: '' would drop the key)
                at(imp["key_map"]).write_text(f"- ['^{re.escape(KEY_PREFIX)}(.*)', '\\1']\n")
        if pre := b.get("pretrain"):
            if pre.get("root"):
                _pretrain_root(at(pre["root"]), pre.get("dataset", "synth"), scratch)
            if pre.get("init"):
                import torch

                at(pre["init"]).parent.mkdir(parents=True, exist_ok=True)
                torch.save(_timm_weights(b["arch"]), at(pre["init"]))  # e.g. ImageNet weights of the arch
            if (pre.get("options") or {}).get("pseudo_labels"):
                # Loading resolves the folder; its contents (`bench pseudo-label`) are read when the
                # pre-training starts, which this test does not do.
                at(pre["options"]["pseudo_labels"]).mkdir(parents=True, exist_ok=True)
    for d in raw.get("datasets") or []:
        if d.get("root"):
            _dataset_root(at(d["root"]), d["name"])
    for decoder in (raw.get("transfer") or {}).get("decoders") or []:
        prefix, _, arg = decoder.partition(":")
        if arg:  # mmseg:FILE.py names a config relative to the manifest, as if it lived in configs/
            source = ROOT / "configs" / arg
            if not source.is_file():
                pytest.fail(f"the reference example's decoder {decoder!r} names no file under configs/")
            at(arg).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, at(arg))


def _nested_model(annotation) -> type[BaseModel] | None:
    """The model whose keys a field holds: `M`, `M | None`, `list[M]`; a dict's keys are free names."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:
        return None
    for arg in get_args(annotation):
        if model := _nested_model(arg):
            return model
    return None


def schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.add(key)
        if sub := _nested_model(field.annotation):
            keys |= schema_keys(sub, key + ".")
    return keys


def used_keys(value, prefix: str = "") -> set[str]:
    """Dotted keys of a parsed manifest; the entries of a list are merged."""
    keys = set()
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(prefix + str(k))
            keys |= used_keys(v, f"{prefix}{k}.")
    elif isinstance(value, list):
        for item in value:
            keys |= used_keys(item, prefix)
    return keys


def expected_cells(raw: dict) -> int:
    t = raw.get("transfer") or {}
    decoders = len(dict.fromkeys(t.get("decoders", ["monodepth2"])))
    per_protocol = sum(1 if p == "linear" else decoders for p in t.get("protocols", ["full", "frozen", "linear"]))
    return (len(raw["backbones"]) * len(raw["datasets"]) * per_protocol * len(t.get("train_sizes", [16]))
            * len(t.get("seeds", [0])))


# --- the tests --------------------------------------------------------------------------------

def test_the_reference_manifest_uses_every_key():
    from bench.study.manifest import Manifest

    missing = sorted(schema_keys(Manifest) - used_keys(yaml.safe_load(reference_example())))
    assert not missing, (f"{MANIFEST_DOC.relative_to(ROOT)}: the complete example lacks {', '.join(missing)}; "
                         f"add them (the example is the manifest reference)")


def test_the_reference_manifest_loads(tmp_path):
    from bench.study.manifest import load_manifest
    from bench.study.matrix import expand

    text = reference_example()
    raw = yaml.safe_load(text)
    folder = tmp_path / "configs"  # the example is written as if it lived in configs/
    folder.mkdir()
    write_inputs(raw, folder)
    path = folder / "reference.yaml"
    path.write_text(text)

    manifest = load_manifest(path)
    cells = expand(manifest)
    assert cells, "the complete example expands to no cells"
    assert len(cells) == expected_cells(raw)
    assert {c.backbone for c in cells} == {b["name"] for b in raw["backbones"]}
    assert {c.decoder for c in cells} == {*raw["transfer"]["decoders"], "linear"}
    assert all(c.decoder == "linear" for c in cells if c.protocol == "linear")
    # Relative paths are resolved against the manifest's folder.
    for b in manifest.backbones:
        for p in (b.checkpoint, b.import_ and b.import_.file, b.pretrain and b.pretrain.root):
            assert p is None or (p.is_absolute() and p.exists())


def test_the_readme_manifest_loads(tmp_path):
    from bench.study.manifest import load_manifest
    from bench.study.matrix import expand

    yaml_blocks = [body for language, body, _ in code_blocks(README.read_text(encoding="utf-8"))
                   if language in ("yaml", "yml")]
    assert yaml_blocks, "README.md: no ```yaml block (the short manifest example)"
    path = tmp_path / "readme.yaml"  # an empty folder: the example may only use the generated world
    path.write_text(yaml_blocks[0])
    cells = expand(load_manifest(path))
    assert cells, "README.md's manifest example expands to no cells"
    assert len(cells) == expected_cells(yaml.safe_load(yaml_blocks[0]))


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading with anchor #{anchor} in {path.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, (f"README.md has {len(lines)} lines (at most {MAX_README_LINES}); "
                                             f"move reference material to docs/")
    blocks = code_blocks(text)
    assert blocks, "README.md has no code block"
    _, body, start = blocks[0]
    commands = [line.split("#", 1)[0].strip() for line in body.splitlines()]
    assert [c for c in commands if c] == FRONT_DOOR, f"README.md's first code block must be exactly {FRONT_DOOR}"
    # Before it: the title and a one-paragraph pitch, nothing else.
    before = [chunk for chunk in re.split(r"\n\s*\n", "\n".join(lines[:start]).strip()) if chunk.strip()]
    assert len(before) == 2 and before[0].startswith("# ") and not before[1].lstrip().startswith("#"), \
        "README.md must open with its title, one paragraph, then the two commands"
