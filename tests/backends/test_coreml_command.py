"""`streamdiff convert` and `--accel coreml` from the command line: outputs, and one-line errors."""

from __future__ import annotations

import re
import sys

import pytest
from cli_checks import one_line_error
from conftest import copy_of_converted

from streamdiff.cli import main

TINY = ["--model", "tiny", "--render-size", "64"]


def test_convert_finds_the_parts_it_has_and_writes_the_others(converted, tmp_path, capsys):
    out = copy_of_converted(converted, tmp_path)  # what this command converts, converted by the same code
    stored = len(list(out.glob("*/*.mlpackage")))
    command = ["convert", *TINY, "--steps", "2", "--strength", "0.6", "--out", str(out)]
    assert main(command) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.endswith(": already there") for line in lines[:3])
    assert {line.split("-")[0] for line in lines[:3]} == {"unet", "encoder", "decoder"}
    assert lines[3] == f"3 parts in {out}; on the Mac: --accel coreml --coreml-dir {out}"
    assert len(list(out.glob("*/*.mlpackage"))) == stored

    assert main([*command, "--frame-buffer-size", "2"]) == 0  # two pictures per call: new shapes
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(re.search(r": converted in \d+\.\d s$", line) for line in lines[:3])
    assert {line.split("-")[0] for line in lines[:3]} == {"unet", "encoder", "decoder"}
    assert len(list(out.glob("*/*.mlpackage"))) == stored + 3


def test_convert_takes_controlnets_as_one_part_with_the_unet(converted_controlled, tmp_path, capsys):
    out = copy_of_converted(converted_controlled, tmp_path)  # the part these ControlNets make, and the codec's
    assert main(["convert", *TINY, "--steps", "2", "--strength", "0.6", "--controlnet", "canny",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.endswith(": already there") for line in lines[:3])
    assert {line.split("-")[0] for line in lines[:3]} == {"controlled", "encoder", "decoder"}


@pytest.mark.parametrize("options, expected", [
    (["--device", "cuda"], "on the CPU in float32"),
    (["--dtype", "float16"], "on the CPU in float32"),
    (["--frame-buffer-size", "0"], "--frame-buffer-size must be at least 1"),
])
def test_convert_refuses_what_it_cannot_do_in_one_line(options, expected, tmp_path, capsys):
    assert main(["convert", *TINY, *options, "--out", str(tmp_path)]) == 2
    assert expected in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_an_out_that_cannot_be_a_folder_is_one_line_before_the_model_loads(tmp_path, capsys):
    taken = tmp_path / "parts.png"
    taken.write_bytes(b"not a folder")
    assert main(["convert", *TINY, "--out", str(taken)]) == 2
    assert f"--out {taken} is a file; expected a folder" in one_line_error(capsys)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_accel_coreml_off_macos_says_why_in_one_line(tmp_path, capsys):
    code = main(["img2img", "sample", str(tmp_path / "out.png"), *TINY, "--prompt", "ink", "--accel", "coreml"])
    assert code == 2
    err = one_line_error(capsys)
    assert "--accel coreml cannot run here" in err and "macOS" in err and "streamdiff convert" in err
    assert not (tmp_path / "out.png").exists()
