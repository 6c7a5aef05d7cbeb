"""`streamdiff video IN OUT --prompt ...`: stylize a video file offline, every frame, in order.

The stream batch holds `latency_frames` frames in flight: the output of call k shows input
k - latency. The first `latency` outputs are warm-up and are dropped; the last inputs come out of
`flush()` at the end, so OUT has exactly the frames of IN, with their timestamps (and the audio).

An accelerated engine takes the decoded pictures as they are and pipelines them (img2img_pipelined): the
device works on frame k while the host decodes frame k+1 and encodes the output before k, instead of
each waiting for the other. With frame_buffer_size F, F consecutive pictures go in per call (the last
call filled up with copies of the last picture, whose outputs are dropped). Decoding runs a few calls ahead
and encoding behind, each on a thread of its own (app/clip_threads.py), so the calling thread only feeds
the engine; the encode thread alone writes the output file, audio included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor

from streamdiff import images
from streamdiff.app.frames import to_engine
from streamdiff.errors import UserError


CRF_RANGE = (0, 51)  # libx264's constant rate factor for 8-bit video; outside it libav fails late or not at all


@dataclass(frozen=True)
class VideoSummary:
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    audio: str

    def line(self, output: Path) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"wrote {output}: {self.frames} frames, {self.width}x{self.height} at {self.fps:.3g} fps "
                f"in {self.seconds:.1f} s ({rate:.1f} frames/s); audio: {self.audio}")


class Progress:
    """One self-rewriting line on a terminal (frames, FPS, ETA); a line every few seconds elsewhere."""

    def __init__(self, total: int | None, stream: TextIO = sys.stderr, clock=time.perf_counter) -> None:
        self.total, self.stream, self.clock = total, stream, clock
        self.start = self.last = clock()
        self.tty = stream.isatty()
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        self._show(now, end="")

    def finish(self) -> None:
        self._show(self.clock(), end="\n")

    def _show(self, now: float, end: str) -> None:
        elapsed = max(1e-9, now - self.start)
        fps = self.done / elapsed
        if self.total:
            eta = (self.total - self.done) / fps if fps > 0 else 0.0
            share = 100 * self.done // self.total
            text = f"frames {self.done}/{self.total} ({share}%) | {fps:.1f} FPS | ETA {_clock(eta)}"
        else:
            text = f"frames {self.done} | {fps:.1f} FPS | {_clock(elapsed)} elapsed"
        self.stream.write(f"\r{text}\x1b[K{end}" if self.tty else text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def stylize_video(pipe: Any, input_path: str | Path, output_path: str | Path, *, audio: bool = True,
                  crf: int = 18, progress: TextIO | None = None, pipelined: bool = True,
                  threads: bool = True) -> VideoSummary:
    """Stylize every frame of INPUT into OUTPUT (H.264 at the render size), keeping timestamps and audio.

    pipelined=False runs each frame to its end before the next one is decoded, also on an engine that
    could overlap them; threads=False decodes and encodes on the calling thread, between the engine's
    calls (the same pictures either way; for comparisons).
    """
    from streamdiff.app.sinks import VideoFileSink
    from streamdiff.app.sources import VideoFile

    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input video not found: {input_path}")
    if output_path.resolve() == input_path.resolve():
        raise UserError("the output would overwrite the input; choose another output path")
    start = time.perf_counter()
    source = VideoFile(input_path, audio=audio)
    try:
        meter = Progress(source.frame_count, progress) if progress is not None else None
        config = pipe.config
        fps = source.fps or 30.0
        sink = VideoFileSink(output_path, config.width, config.height, fps, time_base=source.stream.time_base, crf=crf)
        try:
            audio_note = sink.add_audio(source.audio_stream) if source.audio_stream is not None else "none"
            frames = _run_frames(pipe, source, sink, meter.update if meter else None, pipelined, threads)
            if meter is not None:
                meter.finish()
        finally:
            sink.close()
    finally:
        source.close()
    if frames == 0:
        raise UserError(f"{input_path} holds no video frames")
    return VideoSummary(frames, sink.width, sink.height, fps, time.perf_counter() - start, audio_note)


@dataclass(frozen=True)
class _Call:
    """One engine call's input pictures and where their outputs go."""

    pictures: np.ndarray  # (H, W, 3) uint8 RGB for one frame per call, else (F, H, W, 3)
    pts: tuple[int | None, ...]  # each picture's timestamp; None for the copies that fill up the last call


class _Inline:
    """WriteBehind's interface, writing at once on the calling thread."""

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        write(*args)

    def finish(self) -> None:
        pass


_READ_AHEAD = 4  # calls decoded ahead of the engine: enough to cover a slow frame, little memory at 16 per call


def _run_frames(pipe: Any, source: Any, sink: Any, on_frame: Callable[[int], None] | None, pipelined: bool,
                threads: bool) -> int:
    from streamdiff.app.clip_threads import WriteBehind, read_ahead

    group = pipe.config.frame_buffer_size
    writer: WriteBehind | _Inline = WriteBehind("streamdiff-encode") if threads else _Inline()
    source.on_audio = lambda packet: writer.submit(sink.write_audio, packet)
    calls = _calls(source, group, _pts_step(source))
    if threads:
        calls = read_ahead(calls, _READ_AHEAD, "streamdiff-decode")  # the same items, decoded on a thread
    in_flight: deque[int | None] = deque()  # pts of the inputs whose outputs are not written yet (None: padding)
    warm_up = pipe.config.latency_frames * group
    written = 0

    def inputs() -> Iterator[np.ndarray]:
        for call in calls:
            in_flight.extend(call.pts)
            yield call.pictures

    def emit(picture: np.ndarray) -> None:
        nonlocal warm_up, written
        if warm_up:
            warm_up -= 1
            return
        pts = in_flight.popleft()
        if pts is None:
            return
        writer.submit(sink.write, picture, pts)
        written += 1
        if on_frame is not None:
            on_frame(written)

    try:
        for outputs in _stylized(pipe, inputs(), pipelined and pipe.pipelines_frames):
            for picture in outputs:
                emit(picture)
        if in_flight:
            for output in pipe.flush(output_type="pt"):
                for picture in _host_pictures(output):
                    emit(picture)
    finally:
        calls.close()  # stops the decode thread (if any) before the encode thread takes its last write
        writer.finish()
    return sink.frames


def _calls(source: Any, group: int, step: int) -> Generator[_Call, None, None]:
    """The clip's pictures, `group` consecutive ones per call (stacked when group > 1), with their pts; the
    last call is filled up with copies of the clip's last picture, whose outputs are dropped."""
    last_pts = -step
    pictures: list[np.ndarray] = []
    stamps: list[int | None] = []
    while (frame := source.read_frame()) is not None:
        last_pts = frame.pts if frame.pts is not None and frame.pts > last_pts else last_pts + step
        picture = source.rgb(frame)
        if group == 1:
            yield _Call(picture, (last_pts,))
            continue
        pictures.append(picture)
        stamps.append(last_pts)
        if len(pictures) == group:
            yield _Call(np.stack(pictures), tuple(stamps))
            pictures, stamps = [], []
    if pictures:
        fill = group - len(pictures)
        yield _Call(np.stack(pictures + [pictures[-1]] * fill), tuple(stamps) + (None,) * fill)


def _unbatched(output: np.ndarray) -> list[np.ndarray]:
    """The (H, W, 3) pictures of one call's output: (H, W, 3) for one frame, (F, H, W, 3) for F."""
    return [output] if output.ndim == 3 else list(output)


def _host_pictures(output: Tensor) -> list[np.ndarray]:
    """The (H, W, 3) uint8 RGB pictures of an engine output (F, 3, H, W) in [0, 1], in one download."""
    return _unbatched(images.to_output(output, "np"))


def _stylized(pipe: Any, calls: Iterator[np.ndarray], pipelined: bool) -> Iterator[list[np.ndarray]]:
    """The engine's uint8 RGB pictures for each call's RGB picture (or stack of pictures), in order (the
    stream batch's latency included: the first outputs are its warm-up)."""
    if pipelined:
        for output in pipe.img2img_pipelined(calls):  # the captured step fits each picture on the device
            yield _unbatched(output)
        return
    config = pipe.config
    for pictures in calls:
        stack = pictures[None] if pictures.ndim == 3 else pictures
        pixels = torch.cat([to_engine(p, "rgb", config.width, config.height, config.fit, pipe.device) for p in stack])
        yield _host_pictures(pipe.img2img(pixels, output_type="pt"))


def _pts_step(source: Any) -> int:
    """One frame's duration in the stream's time base (for frames that come without a timestamp)."""
    rate, base = source.stream.average_rate, source.stream.time_base
    if not rate or not base:
        return 1
    return max(1, round(1 / (rate * base)))


def _run(args: argparse.Namespace) -> int:
    from streamdiff.cli_options import engine_from_args, require_style_image

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input video not found: {args.input}")
    _probe(args.input)  # a corrupt input fails before the model loads
    if args.frame_buffer_size < 1:
        raise UserError(f"--frame-buffer-size must be at least 1; got {args.frame_buffer_size}")
    require_style_image(args, "video")
    # The frames of a call share each step's noise: as steady as one frame per call (see StreamConfig).
    pipe = engine_from_args(args, frame_buffer_size=args.frame_buffer_size, shared_noise=True)
    summary = stylize_video(pipe, args.input, args.output, audio=not args.no_audio, crf=args.crf,
                            progress=sys.stderr)
    print(summary.line(Path(args.output)))
    return 0


def _probe(path: str) -> None:
    from streamdiff.app.sources import VideoFile

    VideoFile(path).close()


def register(subparsers: Any) -> None:
    from streamdiff.cli_options import add_engine_options, checked

    p = subparsers.add_parser(
        "video", help="stylize a video file offline (every frame, audio kept)",
        description="Stylize every frame of a video file into an H.264 file at the render size, keeping "
                    "the frame timing and the audio. Input pictures are adapted with --fit.",
    )
    p.add_argument("input", help="input video file (anything FFmpeg reads)")
    p.add_argument("output", help="output video file (.mp4, .mkv, .mov)")
    add_engine_options(p, prompt_required=True)
    g = p.add_argument_group("video")
    g.add_argument("--no-audio", action="store_true", help="leave the audio out")
    g.add_argument("--crf", type=checked(int, lambda crf: CRF_RANGE[0] <= crf <= CRF_RANGE[1],
                                         f"an integer from {CRF_RANGE[0]} to {CRF_RANGE[1]}"), default=18,
                   help=f"H.264 quality, {CRF_RANGE[0]}-{CRF_RANGE[1]} (libx264's range): lower is better and larger, "
                        "0 is lossless (default 18)")
    g.add_argument("--frame-buffer-size", type=int, default=1, metavar="N",
                   help="frames per engine call (default 1): on a GPU, 8-16 stylize a clip faster; the frames of "
                        "a call share the fixed noise, so the video stays as steady as with 1")
    p.set_defaults(func=_run)
