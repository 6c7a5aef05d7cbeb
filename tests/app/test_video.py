"""`streamdiff video`: every frame out, in order, at the input's rate, with its audio; clean errors."""

from __future__ import annotations

import io
import threading

import av
import numpy as np
import pytest
from app_fakes import FakeEngine, make_clip
from cli_checks import one_line_error

from streamdiff.app.video import Progress, stylize_video
from streamdiff.cli import main
from streamdiff.errors import UserError

TINY = ["--model", "tiny", "--render-size", "64", "--strength", "0.6", "--steps", "2", "--prompt", "ink wash"]


def probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        audio = [s.codec_context.name for s in container.streams.audio]
        return pictures, video.average_rate, audio


@pytest.mark.parametrize("frames_per_call", [1, 5])
@pytest.mark.parametrize("latency", [0, 1, 3])
def test_every_frame_comes_out_in_order_whatever_the_latency(tmp_path, clip, latency, frames_per_call):
    # 12 frames 5 per call: the last call is filled up with copies, whose outputs must not be written.
    engine = FakeEngine(latency_frames=latency, frame_buffer_size=frames_per_call)
    summary = stylize_video(engine, clip, tmp_path / "out.mp4")
    pictures, rate, audio = probe(tmp_path / "out.mp4")
    assert summary.frames == len(pictures) == 12 and rate == 25 and audio == ["aac"]
    # The fake engine outputs 1 - input: frame k, grey 20k, comes back as 255 - 20k.
    assert [round((255 - int(p[8, 8, 0])) / 20) for p in pictures] == list(range(12))


def test_any_input_size_is_fitted_to_the_render_size(tmp_path):
    wide = make_clip(tmp_path / "wide.mp4", frames=3, width=160, height=64, audio=False)
    stylize_video(FakeEngine(width=64, height=48, fit="pad"), wide, tmp_path / "out.mp4")
    pictures, _, _ = probe(tmp_path / "out.mp4")
    assert pictures[0].shape == (48, 64, 3)
    # 160x64 padded into 64x48: a 64x26 picture between black bars (white after the fake's 1 - x).
    assert pictures[2][2, 32].min() > 240 and pictures[2][24, 32, 0] < 240


def test_a_clip_shorter_than_the_latency_still_gives_every_frame(tmp_path):
    short = make_clip(tmp_path / "short.mp4", frames=2, audio=False)
    summary = stylize_video(FakeEngine(latency_frames=3), short, tmp_path / "out.mp4")
    pictures, _, audio = probe(tmp_path / "out.mp4")
    assert summary.frames == len(pictures) == 2 and audio == []
    assert [round((255 - int(p[8, 8, 0])) / 20) for p in pictures] == [0, 1]


def make_pcm_clip(path):
    """24 frames (grey 10k) at 24 fps in MPEG-4 Part 2 with a second of PCM audio, which MP4 cannot hold."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        for k in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * k, np.uint8), format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = (1000 * np.sin(np.arange(16000) / 7)).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(sound.encode(frame))
    return path


def test_audio_that_mp4_cannot_hold_is_re_encoded(tmp_path):
    source = make_pcm_clip(tmp_path / "pcm.mkv")
    summary = stylize_video(FakeEngine(latency_frames=1), source, tmp_path / "out.mp4")
    pictures, rate, audio = probe(tmp_path / "out.mp4")
    assert len(pictures) == 24 and abs(float(rate) - 24) < 0.05 and audio == ["aac"]
    assert summary.audio == "pcm_s16le re-encoded to AAC"


def contents(path):
    """Every video frame (pts, pixels) and every audio packet (pts, bytes) of a file, stream by stream."""
    with av.open(str(path)) as container:
        video = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = [(p.pts, bytes(p)) for p in container.demux(audio=0) if p.size]
    return video, audio


@pytest.mark.parametrize("kind, frames_per_call, latency", [("aac", 1, 1), ("pcm", 5, 0)])
def test_codec_threads_write_the_file_the_calling_thread_writes(tmp_path, kind, frames_per_call, latency):
    source = make_clip(tmp_path / "in.mp4") if kind == "aac" else make_pcm_clip(tmp_path / "in.mkv")
    for threads in (True, False):
        engine = FakeEngine(latency_frames=latency, frame_buffer_size=frames_per_call)
        stylize_video(engine, source, tmp_path / f"threads-{threads}.mp4", threads=threads)
    (video, audio), (video_inline, audio_inline) = contents(tmp_path / "threads-True.mp4"), contents(
        tmp_path / "threads-False.mp4")
    assert [pts for pts, _ in video] == [pts for pts, _ in video_inline] and len(video) in (12, 24)
    for (pts, picture), (_, reference) in zip(video, video_inline):
        np.testing.assert_array_equal(picture, reference, err_msg=f"frame at pts {pts}")
    assert len(audio) > 5 and audio == audio_inline


def test_decoding_and_encoding_run_on_threads_of_their_own(tmp_path, clip, monkeypatch):
    from streamdiff.app.sinks import VideoFileSink
    from streamdiff.app.sources import VideoFile

    workers: dict[str, set[str]] = {"read": set(), "write": set(), "write_audio": set()}
    for cls, name in ((VideoFile, "read_frame"), (VideoFileSink, "write"), (VideoFileSink, "write_audio")):
        original = getattr(cls, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            workers["read" if _name == "read_frame" else _name].add(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    engine = FakeEngine()
    stylize_video(engine, clip, tmp_path / "out.mp4")
    assert workers == {"read": {"streamdiff-decode"}, "write": {"streamdiff-encode"},
                       "write_audio": {"streamdiff-encode"}}
    assert engine.engine_threads() == {threading.current_thread().name}
    assert not codec_threads()


def codec_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streamdiff-") and t.is_alive()]


@pytest.mark.timeout(60)
def test_an_engine_failure_mid_clip_stops_the_codec_threads(tmp_path):
    # Long enough that the decode thread, read-ahead queue full, still waits when the engine fails.
    clip = make_clip(tmp_path / "long.mp4", frames=40)
    try:
        stylize_video(FakeEngine(fail_after=5), clip, tmp_path / "out.mp4")
    except ValueError as error:  # checked while the traceback still holds the call's frames
        assert "broke on purpose" in str(error)
        assert not codec_threads()
    else:
        pytest.fail("the engine's failure was not raised")


@pytest.mark.timeout(60)
def test_a_decode_error_mid_clip_is_raised_after_the_frames_before_it(tmp_path, clip, monkeypatch):
    from streamdiff.app.sources import VideoFile

    read = VideoFile.read_frame
    decoded = []

    def read_until_the_seventh(self):
        if len(decoded) == 6:
            raise UserError(f"{self.name} is corrupt or unsupported: Invalid data found when processing input")
        frame = read(self)
        decoded.append(frame)
        return frame

    monkeypatch.setattr(VideoFile, "read_frame", read_until_the_seventh)
    engine = FakeEngine()
    with pytest.raises(UserError, match="corrupt or unsupported"):
        stylize_video(engine, clip, tmp_path / "out.mp4")
    assert [round(m / 20) for m in engine.inputs] == list(range(6))
    assert not codec_threads()


@pytest.mark.timeout(60)
def test_a_failed_write_is_raised_on_the_calling_thread(tmp_path, clip, monkeypatch):
    from streamdiff.app.sinks import VideoFileSink

    write = VideoFileSink.write

    def write_three(self, image, pts=None):
        if self.frames == 3:
            raise OSError(28, "No space left on device")
        write(self, image, pts)

    monkeypatch.setattr(VideoFileSink, "write", write_three)
    with pytest.raises(OSError, match="No space left"):
        stylize_video(FakeEngine(), clip, tmp_path / "out.mp4")
    assert not codec_threads()


def test_an_accelerated_engine_pipelines_the_frames_to_the_same_video(tmp_path, tiny_pipe_factory):
    from streamdiff.backends.graphs import DirectCall
    from streamdiff.backends.runner import AcceleratedStream
    from streamdiff.stream import StreamPipeline

    def engine():
        pipe = StreamPipeline.from_diffusers(tiny_pipe_factory(), width=64, height=64, strength=0.6, steps=2,
                                             seed=1, device="cpu")
        pipe.prepare("a watercolor")
        return AcceleratedStream(pipe, DirectCall.capture, mode="direct")

    source = make_clip(tmp_path / "in.mp4", frames=10, width=64, height=64, audio=False)
    pipelined, one_by_one = engine(), engine()
    summary = stylize_video(pipelined, source, tmp_path / "pipelined.mp4")
    stylize_video(one_by_one, source, tmp_path / "one-by-one.mp4", pipelined=False)
    # The decoded pictures went to the captured step as they are (uint8 arrays), not as float tensors.
    assert pipelined.captured == ["img2img of 1 x 64x64 uint8 frames"]
    assert one_by_one.captured != pipelined.captured
    got, _, _ = probe(tmp_path / "pipelined.mp4")
    expected, _, _ = probe(tmp_path / "one-by-one.mp4")
    assert summary.frames == len(got) == len(expected) == 10  # the stream batch's warm-up and flush included
    for k, (picture, reference) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(picture, reference, err_msg=f"frame {k}")


def test_several_frames_per_call_give_the_pictures_of_one_frame_per_call(tmp_path, tiny_pipe_factory):
    from streamdiff.backends.graphs import DirectCall
    from streamdiff.backends.runner import AcceleratedStream
    from streamdiff.stream import StreamPipeline

    def engine(frames_per_call: int, accelerated: bool):
        pipe = StreamPipeline.from_diffusers(tiny_pipe_factory(), width=64, height=64, strength=0.6, steps=1,
                                             seed=1, device="cpu", frame_buffer_size=frames_per_call,
                                             shared_noise=True)
        pipe.prepare("a watercolor")
        return AcceleratedStream(pipe, DirectCall.capture, mode="direct") if accelerated else pipe

    source = make_clip(tmp_path / "in.mp4", frames=10, width=64, height=64, audio=False)
    stylize_video(engine(1, False), source, tmp_path / "one.mp4")
    expected, _, _ = probe(tmp_path / "one.mp4")
    for name, stream in (("plain", engine(4, False)), ("pipelined", engine(4, True))):
        summary = stylize_video(stream, source, tmp_path / f"{name}.mp4")
        got, _, _ = probe(tmp_path / f"{name}.mp4")
        assert summary.frames == len(got) == 10, name  # 4 + 4 + 2 (and two copies dropped)
        for k, (picture, reference) in enumerate(zip(got, expected)):
            difference = np.abs(picture.astype(int) - reference.astype(int))
            assert difference.mean() < 0.5 and difference.max() <= 12, f"{name} frame {k}: {difference.max()}"
    assert stream.captured == ["img2img of 4 x 64x64 uint8 frames"]


def test_progress_line_shows_frames_rate_and_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(100, stream, clock=lambda: now[0])
    now[0] = 10.0
    progress.update(40)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "frames 40/100 (40%) | 4.0 FPS | ETA 0:00:15"


def test_streamdiff_video_with_the_tiny_model(tmp_path, clip, capsys):
    out = tmp_path / "styled.mp4"
    assert main(["video", str(clip), str(out), *TINY]) == 0
    pictures, rate, audio = probe(out)
    assert len(pictures) == 12 and rate == 25 and pictures[0].shape == (64, 64, 3) and audio == ["aac"]
    captured = capsys.readouterr()
    assert f"wrote {out}: 12 frames, 64x64 at 25 fps" in captured.out
    assert "frames 12/12 (100%)" in captured.err


def test_streamdiff_video_with_the_tiny_sdxl_model(tmp_path, clip):
    out = tmp_path / "styled.mp4"
    model = TINY.index("--model") + 1
    assert main(["video", str(clip), str(out), *TINY[:model], "tiny-sdxl", *TINY[model + 1:]]) == 0
    pictures, _, _ = probe(out)
    assert len(pictures) == 12 and pictures[0].shape == (64, 64, 3)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01garbage" * 500, "cannot open video"),
    (None, "input video not found"),
])
def test_a_missing_or_corrupt_input_is_a_one_line_error(tmp_path, capsys, content, message):
    source = tmp_path / "input.mp4"
    if content is not None:
        source.write_bytes(content)
    assert main(["video", str(source), str(tmp_path / "out.mp4"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamdiff: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists()


def test_streamdiff_video_several_frames_per_call(tmp_path, clip, capsys):
    out = tmp_path / "styled.mp4"
    assert main(["video", str(clip), str(out), *TINY, "--frame-buffer-size", "5"]) == 0
    pictures, rate, _ = probe(out)
    assert len(pictures) == 12 and rate == 25
    assert main(["video", str(clip), str(out), *TINY, "--frame-buffer-size", "0"]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--frame-buffer-size must be at least 1; got 0")


def test_refuses_to_overwrite_its_input(clip, capsys):
    assert main(["video", str(clip), str(clip), *TINY]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


@pytest.mark.parametrize("crf", ["-5", "99"])
def test_a_crf_outside_libx264s_range_is_refused_before_the_model_loads(tmp_path, clip, capsys, monkeypatch, crf):
    from streamdiff.stream import StreamPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad --crf was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exited:
        main(["video", str(clip), str(out), *TINY, "--crf", crf])
    assert exited.value.code == 2 and not out.exists()
    assert f"argument --crf: expected an integer from 0 to 51; got '{crf}'" in one_line_error(capsys)


def test_an_ip_adapter_without_a_style_picture_is_refused_before_the_model_loads(tmp_path, clip, capsys,
                                                                                  monkeypatch):
    """A video takes no picture later (no page, no OSC): the adapter would load and steer nothing."""
    from streamdiff.stream import StreamPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing --style-image was noticed")

    monkeypatch.setattr(StreamPipeline, "from_model", refuse)
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), str(out), *TINY, "--ip-adapter", "base"]) == 2
    assert "--ip-adapter needs --style-image PICTURE for video" in one_line_error(capsys) and not out.exists()
