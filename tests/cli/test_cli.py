"""The `streamdiff` command end to end on the tiny model: pictures written, errors on one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_line_error
from PIL import Image

import streamdiff
from streamdiff.cli import main

SAMPLE_FILE = str(Path(streamdiff.__file__).parent / "assets" / "sample.png")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamdiff.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_img2img_writes_a_picture_of_the_render_size(tmp_path, capsys):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out.png"
    code = main(["img2img", str(source), str(out), "--prompt", "ink drawing", "--model", "tiny",
                 "--steps", "2", "--strength", "0.6", "--cfg", "self", "--device", "cpu"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert Image.open(out).size == (64, 64)


def test_bundled_sample_and_txt2img(tmp_path):
    out = tmp_path / "a.png"
    assert main(["img2img", "sample", str(out), "--prompt", "x", "--model", "tiny", "--device", "cpu",
                 "--render-size", "96"]) == 0
    assert Image.open(out).size == (96, 96)
    out2 = tmp_path / "b.jpg"
    assert main(["txt2img", str(out2), "--prompt", "a cat", "--model", "tiny", "--device", "cpu"]) == 0
    assert Image.open(out2).size == (64, 64)


def test_sdxl_streams_from_the_command_line_with_its_prompt_a_controlnet_and_a_non_square_size(tmp_path):
    def run(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.png"
        assert main([*extra[:1], *(["sample"] if extra[0] == "img2img" else []), str(out), "--model", "tiny-sdxl",
                     "--device", "cpu", *extra[1:]]) == 0
        return np.asarray(Image.open(out)).astype(int)

    fox = run("fox", "img2img", "--prompt", "a fox", "--width", "96", "--height", "64")
    assert fox.shape == (64, 96, 3)
    assert np.abs(fox - run("owl", "img2img", "--prompt", "an owl", "--width", "96", "--height", "64")).max() > 0
    steered = run("canny", "img2img", "--prompt", "a fox", "--width", "96", "--height", "64", "--controlnet", "canny")
    assert np.abs(fox - steered).max() > 0
    guided = run("text", "txt2img", "--prompt", "a fox", "--cfg", "full", "--guidance", "3", "--negative-prompt", "x")
    assert guided.shape == (64, 64, 3) and np.abs(guided - run("plain", "txt2img", "--prompt", "a fox")).max() > 0


def test_controlnet_steers_img2img_and_txt2img(tmp_path):
    pictures = {}
    for name, extra in (("plain", []), ("canny", ["--controlnet", "canny", "--canny-thresholds", "20,60"]),
                        ("weak", ["--controlnet", "canny", "--canny-thresholds", "20,60", "--control-scale", "0"]),
                        ("depth", ["--controlnet", "depth"]),
                        ("itself", ["--controlnet", "depth", "--control-preprocess", "none"]),
                        # Two together (one option with a comma, or the option twice); the second at scale 0.
                        ("both", ["--controlnet", "canny", "--controlnet", "depth", "--canny-thresholds", "20,60"]),
                        ("second-off", ["--controlnet", "canny,depth", "--canny-thresholds", "20,60",
                                        "--control-scale", "1,0"])):
        out = tmp_path / f"{name}.png"
        assert main(["img2img", "sample", str(out), "--prompt", "x", "--model", "tiny", "--device", "cpu", *extra]) == 0
        pictures[name] = np.asarray(Image.open(out), dtype=int)
    assert np.abs(pictures["canny"] - pictures["plain"]).max() > 3  # the ControlNet steered
    assert np.abs(pictures["weak"] - pictures["plain"]).max() <= 1  # at scale 0 it does not
    assert np.abs(pictures["depth"] - pictures["itself"]).max() > 3  # estimated depth, not the picture, steered
    assert np.abs(pictures["both"] - pictures["canny"]).max() > 3  # the depth ControlNet steered too
    assert np.abs(pictures["second-off"] - pictures["canny"]).max() <= 1  # each one has its own scale
    out = tmp_path / "drawn.png"
    assert main(["txt2img", str(out), "--prompt", "x", "--model", "tiny", "--device", "cpu", "--controlnet", "depth",
                 "--control-image", "sample"]) == 0
    assert Image.open(out).size == (64, 64)
    # A picture per ControlNet: the sample's edges for canny, and for depth a black or a white picture itself.
    for shade in (0, 255):
        Image.new("RGB", (64, 64), (shade,) * 3).save(tmp_path / f"{shade}.png")
    drawn = {}
    for shade in (0, 255):
        out = tmp_path / f"{shade}-drawn.png"
        assert main(["txt2img", str(out), "--prompt", "x", "--model", "tiny", "--device", "cpu", "--controlnet",
                     "canny,depth", "--control-preprocess", "canny,none", "--canny-thresholds", "20,60",
                     "--control-image", "sample", "--control-image", str(tmp_path / f"{shade}.png")]) == 0
        drawn[shade] = np.asarray(Image.open(out), dtype=int)
    assert np.abs(drawn[0] - drawn[255]).max() > 3  # the second ControlNet read its own picture


def test_a_style_picture_steers_img2img_and_txt2img(tmp_path):
    for shade in (0, 255):
        Image.new("RGB", (40, 48), (shade, 255 - shade, 90)).save(tmp_path / f"style-{shade}.png")
    dark, light = ["--style-image", str(tmp_path / "style-0.png")], ["--style-image", str(tmp_path / "style-255.png")]

    def run(name: str, command: str, *extra: str, model: str = "tiny") -> np.ndarray:
        out = tmp_path / f"{model}-{command}-{name}.png"
        source = ["sample"] if command == "img2img" else []
        assert main([command, *source, str(out), "--prompt", "x", "--model", model, "--device", "cpu", *extra]) == 0
        return np.asarray(Image.open(out), dtype=int)

    plain = run("plain", "img2img")
    assert np.abs(run("dark", "img2img", *dark) - plain).max() > 3  # the picture steered
    assert np.abs(run("dark", "img2img", *dark) - run("light", "img2img", *light, "--ip-adapter-scale", "1")).max() > 3
    assert np.abs(run("off", "img2img", *light, "--ip-adapter-scale", "0") - plain).max() <= 1  # not at scale 0
    assert np.abs(run("dark", "txt2img", *dark) - run("plain", "txt2img")).max() > 3
    sdxl = run("plain", "img2img", model="tiny-sdxl")
    assert np.abs(run("dark", "img2img", *dark, model="tiny-sdxl") - sdxl).max() > 3


@pytest.mark.parametrize(
    "args, words",
    [
        (["img2img", "missing.png", "o.png", "--prompt", "x", "--model", "tiny"], "input picture not found"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--width", "100"],
         "width must be a positive multiple of 8"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--width", "0", "--height", "64"],
         "width must be a positive multiple of 8; got 0"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--steps", "0"],
         "steps must be at least 1; got 0"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--fit", "exact"],
         "expected a 64x64 picture (width x height) with fit 'exact'; got 512x512 (fit 'crop', 'pad' or 'stretch' "
         "adapts other sizes)"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--t-index", "3,60"],
         "t_index_list entries must be in [0, 49]"),
        (["img2img", "sample", "no/such/dir/o.png", "--prompt", "x", "--model", "tiny"], "output folder does not exist"),
        (["txt2img", "o.png", "--prompt", "x", "--model", "tiny", "--device", "cuda"], "no usable CUDA GPU"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--control-scale", "0.5"],
         "--control-scale needs --controlnet"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--controlnet", "canny"],
         "model 'sdxs-512' has no middle stage for a ControlNet to feed"),
        (["txt2img", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny"],
         "txt2img with --controlnet needs --control-image PICTURE"),
        (["txt2img", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny", "--control-image", "no.png"],
         "control picture not found: no.png"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny",
          "--canny-thresholds", "200,100"], "canny_thresholds must be two numbers with 0 <= low <= high"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny,depth",
          "--control-scale", "0.5,0.4,0.3"], "--control-scale gives 3 values for 2 ControlNet(s)"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny",
          "--control-preprocess", "canny,none"], "--control-preprocess gives 2 values for 1 ControlNet(s)"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny,depth",
          "--control-preprocess", "canny,midas"], "expected canny, depth, none, or one of them per ControlNet"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny,,depth"],
         "several separated by commas"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny",
          "--controlnet", "canny"], "ControlNet 'canny' is given twice"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--depth-estimator", "base"],
         "--depth-estimator serves a ControlNet that reads estimated depth"),
        (["txt2img", "o.png", "--prompt", "x", "--model", "tiny", "--controlnet", "canny,depth", "--control-image",
          "sample", "--control-image", "sample", "--control-image", "sample"],
         "--control-image is given 3 times for 2 ControlNet(s)"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--ip-adapter-scale", "0.5"],
         "--ip-adapter-scale needs --style-image or --ip-adapter"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "sd-turbo", "--style-image", SAMPLE_FILE],
         "no base IP-Adapter is published for sd21 models"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--style-image", "none.png"],
         "style picture not found: none.png"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--ip-adapter", "plus", "--style-image",
          SAMPLE_FILE], "random weights build the base IP-Adapter only"),
        (["img2img", "sample", "o.png", "--prompt", "x", "--model", "tiny", "--ip-adapter", "base", "--style-image",
          SAMPLE_FILE, "--ip-adapter-scale", "7"], "ip_adapter_scale must be a number in [0, 5]"),
    ],
)
def test_errors_print_one_line_and_exit_non_zero(args, words, tmp_path, capsys, monkeypatch):
    """In this process (a subprocess costs seconds of imports each): main's one line, its exit code (argparse's
    own errors leave through SystemExit, as in a real process)."""
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamdiff: error:") and words in lines[0], lines


@pytest.mark.parametrize("args, words", [
    (["img2img", "sample", "o3.xyz"], "cannot write o3.xyz: unknown picture format .xyz; expected a picture file"),
    (["img2img", "sample", "o"], "cannot write o: unknown picture format (no extension); expected a picture file"),
    (["txt2img", "o3.xyz"], "cannot write o3.xyz: unknown picture format .xyz; expected a picture file"),
    (["img2img", "sample", "folder"], "output picture folder is a folder; expected a picture file such as "
                                      "folder/out.png"),
    (["img2img", "sample", "no/such/dir/o.png"], "output folder does not exist: no/such/dir"),
    (["img2img", "folder", "o.png"], "input picture folder is a folder; expected a picture file"),
    (["img2img", "sample", "o.png", "--style-image", "folder"], "style picture folder is a folder; expected a picture"),
    (["img2img", "sample", "o.png", "--ip-adapter", "base"], "--ip-adapter needs --style-image PICTURE for img2img"),
    (["txt2img", "o.png", "--ip-adapter", "base"], "--ip-adapter needs --style-image PICTURE for txt2img"),
    (["img2img", "sample", "o.png", "--model-config", "base-model"],
     "--model-config is for a --model given as a .safetensors or .ckpt file; --model tiny brings its own"),
])
def test_paths_and_options_that_would_be_ignored_are_refused_before_the_model_loads(args, words, tmp_path, capsys,
                                                                                      monkeypatch):
    from streamdiff.stream import StreamPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    assert main([*args, "--prompt", "x", "--model", "tiny"]) == 2
    assert words in one_line_error(capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize("args, ending", [
    (["camera", "--bogus"], "unrecognized arguments: --bogus (see streamdiff camera --help)"),
    (["img2img", "sample", "o.png", "--prompt", "x", "--bogus"],
     "unrecognized arguments: --bogus (see streamdiff img2img --help)"),
    (["models", "--bogus", "1"], "unrecognized arguments: --bogus 1 (see streamdiff models --help)"),
    (["--bogus", "models"], "unrecognized arguments: --bogus (see streamdiff --help)"),
])
def test_an_unknown_option_points_to_the_help_that_lists_the_options(args, ending, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert one_line_error(capsys).endswith(ending + "\n")


def test_an_error_in_a_real_process_is_one_line_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "streamdiff.cli", "img2img", "missing.png", "o.png", "--prompt",
                             "x", "--model", "tiny"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0] == "streamdiff: error: input picture not found: missing.png", result.stderr


def test_unreadable_picture_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture at all")
    assert main(["img2img", str(bad), str(tmp_path / "o.png"), "--prompt", "x", "--model", "tiny",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and len(err.strip().splitlines()) == 1


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("img2img", "txt2img", "models"):
        assert command in result.stdout


ENTRY = """
import atexit, sys, threading
from streamdiff import cli
from streamdiff.backends import background

def main(argv=None):
    if sys.argv[1] == "compiling":  # a worker still compiling when the command is done
        threading.Thread(target=threading.Event().wait, name=background.THREAD_NAME, daemon=True).start()
    print("done")  # buffered (a pipe): entry() must flush it
    return 3

cli.main = main
atexit.register(lambda: print("interpreter torn down", flush=True))
cli.entry()
"""


@pytest.mark.parametrize("state", ["compiling", "idle"])
def test_the_console_script_ends_at_once_while_a_compilation_runs(state):
    """With a compiling thread left, the process ends without the interpreter's teardown (which crashes under a
    thread inside the compiler's native code), keeping the command's exit code and its buffered output."""
    done = subprocess.run([sys.executable, "-c", ENTRY, state], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "done"
    assert ("interpreter torn down" in done.stdout) == (state == "idle")
