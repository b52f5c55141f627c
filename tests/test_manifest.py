import json
import textwrap

import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.study.manifest import load_manifest
from bench.study.matrix import expand
from tests.conftest import tiny_manifest


def _write(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
name: t
backbones:
  - {name: a, arch: resnet10t}
datasets:
  - name: synth
"""


def test_valid_manifest_and_defaults(tmp_path):
    m = load_manifest(_write(tmp_path, BASE))
    assert m.transfer.protocols == ["full", "frozen", "linear"] and m.transfer.train_sizes == [16]


@pytest.mark.parametrize("text, expected", [
    (BASE + "transfer: {stepz: 3}\n", "m.yaml: transfer.stepz: unknown key"),
    (BASE + "transfer: {steps: abc}\n", "m.yaml: transfer.steps: Input should be a valid integer"),
    (BASE + "transfer: {protocols: [full, thawed]}\n", "m.yaml: transfer.protocols[1]: Input should be"),
    (BASE.replace("arch: resnet10t", "arch: resnet7"), "m.yaml: backbones[0].arch: unknown arch 'resnet7'"),
    (BASE.replace("arch: resnet10t}", "arch: resnet10t, checkpoint: nope.safetensors}"),
     "m.yaml: backbones[0].checkpoint: file not found"),
    ("name: t\ndatasets: [{name: synth}]\n", "m.yaml: backbones: Field required"),
    (BASE + "  - {name: cityscapes, root: /no/such/dir}\n", "m.yaml: datasets[1].root: folder not found"),
    (BASE + "  - {name: imagenet, root: /tmp}\n", "m.yaml: datasets[1].name: unknown dataset 'imagenet'"),
    (BASE + "  - {name: kitti}\n", "m.yaml: datasets[1]: dataset kitti needs a root folder"),
    (BASE + "  - {name: kitti, root: /tmp, crop: 512}\n", "m.yaml: datasets[1]: crop: give HxW"),
    (BASE + "  - {name: kitti, root: /tmp, resize: 192by640}\n", "m.yaml: datasets[1]: resize: expected HxW"),
    (BASE + "  - {name: synth}\n", "each dataset may appear once; repeated: synth"),
    ("name: t\nbackbones: [\n", "m.yaml: invalid YAML at line"),
    ("- just\n- a list\n", "m.yaml: a manifest is a YAML mapping"),
    (BASE + "  - {name: synth}\nbackbones:\n  - {name: a, arch: resnet10t}\n  - {name: a, arch: resnet18}\n",
     "backbone names must be unique; repeated: a"),
])
def test_errors_name_the_file_and_field(tmp_path, text, expected):
    with pytest.raises(UserError) as err:
        load_manifest(_write(tmp_path, text))
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_cli_error_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results"
    path = _write(tmp_path, BASE + f"out: {out}\ntransfer: {{seeds: [zero]}}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "transfer.seeds[0]" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_dry_run_json_expands_the_matrix(tmp_path, capsys):
    path = tiny_manifest(tmp_path, seeds="[0, 1]")
    assert main(["run", str(path), "--dry-run", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)
    # 3 backbones × 1 dataset × (full, frozen with monodepth2; linear with linear) × 1 size × 2 seeds
    assert len(cells) == 3 * 3 * 2
    assert {(c["protocol"], c["decoder"]) for c in cells} == {("full", "monodepth2"), ("frozen", "monodepth2"),
                                                               ("linear", "linear")}
    assert {c["method"] for c in cells} == {"none", "depth_supervised", "classification"}
    assert len({c["id"] for c in cells}) == len(cells)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_repeated_axis_values_do_not_duplicate_cells(tmp_path):
    m = load_manifest(_write(tmp_path, BASE + "transfer: {seeds: [0, 0], train_sizes: [4, 4]}\n"))
    assert len(expand(m)) == 3


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "m.yaml").write_text(BASE + "out: ../results/here\n")
    monkeypatch.chdir(sub.parent.parent)  # somewhere else entirely
    assert load_manifest(sub / "m.yaml").out == (tmp_path / "results" / "here").resolve()


PRE = BASE.replace("{name: a, arch: resnet10t}", "{name: a, arch: resnet10t, pretrain: PRETRAIN}")


@pytest.mark.parametrize("pretrain, expected", [
    ("{method: depth_magic}", "m.yaml: backbones[0].pretrain.method: unknown method 'depth_magic'; available:"),
    ("{method: depth_supervised, options: {silog_lamda: 1}}",
     "m.yaml: backbones[0].pretrain: method depth_supervised option silog_lamda: Extra inputs"),
    ("{method: depth_supervised, options: {head_init_std: 0}}", "option head_init_std: Input should be greater than 0"),
    ("{method: depth_supervised, dataset: kitti_raw}", "pretrain: dataset 'kitti_raw' needs a root folder"),
    ("{method: depth_supervised, dataset: imagenet}", "pretrain.dataset: unknown pre-training dataset 'imagenet'"),
    ("{method: depth_supervised, crop: 12}", "crop: give HxW"),
    ("{method: depth_supervised, init: nope.pth}", "backbones[0].pretrain.init: file not found"),
])
def test_pretrain_section_errors_are_one_line(tmp_path, pretrain, expected):
    with pytest.raises(UserError) as err:
        load_manifest(_write(tmp_path, PRE.replace("PRETRAIN", pretrain)))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_pretrain_paths_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    m = load_manifest(_write(tmp_path, PRE.replace(
        "PRETRAIN", "{method: depth_supervised, init: w.pth, crop: 32x64, options: {sparse_fraction: 0.1}}")))
    spec = m.backbones[0].pretrain
    assert spec.init == (tmp_path / "w.pth").resolve() and spec.options == {"sparse_fraction": 0.1}


def test_the_quickstart_manifest_is_valid():
    # (few_shot.yaml names the quickstart's checkpoints, which a fresh clone does not have yet.)
    from pathlib import Path

    m = load_manifest(Path(__file__).parent.parent / "configs" / "quickstart.yaml")
    dense = [p for p in m.transfer.protocols if p != "linear"]
    per_backbone = len(dense) * len(m.transfer.decoders) + ("linear" in m.transfer.protocols)
    assert len(expand(m, {})) == len(m.backbones) * per_backbone * len(m.transfer.seeds)
    # The demand: the embedded default shows the depth decoder and a cross-architecture head.
    assert {"monodepth2", "deeplabv3"} <= set(m.transfer.decoders)


def test_folder_options_resolve_against_the_manifest_folder(tmp_path):
    m = load_manifest(_write(tmp_path, PRE.replace(
        "PRETRAIN", "{method: depth_distill, options: {pseudo_labels: labels/teacher}}")))
    assert m.backbones[0].pretrain.options["pseudo_labels"] == str((tmp_path / "labels" / "teacher").resolve())


def test_the_slurm_folder_is_relative_to_the_manifest_like_every_path(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", BASE + "executor: {kind: slurm, slurm: {folder: logs/slurm}}\n")
    monkeypatch.chdir(tmp_path)
    assert load_manifest(path).executor.slurm.folder == tmp_path / "sub" / "logs" / "slurm"
    assert load_manifest(_write(tmp_path, BASE)).executor.slurm.folder is None  # default: RESULTS/slurm


def test_random_init_is_for_the_random_baseline_only(tmp_path):
    m = load_manifest(_write(tmp_path, BASE.replace("arch: resnet10t}", "arch: resnet10t, random_init: timm}")))
    assert m.backbones[0].random_init == "timm"
    assert load_manifest(_write(tmp_path, BASE)).backbones[0].random_init == "torchvision"  # the default
    text = BASE.replace("arch: resnet10t}", "arch: resnet10t, random_init: timm, pretrain: {method: flow}}")
    with pytest.raises(UserError, match=r"backbones\[0\]: random_init is for the random baseline"):
        load_manifest(_write(tmp_path, text))


def test_every_manifest_problem_is_listed_at_once(tmp_path, capsys):
    text = """
    name: t
    backbones:
      - {name: a, arch: resnet10t, colour: blue}
      - {name: b}
    datasets:
      - name: synth
    transfer: {steps: lots, train_sizes: [4]}
    """
    path = _write(tmp_path, text)
    assert main(["run", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"error: {path}: 3 problems:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == ["backbones[0].colour", "backbones[1].arch",
                                                                         "transfer.steps"]
    assert "unknown key" in " ".join(lines) and "(got 'lots')" in " ".join(lines)


def test_a_long_list_of_problems_is_cut_after_twenty(tmp_path):
    extra = "".join(f"  - {{name: b{i}, arch: resnet10t, oops: 1}}\n" for i in range(25))
    path = _write(tmp_path, BASE.replace("datasets:", extra + "datasets:"))
    with pytest.raises(UserError) as err:
        load_manifest(path)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("25 problems:") and len(lines) == 1 + 20 + 1 and lines[-1] == "  and 5 more"


def test_every_missing_file_is_listed_at_once(tmp_path):
    text = BASE.replace("  - {name: a, arch: resnet10t}", "  - {name: a, arch: resnet10t, checkpoint: gone.safetensors}\n"
                        "  - {name: b, arch: resnet10t, checkpoint: lost.safetensors}")
    text = text.replace("  - name: synth", "  - {name: cityscapes, root: nowhere}")
    with pytest.raises(UserError) as err:
        load_manifest(_write(tmp_path, text))
    lines = str(err.value).splitlines()
    assert lines[0].endswith("3 problems:")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["backbones[0].checkpoint", "backbones[1].checkpoint",
                                                                  "datasets[0].root"]
