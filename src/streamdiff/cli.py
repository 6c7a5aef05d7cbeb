"""The `streamdiff` command: thin argument parsing that delegates to the modules below it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Sequence

from . import images
from .cli_options import add_engine_options, controlnets, engine_from_args, require_style_image
from .errors import UserError

SAMPLE = "sample"  # names the bundled picture, for a first run with nothing at hand

# Feature modules that add a subcommand through `register(subparsers)`.
COMMANDS: tuple[str, ...] = (
    "streamdiff.app.camera",
    "streamdiff.app.video",
    "streamdiff.app.midi_command",
    "streamdiff.models.command",
    "streamdiff.bench.command",
    "streamdiff.web.command",
    "streamdiff.backends.coreml.command",
)


def _read_picture(name: str, role: str = "input picture"):
    source = Path(name)
    if name == SAMPLE and not source.exists():
        source = Path(__file__).parent / "assets" / "sample.png"
    return images.read_picture(source, role)


def _img2img(args: argparse.Namespace) -> int:
    picture = _read_picture(args.input)
    _check_output_picture(args.output)
    require_style_image(args, "img2img")
    # One picture: run the steps one after another, the same math as the stream batch without its latency.
    pipe = engine_from_args(args, use_denoising_batch=False)
    _save(pipe.img2img(picture, output_type="pil"), args.output)
    return 0


def _txt2img(args: argparse.Namespace) -> int:
    refs, given = controlnets(args), args.control_image or []
    if bool(refs) != bool(given):
        raise UserError("txt2img with --controlnet needs --control-image PICTURE, and --control-image needs "
                        "--controlnet")
    if len(given) not in (1, len(refs)):
        raise UserError(f"--control-image is given {len(given)} times for {len(refs)} ControlNet(s): give one picture "
                        "for all, or one per ControlNet in the order of --controlnet")
    pictures = [_read_picture(source, "control picture") for source in given]
    _check_output_picture(args.output)
    require_style_image(args, "txt2img")
    pipe = engine_from_args(args, use_denoising_batch=False)
    if len(pictures) == 1:
        pipe.set_control_image(pictures[0])
    else:
        for index, picture in enumerate(pictures):
            pipe.set_control_image(picture, index=index)
    _save(pipe.txt2img(output_type="pil"), args.output)
    return 0


def _check_output_picture(target: str) -> None:
    """OUT names a picture file Pillow can write, in a folder that exists: checked before the model loads, so a
    wrong path costs no loading and no stylizing."""
    from PIL import Image

    path = Path(target)
    if path.is_dir():
        raise UserError(f"output picture {path} is a folder; expected a picture file such as {path / 'out.png'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise UserError(f"cannot write {path}: unknown picture format {path.suffix or '(no extension)'}; "
                        "expected a picture file such as .png or .jpg")


def _save(picture, target: str) -> None:
    path = Path(target)
    try:
        picture.save(path)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"cannot write {path}: unknown picture format (use .png or .jpg) ({exc})") from None
    print(f"wrote {path}")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, as every other error is; the usage itself is one --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"streamdiff: error: {message} (see {self.prog} --help)\n")


class _SubcommandParser(_OneLineParser):
    """A subcommand's parser refuses the arguments it does not know itself: argparse would leave them to the
    top-level parser, whose error points to `streamdiff --help`, where the subcommand's options are not listed."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="streamdiff", description="Real-time diffusion for picture streams: camera, video, "
                                                           "pictures.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    p = sub.add_parser("img2img", help="stylize one picture")
    p.add_argument("input", help=f"input picture (PNG, JPEG, ...); `{SAMPLE}` uses a bundled landscape")
    p.add_argument("output", help="output picture path")
    add_engine_options(p, prompt_required=True)
    p.set_defaults(func=_img2img)
    p = sub.add_parser("txt2img", help="one picture from a prompt")
    p.add_argument("output", help="output picture path")
    add_engine_options(p, prompt_required=True)
    p.add_argument("--control-image", action="append", default=None, metavar="PICTURE",
                   help=f"with --controlnet: the picture whose edges, depth (or itself, with --control-preprocess "
                        f"none) steer the drawing; `{SAMPLE}` uses the bundled landscape. Repeat it to give each "
                        "ControlNet its own, in the order of --controlnet")
    p.set_defaults(func=_txt2img)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("streamdiff"):
                raise
            continue
        module.register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"streamdiff {__version__}"


def _quiet_libraries() -> None:
    """Library chatter (e.g. optional-backend notices at import) would bury our one-line messages."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="streamdiff: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("streamdiff: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, UserError) as exc:
        print(f"streamdiff: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the CLI's promise: one line, never a traceback (unless asked for)
        if os.environ.get("STREAMDIFF_TRACEBACK"):
            traceback.print_exc()
        print(f"streamdiff: error: {type(exc).__name__}: {_one_line(exc)} "
              "(set STREAMDIFF_TRACEBACK=1 for details)", file=sys.stderr)
        return 1


def entry() -> NoReturn:
    """The console script: main(), then exit with its code. Where a compilation still runs on a thread of its own
    (the camera or web app quit within its first minute), the process ends at once instead: tearing the
    interpreter down under a thread inside the compiler's native code crashes it (a segmentation fault, or
    std::terminate) after everything was done."""
    code = main()
    compiling = sys.modules.get("streamdiff.backends.background")  # not imported: nothing compiles
    if compiling is not None and compiling.running():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    entry()
