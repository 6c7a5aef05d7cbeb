"""`streamdiff camera` end to end with the tiny model, headless: outputs, fallbacks and one-line errors."""

from __future__ import annotations

import logging

import av
import pytest
from app_fakes import make_clip
from cli_checks import one_line_error

from streamdiff.app import sources
from streamdiff.cli import main

TINY = ["--model", "tiny", "--render-size", "64", "--display-size", "64"]


def test_headless_run_on_the_test_pattern(capsys, tmp_path):
    prompts = tmp_path / "styles.yaml"
    prompts.write_text("- ink wash\n- neon noir\n")
    code = main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "1.5",
                 "--prompts", str(prompts), "--similarity-filter"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("camera: ") and "frames captured" in out and "stylized" in out


def test_the_similarity_filter_is_part_of_the_stream_before_it_is_accelerated(monkeypatch):
    """Its check is then captured with each step at start-up, not beside a compilation running in the background
    (set afterwards, it used to take the lock that compilation holds)."""
    from streamdiff.backends import accelerate

    thresholds = []
    real = accelerate.accelerate_from_args

    def accelerated(pipe, args, progress=None):
        thresholds.append(None if pipe.similarity_filter is None else pipe.similarity_filter.threshold)
        return real(pipe, args, progress)

    monkeypatch.setattr(accelerate, "accelerate_from_args", accelerated)
    run = ["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5"]
    assert main([*run, "--similarity-filter", "0.9"]) == 0
    assert main(run) == 0
    assert thresholds == [0.9, None]


def test_the_live_controls_start_from_the_engines_steps_even_past_the_keys_range(monkeypatch):
    from streamdiff.app.runtime import Runtime

    started = []
    run = Runtime.run

    def record(self, duration=None):
        started.append(self.controls)
        return run(self, duration)

    monkeypatch.setattr(Runtime, "run", record)
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5", "--strength", "1",
                 "--steps", "5"]) == 0
    assert started[0].steps == 5 and started[0].strength == 1.0


def test_without_a_camera_it_says_so_and_runs_the_test_pattern(monkeypatch, caplog, capsys):
    monkeypatch.setattr(sources, "default_camera_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert main(["camera", *TINY, "--output", "none", "--duration", "1"]) == 0
    assert "no camera found; running on the built-in test pattern" in caplog.text
    assert "frames captured" in capsys.readouterr().out


def test_without_a_display_the_window_output_suggests_another(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["camera", *TINY, "--camera", "pattern"]) == 2
    err = one_line_error(capsys)
    assert "no display" in err and "--output none" in err and "--output virtual" in err


def test_an_unknown_camera_index_lists_the_cameras_found(capsys):
    assert main(["camera", *TINY, "--camera", "63", "--output", "none"]) == 2
    assert "camera 63 not found; cameras found: " in one_line_error(capsys)


@pytest.mark.parametrize("name, content, message", [
    ("missing.mp4", None, "no such file, folder or camera"),
    ("corrupt.mp4", b"\x00junk" * 300, "cannot open video"),
    ("notes.xyz", b"hello", "cannot open video"),
])
def test_a_missing_corrupt_or_unsupported_file_is_a_one_line_error(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["camera", *TINY, "--camera", str(path), "--output", "none"]) == 2
    assert message in one_line_error(capsys)


def test_a_video_file_source_ends_cleanly_and_records_the_output(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=15, fps=30, audio=False)
    recording = tmp_path / "recording.mp4"
    frames = tmp_path / "frames"
    code = main(["camera", *TINY, "--camera", str(clip), "--output", str(recording), "--output", str(frames),
                 "--duration", "60"])
    assert code == 0
    assert "15 frames captured" in capsys.readouterr().out
    with av.open(str(recording)) as container:
        shown = sum(1 for _ in container.decode(video=0))
        assert container.streams.video[0].average_rate == 30
    assert shown >= 10 and len(list(frames.glob("frame_*.png"))) == shown


@pytest.mark.parametrize("options, message", [
    (["--output", "out.gif"], "unknown --output 'out.gif': use window, virtual, ndi[:NAME], none, a video file"),
    (["--output", "out.xyz", "--output", "none"], "unknown --output 'out.xyz'"),
    (["--output", "taken"], "--output taken is a file; expected a folder"),
    (["--output", "none", "--fullscreen"], "--fullscreen is for the window, which --output leaves out"),
    (["--output", "none", "--model-config", "base-model"],
     "--model-config is for a --model given as a .safetensors or .ckpt file; --model tiny brings its own"),
])
def test_outputs_and_options_that_would_be_ignored_are_refused_before_the_model_loads(capsys, monkeypatch, tmp_path,
                                                                                       options, message):
    from streamdiff.stream import StreamPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file where PNG frames would go")
    assert main(["camera", *TINY, "--camera", "pattern", *options]) == 2
    assert message in one_line_error(capsys)


def test_on_the_cpu_the_model_leaves_a_core_to_the_capture_and_display_threads(monkeypatch, capsys):
    import torch

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5"]) == 0
    assert torch.get_num_threads() == 3
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5",
                 "--cpu-threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--cpu-threads", "0"]) == 2
    assert "--cpu-threads must be at least 1" in one_line_error(capsys)


@pytest.mark.parametrize("options, message", [
    (["--display-fps", "-5"], "argument --display-fps: expected a rate above 0 frames per second; got '-5'"),
    (["--display-fps", "0"], "argument --display-fps: expected a rate above 0 frames per second; got '0'"),
    (["--display-size", "0"], "argument --display-size: expected a height of at least 16 pixels; got '0'"),
    (["--duration", "-1"], "argument --duration: expected a number of seconds above 0; got '-1'"),
    (["--duration", "0"], "argument --duration: expected a number of seconds above 0; got '0'"),
    (["--transition-frames", "-3"], "argument --transition-frames: expected 0 or more frames; got '-3'"),
    (["--ema", "1"], "argument --ema: expected a number in [0, 1); got '1'"),
    (["--feedback", "-0.1"], "argument --feedback: expected a number in [0, 1); got '-0.1'"),
    (["--blend", "2"], "argument --blend: expected a number in [0, 1]; got '2'"),
    (["--blend", "-0.1"], "argument --blend: expected a number in [0, 1]; got '-0.1'"),
])
def test_out_of_range_app_options_are_named_before_the_model_loads(capsys, monkeypatch, options, message):
    from streamdiff.stream import StreamPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)
    with pytest.raises(SystemExit) as exited:
        main(["camera", *TINY, "--camera", "pattern", "--output", "none", *options])
    assert exited.value.code == 2
    assert message in one_line_error(capsys)


def test_ema_and_feedback_take_the_range_their_help_states(capsys):
    with pytest.raises(SystemExit):
        main(["camera", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "output smoothing, [0, 1) (e/d)" in shown and "share of the last latent fed back, [0, 1) (f/v)" in shown
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5", "--ema", "0.99",
                 "--feedback", "0.95"]) == 0



def test_blend_takes_the_range_its_help_states(capsys):
    with pytest.raises(SystemExit):
        main(["camera", "--help"])
    assert "camera share of the output, [0, 1] (+/-)" in " ".join(capsys.readouterr().out.split())
    assert main(["camera", *TINY, "--camera", "pattern", "--output", "none", "--duration", "0.5", "--blend", "1"]) == 0
