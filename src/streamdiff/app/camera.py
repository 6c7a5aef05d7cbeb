"""`streamdiff camera`: the real-time camera app (window, virtual camera, video file or headless)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamdiff.app.gallery import resolve_prompts
from streamdiff.app.keys import Controls, engine_controls, help_lines
from streamdiff.app.optional import require
from streamdiff.app.overlay import splash
from streamdiff.app.remote import CONTROL_TYPES
from streamdiff.app.remote_inputs import RemoteInputs, add_remote_options
from streamdiff.errors import UserError

logger = logging.getLogger(__name__)

DESCRIPTION = """Stylize a live camera (or a video, stream, screen region or image folder) in real time.
The window shows the camera and the output side by side; the output alone goes to other outputs.

keys:
  """


def register(subparsers: Any) -> None:
    from streamdiff.app.runtime import MIN_PANE_HEIGHT
    from streamdiff.cli_options import add_engine_options, checked

    p = subparsers.add_parser(
        "camera", help="live camera stylization in a window (the main job)",
        description=DESCRIPTION + "\n  ".join(help_lines()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_options(p)
    p.set_defaults(compile_in_background=True)  # stylized frames within seconds; the compiled speed follows
    g = p.add_argument_group("camera app")
    g.add_argument("--prompts", nargs="?", const="gallery", default=None, metavar="FILE",
                   help="switch prompts with n/p: the built-in gallery of styles, or a .txt/.yaml file (after "
                        "--prompt, where given)")
    g.add_argument("--camera", default=None, metavar="SOURCE",
                   help="camera index, /dev/videoN, video file, stream URL (rtsp://, http://), image or folder, "
                        "screen[:LEFT,TOP,WIDTH,HEIGHT], an NDI source (ndi, ndi:NAME, ndi://HOST:PORT) or pattern "
                        "(default: camera 0, else the test pattern)")
    g.add_argument("--blend", type=checked(float, lambda share: 0 <= share <= 1, "a number in [0, 1]"),
                   default=0.0, help="camera share of the output, [0, 1] (+/-)")
    add_smoothing_options(g)
    g.add_argument("--similarity-filter", nargs="?", type=float, const=0.98, default=None, metavar="THRESHOLD",
                   help="skip frames that barely changed (default threshold 0.98)")
    g.add_argument("--save-dir", default="captures", help="where s saves PNGs (default ./captures)")
    g.add_argument("--mirror", action="store_true", help="mirror the camera, like a selfie view (m)")
    g.add_argument("--fullscreen", action="store_true",
                   help="full-screen window with the output alone (needs --output window, the default)")
    g.add_argument("--output", action="append", default=None, metavar="WHERE",
                   help="window (default), virtual (virtual camera), ndi[:NAME] (an NDI source on the network, "
                        "default name streamdiff), none, a video file (.mp4, .mkv, .mov) or a folder for PNG "
                        "frames; repeat for several")
    g.add_argument("--display-fps", type=checked(float, lambda fps: fps > 0, "a rate above 0 frames per second"),
                   default=30.0, help="display rate in frames per second, above 0 (default 30)")
    g.add_argument("--display-size", type=checked(int, lambda size: size >= MIN_PANE_HEIGHT,
                                                  f"a height of at least {MIN_PANE_HEIGHT} pixels"),
                   default=512, help=f"height of each pane in pixels, at least {MIN_PANE_HEIGHT} (default 512)")
    add_transition_option(g)
    g.add_argument("--loop", action="store_true", help="restart a video file or image folder at its end")
    g.add_argument("--duration", type=checked(float, lambda seconds: seconds > 0, "a number of seconds above 0"),
                   default=None, help="stop after this many seconds (above 0; default: run until quit)")
    g.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads when the model runs on the CPU (default: all cores but one)")
    add_remote_options(g)
    p.set_defaults(func=run)


def add_smoothing_options(group: Any, keys: bool = True) -> None:
    """--ema and --feedback in the range the stream's settings take (the keys and MIDI stop lower); `keys`: name
    the camera window's keys for them."""
    from streamdiff.cli_options import checked

    share = checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")
    group.add_argument("--ema", type=share, default=0.0, help="output smoothing, [0, 1)" + (" (e/d)" if keys else ""))
    group.add_argument("--feedback", type=share, default=0.3,
                       help="share of the last latent fed back, [0, 1)" + (" (f/v)" if keys else ""))


def add_transition_option(group: Any) -> None:
    """--transition-frames, for the camera and the web page."""
    from streamdiff.cli_options import checked

    group.add_argument("--transition-frames", type=checked(int, lambda frames: frames >= 0, "0 or more frames"),
                       default=8, help="frames a prompt change takes, 0 for at once (default 8)")


def run(args: argparse.Namespace) -> int:
    require("cv2", "the camera app")
    outputs = args.output or ["window"]
    _check_outputs(outputs, args.fullscreen)
    window = _open_window(outputs, args.fullscreen)  # no display: fail before the model loads
    sinks: list[Any] = [window] if window else []
    source = remotes = None
    try:
        remotes = RemoteInputs.open(args, CONTROL_TYPES)
        if window is not None:
            window.write(splash(f"loading {args.model or 'the model'}...", 2 * args.display_size, args.display_size))
            window.read_key()  # lets the window appear now
        source, reopen = open_camera(args.camera)
        runtime = _runtime(args, source, reopen, sinks, outputs)
    except BaseException:
        for closable in [*sinks, source, remotes]:
            if closable is not None:
                closable.close()
        raise
    if remotes.describe():
        print(remotes.describe(), file=sys.stderr, flush=True)
    try:
        remotes.start(runtime.remote_change, lambda: len(runtime.display.prompt_book.prompts))
        summary = runtime.run(duration=args.duration)  # from here the runtime closes the source and sinks
    finally:
        remotes.close()
    saved = len(runtime.display.saved)
    print(f"camera: {summary.captured} frames captured, {summary.inferred} stylized "
          f"({summary.rate(summary.inferred):.1f} fps), {summary.displayed} shown "
          f"({summary.rate(summary.displayed):.1f} fps)" + (f", {saved} saved" if saved else ""))
    return 0


def _runtime(args: argparse.Namespace, source: Any, reopen: Callable[[], Any], sinks: list[Any],
             outputs: list[str]) -> Any:
    """Load the model and put the runtime together (the sinks list grows with the outputs opened)."""
    from streamdiff.app.runtime import Runtime, RuntimeOptions

    pipe, prompts = live_engine(args)
    controls = Controls(blend=args.blend, ema=args.ema, feedback=args.feedback, seed=args.seed,
                        mirror=args.mirror, layout="output" if args.fullscreen else "side", **engine_controls(pipe))
    options = RuntimeOptions(prompts=tuple(prompts), fit=args.fit, display_fps=args.display_fps,
                             pane_height=args.display_size, transition_frames=args.transition_frames,
                             save_dir=Path(args.save_dir), loop=args.loop, style_name=style_name(args))
    sinks += _open_outputs(outputs, options, (pipe.config.width, pipe.config.height), source.fps)
    return Runtime(pipe, source, sinks, options, controls, reopen)


def style_name(args: argparse.Namespace) -> str | None:
    """The name the overlay and the page give the --style-image picture; None without one."""
    return Path(args.style_image).name if args.style_image else None


def live_engine(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The engine of a live app (the camera, the web page) and its prompt list: --prompt/--prompts, the model,
    the CPU's threads and the similarity filter as the command line says."""
    from streamdiff.cli_options import engine_from_args

    prompts = resolve_prompts(args.prompt, args.prompts)
    args.prompt = prompts[0]
    # The filter is part of the stream before it is accelerated: its check is then captured with each step at
    # start-up, not beside a background compile (where it runs uncaptured: ~12 ms more per frame on an H100 then).
    overrides = {} if args.similarity_filter is None else {"similarity_threshold": args.similarity_filter}
    pipe = engine_from_args(args, **overrides)
    if pipe.device.type == "cpu":
        set_cpu_threads(args.cpu_threads)
    return pipe, prompts


def set_cpu_threads(threads: int | None) -> int:
    """Leave a core to the capture and display threads: torch's workers wait for each other at every
    operation, so one of them held up by another thread stalls the whole model (seen 100x slower)."""
    import torch

    if threads is None:
        threads = max(1, (os.cpu_count() or 2) - 1)
    if threads < 1:
        raise ValueError(f"--cpu-threads must be at least 1; got {threads}")
    torch.set_num_threads(threads)
    return threads


def open_camera(spec: str | None) -> tuple[Any, Callable[[], Any]]:
    """The source and how to reopen it; no --camera means camera 0, or the test pattern without one."""
    from streamdiff.app.sources import (
        AnimatedPattern,
        OpenCVCamera,
        default_camera_available,
        open_source,
    )

    if spec is None:
        if default_camera_available():
            return OpenCVCamera(0), lambda: OpenCVCamera(0)
        logger.warning("no camera found; running on the built-in test pattern (choose a source with --camera)")
        return AnimatedPattern(), AnimatedPattern
    return open_source(spec), lambda: open_source(spec)


def _open_window(outputs: list[str], fullscreen: bool) -> Any:
    from streamdiff.app.sinks import WindowSink

    names = [o.lower() for o in outputs]
    if names.count("window") > 1:
        raise UserError("--output window can be given once")
    return WindowSink(fullscreen=fullscreen) if "window" in names else None


def _output_kind(output: str) -> str:
    """What an --output value names: window, none, virtual, ndi, video (a file) or folder (PNG frames)."""
    from streamdiff.app.ndi import is_ndi
    from streamdiff.app.sinks import VIDEO_SUFFIXES

    name = output.lower()
    if name in ("window", "none", "virtual"):
        return name
    if name == "null":
        return "none"
    if name in ("vcam", "virtualcam"):
        return "virtual"
    if is_ndi(output):
        return "ndi"
    if Path(output).suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if Path(output).suffix == "" or Path(output).is_dir():
        return "folder"
    raise UserError(f"unknown --output {output!r}: use window, virtual, ndi[:NAME], none, a video file "
                    f"({', '.join(VIDEO_SUFFIXES)}) or a folder for PNG frames")


def _check_outputs(outputs: list[str], fullscreen: bool) -> None:
    """Every --output understood and its PNG folder made, and --fullscreen given a window, before anything opens
    or the model loads."""
    from streamdiff.cli_options import output_folder

    kinds = [_output_kind(output) for output in outputs]
    for output, kind in zip(outputs, kinds):
        if kind == "folder":
            output_folder(output, "--output")
    if fullscreen and "window" not in kinds:
        raise UserError("--fullscreen is for the window, which --output leaves out: add --output window, or leave "
                        "--fullscreen out")


def _open_outputs(outputs: list[str], options: Any, render_size: tuple[int, int], fps: float | None) -> list[Any]:
    """The non-window sinks, at the output pane's size."""
    from streamdiff.app.display import pane_size
    from streamdiff.app.ndi import NdiSink, sender_name
    from streamdiff.app.sinks import NullSink, PngSequenceSink, VideoFileSink, VirtualCameraSink

    width, height = pane_size(options.pane_height, render_size)
    rate = options.display_fps or fps or 30.0
    sinks: list[Any] = []
    for output in outputs:
        kind = _output_kind(output)
        if kind == "none":
            sinks.append(NullSink())
        elif kind == "virtual":
            sinks.append(VirtualCameraSink(width, height, rate))
        elif kind == "ndi":
            sinks.append(NdiSink(sender_name(output), rate))
        elif kind == "video":
            sinks.append(VideoFileSink(output, width, height, rate))
        elif kind == "folder":
            sinks.append(PngSequenceSink(output))
    return sinks
