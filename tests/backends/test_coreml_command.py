"""`streamdiff convert` and `--accel coreml` from the command line: outputs, and one-line errors."""

from __future__ import annotations

import sys

import pytest
from cli_checks import one_line_error

from streamdiff.cli import main

TINY = ["--model", "tiny", "--render-size", "64"]


def test_convert_writes_the_stream_parts_once(tmp_path, capsys):
    assert main(["convert", *TINY, "--steps", "2", "--strength", "0.6", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("converted in" in line for line in lines[:3])
    assert {line.split("-")[0] for line in lines[:3]} == {"unet", "encoder", "decoder"}
    assert lines[3] == f"3 parts in {tmp_path}; on the Mac: --accel coreml --coreml-dir {tmp_path}"
    assert len(list(tmp_path.glob("*/*.mlpackage"))) == 3

    assert main(["convert", *TINY, "--steps", "2", "--strength", "0.6", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("already there") == 3
    assert main(["convert", *TINY, "--steps", "2", "--strength", "0.6", "--frame-buffer-size", "2",
                 "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("converted in") == 3  # two pictures per call: new shapes
    assert len(list(tmp_path.glob("*/*.mlpackage"))) == 6


@pytest.mark.parametrize("options, expected", [
    (["--device", "cuda"], "on the CPU in float32"),
    (["--dtype", "float16"], "on the CPU in float32"),
    (["--frame-buffer-size", "0"], "--frame-buffer-size must be at least 1"),
])
def test_convert_refuses_what_it_cannot_do_in_one_line(options, expected, tmp_path, capsys):
    assert main(["convert", *TINY, *options, "--out", str(tmp_path)]) == 2
    assert expected in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_accel_coreml_off_macos_says_why_in_one_line(tmp_path, capsys):
    code = main(["img2img", "sample", str(tmp_path / "out.png"), *TINY, "--prompt", "ink", "--accel", "coreml"])
    assert code == 2
    err = one_line_error(capsys)
    assert "--accel coreml cannot run here" in err and "macOS" in err and "streamdiff convert" in err
    assert not (tmp_path / "out.png").exists()
