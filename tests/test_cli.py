"""The CLI verbs on a tiny world: outputs, one-line errors, and --help for every verb."""

import json

import pytest

from bench.cli import build_parser, main
from bench.core.checkpoint import load_checkpoint


@pytest.mark.parametrize("verb", [["run"], ["submit"], ["convert"], ["status"], ["pretrain"], ["pseudo-label"],
                                  ["transfer"], ["aggregate"], ["cka"], ["data"], ["data", "synth"], ["data", "inspect"],
                                  ["list"]])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(verb + ["--help"])
    assert done.value.code == 0 and "usage: bench" in capsys.readouterr().out


@pytest.mark.parametrize("verb, listed", [("pretrain", "head_init_std=0.5"), ("transfer", "output_stride=16"),
                                          ("transfer", "num_queries=100")])
def test_help_lists_each_plugins_options_with_defaults(verb, listed, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([verb, "--help"])
    assert listed in capsys.readouterr().out


def test_data_synth_writes_a_world_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["data", "synth", "--out", str(out), "--sequences", "2", "--frames", "2", "--height", "32",
                 "--width", "96", "--crops-per-class", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_sequences"] == 2 and meta["height"] == 32
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert main(["data", "synth", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_pretrain_then_transfer(tiny_world, tmp_path, capsys):
    ck = tmp_path / "depth"
    assert main(["pretrain", "--method", "depth_supervised", "--arch", "resnet10t", "--root", str(tiny_world),
                 "--steps", "3", "--batch-size", "2", "--out", str(ck), "--no-progress"]) == 0
    ckpt = load_checkpoint(ck / "checkpoint.safetensors")
    assert ckpt.meta["method"] == "depth_supervised" and ckpt.meta["steps"] == 3
    assert (ck / "history.csv").read_text().startswith("step,loss,lr")

    cell = tmp_path / "cell"
    assert main(["transfer", "--checkpoint", str(ck / "checkpoint.safetensors"), "--root", str(tiny_world),
                 "--protocol", "frozen", "--train-size", "4", "--steps", "2", "--batch-size", "2",
                 "--out", str(cell), "--no-progress"]) == 0
    record = json.loads((cell / "record.json").read_text())
    assert record["cell"]["backbone"] == "depth" and record["init"]["effective"] == "encoder+decoder"
    from bench.core.version import harness_checkout, library_versions

    # The harness's commit (None outside a checkout) and the library versions in the record and
    # summary.json, not in the checkpoint, whose hash every cell fingerprint includes.
    summary = json.loads((ck / "summary.json").read_text())
    assert record["harness_git"] == summary["harness_git"] == harness_checkout()
    assert record["versions"] == summary["versions"] == library_versions()
    assert "torchvision" in record["versions"] and "versions" not in record["config"]
    assert "harness_git" not in json.dumps(ckpt.meta) and "versions" not in json.dumps(ckpt.meta)
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--method", "depth_supervised", "--arch", "resnet9", "--root", "{world}", "--steps", "1",
      "--out", "{tmp}/p"], "unknown arch 'resnet9'"),
    (["pretrain", "--method", "classification", "--arch", "resnet10t", "--root", "{tmp}/nowhere", "--steps", "1",
      "--out", "{tmp}/p"], "folder not found"),
    (["transfer", "--checkpoint", "none", "--root", "{world}", "--protocol", "full", "--out", "{tmp}/c"],
     "needs --arch"),
    (["transfer", "--checkpoint", "{tmp}/missing.safetensors", "--root", "{world}", "--protocol", "full",
      "--out", "{tmp}/c"], "checkpoint not found"),
    (["transfer", "--checkpoint", "none", "--arch", "resnet10t", "--root", "{world}", "--protocol", "full",
      "--init", "encoder+decoder", "--train-size", "4", "--steps", "1", "--out", "{tmp}/c"], "needs monodepth2 decoder weights"),
    (["transfer", "--checkpoint", "none", "--arch", "resnet10t", "--root", "{world}", "--protocol", "full",
      "--train-size", "500", "--steps", "1", "--out", "{tmp}/c"], "exceeds"),
])
def test_user_mistakes_are_one_line(tiny_world, tmp_path, capsys, args, message):
    args = [a.format(world=tiny_world, tmp=tmp_path) for a in args]
    assert main(args + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c" / "record.json").exists()


def test_list_prints_every_registry_with_descriptions(capsys):
    from bench.cli.listing import WHAT, entries

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for what in WHAT:
        assert f"{what}:\n" in out
        for name, description in entries(what):
            assert description and f"  {name}" in out  # every entry, and each has its line
    assert main(["list", "decoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["deeplabv3", "linear", "mask2former", "mmseg:ARG", "monodepth2"]
    assert main(["list", "protocols"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["full", "frozen", "linear"]


def test_a_bad_optimiser_flag_of_transfer_is_one_line(tiny_world, tmp_path, capsys):
    assert main(["transfer", "--checkpoint", "none", "--arch", "resnet10t", "--root", str(tiny_world),
                 "--protocol", "linear", "--lr", "-1", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lr:") and "\n" not in err and not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv", [["list"], ["status", "{results}", "--all"]])
def test_a_reader_that_stops_early_ends_the_verb_quietly(argv, tmp_path):
    """`bench list | head -1`: the reader's end is closed before the verb writes, so every write
    meets a broken pipe; the verb ends with 141 and no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench.cli import BROKEN_PIPE_STATUS

    from bench.study.manifest import load_manifest
    from tests.conftest import tiny_manifest

    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    manifest = load_manifest(tiny_manifest(tmp_path))
    (results / "manifest.resolved.json").write_text(manifest.model_dump_json(by_alias=True))
    argv = [a.format(results=results) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader has gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == BROKEN_PIPE_STATUS, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def _parsers(parser, prog=None):
    """Every parser of the CLI with its prog: `bench`, each verb, each nested verb (`bench data synth`)."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_of_every_verb_has_help():
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in _parsers(build_parser())
               for a in p._actions if not a.help]
    assert not missing, missing


def test_rendered_help_has_no_doubled_percent_signs():
    import argparse

    rendered = {p.prog: p.format_help() for p in _parsers(build_parser())}
    assert not [prog for prog, text in rendered.items() if "%%" in text]
    assert "95% Student-t" in " ".join(rendered["bench aggregate"].split())
    transfer = " ".join(rendered["bench transfer"].split())
    assert "5% of the steps" in transfer
    assert all(isinstance(p, argparse.ArgumentParser) for p in _parsers(build_parser()))


@pytest.mark.parametrize("argv, hint", [(["run"], "bench run"), (["transfer", "--protocol", "nope"], "bench transfer"),
                                        (["data", "synth"], "bench data synth"), (["frobnicate"], "bench"),
                                        (["run", "m.yaml", "--workers", "0"], "bench run"),
                                        (["submit", "--workers", "-2"], "bench submit")])
def test_a_usage_mistake_is_one_line_and_a_hint(argv, hint, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"{hint}: error: ") and err.endswith(f"(see {hint} --help)")


def test_workers_zero_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["run", "m.yaml", "--workers", "0"])
    assert "--workers: must be at least 1, got 0" in capsys.readouterr().err


def test_run_refuses_json_without_dry_run(tmp_path, capsys):
    from tests.conftest import tiny_manifest

    manifest = tiny_manifest(tmp_path)
    assert main(["run", str(manifest), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --json") and "--dry-run" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("prog", ["bench run", "bench pretrain", "bench transfer", "bench pseudo-label",
                                  "bench submit", "bench data inspect"])
def test_progress_is_one_boolean_flag_everywhere(prog):
    import argparse

    parser = next(p for p in _parsers(build_parser()) if p.prog == prog)
    (action,) = [a for a in parser._actions if "--progress" in a.option_strings]
    assert isinstance(action, argparse.BooleanOptionalAction) and action.default is True
    assert action.option_strings == ["--progress", "--no-progress"]


def test_convert_takes_checkpoint_as_a_flag_and_the_older_positional(capsys):
    from bench.cli.convert import _checkpoint

    parser = build_parser()
    flag = parser.parse_args(["convert", "--checkpoint", "a.pth", "--arch", "resnet18", "--out", "x.safetensors"])
    old = parser.parse_args(["convert", "a.pth", "--arch", "resnet18", "--out", "x.safetensors"])
    assert _checkpoint(flag) == _checkpoint(old) == "a.pth"
    assert main(["convert", "--arch", "resnet18", "--out", "x.safetensors"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
