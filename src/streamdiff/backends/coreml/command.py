"""`streamdiff convert`: a model's UNet and codec as Core ML parts, for the shapes a stream will use."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """Convert a model's UNet and latent codec to Core ML for `--accel coreml` on a Mac. It runs the
stream the options describe for two frames (and two of text to image) in PyTorch on the CPU, converting each
part at the shape the stream calls it with, and keeps the parts in a folder. This works on any machine with
coremltools (Linux too); copy the folder to the Mac and pass it as --coreml-dir. A stream that needs a shape
not converted yet converts it at its first call."""


def register(subparsers: Any) -> None:
    from streamdiff.cli_options import add_engine_options

    p = subparsers.add_parser("convert", help="convert a model to Core ML for Apple machines (--accel coreml)",
                              description=DESCRIPTION)
    add_engine_options(p, acceleration=False)
    g = p.add_argument_group("conversion")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="folder of converted parts (default ~/.cache/streamdiff/coreml, where --accel coreml looks)")
    g.add_argument("--frame-buffer-size", type=int, default=1, metavar="N",
                   help="pictures per call, as `streamdiff video --frame-buffer-size` (default 1)")
    g.add_argument("--txt2img", action=argparse.BooleanOptionalAction, default=True,
                   help="also convert the shapes of text to image (the web page's text mode; default on)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamdiff.backends.runner import AcceleratedStream
    from streamdiff.cli_options import ip_adapter, output_folder, progress, stream_from_args
    from streamdiff.errors import UserError

    from . import NO_IP_ADAPTER, use_coreml
    from .convert import require_coremltools

    if args.device not in ("auto", "cpu") or args.dtype not in (None, "float32", "fp32"):
        raise UserError("convert traces the model on the CPU in float32: leave out --device and --dtype")
    if args.frame_buffer_size < 1:
        raise UserError(f"--frame-buffer-size must be at least 1; got {args.frame_buffer_size}")
    if ip_adapter(args) is not None:
        raise UserError(NO_IP_ADAPTER)
    require_coremltools()  # before the model loads
    if args.out is not None:
        output_folder(args.out, "--out")  # a file there, or no way to make the folder, fails before the model loads
    pipe = stream_from_args(args, device="cpu", dtype="float32", frame_buffer_size=args.frame_buffer_size)
    store = use_coreml(pipe, args.out, load=None, progress=progress)
    AcceleratedStream(pipe, None).warm(txt2img=args.txt2img)
    for part in store.asked.values():
        state = "already there" if part.seconds is None else f"converted in {part.seconds:.1f} s"
        print(f"{part.path.parent.name}/{part.path.name}: {state}")
    print(f"{len(store.asked)} parts in {store.root}; on the Mac: --accel coreml --coreml-dir {store.root}")
    return 0
