"""Engine options shared by the commands that build a stream (img2img, txt2img, camera, video, bench)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .config import CONTROL_PREPROCESSES, FITS, CfgType
from .errors import UserError

T = TypeVar("T", int, float)


def checked(kind: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse type: the option's value as `kind` where `accept` holds for it (and it is finite), else an
    error that says what was expected; argparse names the option, before anything loads."""
    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


def output_folder(path: str, option: str) -> Path:
    """The folder `option` names, made now where missing: a file in its place, or a place where no folder can be
    made or written, fails before any work whose results would go there."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {path} is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot make a folder there ({exc.strerror or exc}); expected a "
                        "folder, or a path where one can be made") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{option} {path}: the folder is not writable")
    return folder


def _t_index(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,45; got {text!r}") from None


def _thresholds(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH such as 100,200; got {text!r}") from None
    return low, high


def _scales(text: str) -> float | tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, or one per ControlNet such as 0.8,0.4; got {text!r}") \
            from None
    return values[0] if len(values) == 1 else values


def _preprocesses(text: str) -> str | tuple[str, ...]:
    values = tuple(part for part in text.replace(" ", "").split(","))
    wrong = [v for v in values if v not in CONTROL_PREPROCESSES]
    if wrong:
        raise argparse.ArgumentTypeError(f"expected {', '.join(CONTROL_PREPROCESSES)}, or one of them per ControlNet "
                                         f"such as canny,none; got {text!r}")
    return values[0] if len(values) == 1 else values


def _controlnets(text: str) -> list[str]:
    """One --controlnet value: a ControlNet, or several separated by commas (a path that exists stays whole)."""
    if Path(text).expanduser().exists():
        return [text]
    refs = [part.strip() for part in text.split(",")]
    if not all(refs):
        raise argparse.ArgumentTypeError(f"expected KIND|FOLDER|HUB_ID, or several separated by commas such as "
                                         f"canny,depth; got {text!r}")
    return refs


def add_engine_options(parser: argparse.ArgumentParser, *, prompt_required: bool = False,
                       acceleration: bool = True) -> None:
    g = parser.add_argument_group("model and stream")
    g.add_argument("--prompt", required=prompt_required, default=None if prompt_required else "",
                   help="what the pictures should look like")
    g.add_argument("--negative-prompt", default="", help="what to steer away from (used by --cfg modes)")
    g.add_argument("--model", default=None,
                   help="registry name (see `streamdiff models`), local diffusers folder, .safetensors file or "
                        "hub id; default sdxs-512. `tiny` runs offline with meaningless pictures")
    g.add_argument("--no-taesd", action="store_true", help="keep the model's own VAE instead of TAESD")
    g.add_argument("--lora", action="append", default=[], metavar="SOURCE[:SCALE]",
                   help="a style LoRA fused into the weights: .safetensors file, folder or hub repo, with an optional "
                        "scale (default 1), e.g. ink.safetensors:0.8; repeat for several")
    g.add_argument("--model-config", default=None,
                   help="for a .safetensors/.ckpt --model only: a diffusers folder or hub id of its base model")
    g.add_argument("--strength", type=float, default=None, help="how much of the input to redraw, (0, 1]")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (with --strength)")
    g.add_argument("--t-index", type=_t_index, default=None, metavar="I,J,...",
                   help="explicit schedule indices (instead of --strength/--steps)")
    g.add_argument("--num-inference-steps", type=int, default=None, help="length of the LCM schedule (50)")
    g.add_argument("--cfg", choices=[m.value for m in CfgType], default="none", help="residual CFG mode")
    g.add_argument("--guidance", type=float, default=1.2, help="guidance scale (applies above 1)")
    g.add_argument("--delta", type=float, default=1.0, help="residual noise scale of the self/initialize modes")
    g.add_argument("--seed", type=int, default=2)
    g.add_argument("--width", type=int, default=None, help="render width (multiple of 8)")
    g.add_argument("--height", type=int, default=None, help="render height (multiple of 8)")
    g.add_argument("--render-size", type=int, default=None, help="square render size, e.g. 320, 384, 512")
    g.add_argument("--fit", choices=FITS, default="crop", help="how pictures of another size are adapted")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: by device)")
    add_control_options(parser)
    add_style_options(parser)
    if acceleration:
        from .backends.accelerate import add_accel_options

        add_accel_options(parser)


def add_control_options(parser: argparse.ArgumentParser) -> None:
    """The ControlNet options (--controlnet, --control-scale, --control-preprocess, --canny-thresholds), for the
    engine commands and bench; control_settings checks them."""
    group = parser.add_argument_group("ControlNet")
    group.add_argument("--controlnet", type=_controlnets, action="append", default=None, metavar="KIND|FOLDER|HUB_ID",
                       help="steer the pictures with a ControlNet: canny (the input's edges) or depth (its estimated "
                            "depth), the published one for the model's family (random weights of its architecture "
                            "for random-weight models); or a diffusers ControlNet folder or hub id. Several steer "
                            "together: canny,depth (or repeat the option). Not for sdxs-512 or tiny-sd (no middle "
                            "stage): use sd-turbo or sd15-lcm")
    group.add_argument("--control-scale", type=_scales, default=None, metavar="SCALE[,SCALE...]",
                       help="how strongly the ControlNet steers, [0, 5] (default 1: as trained); one for all, or "
                            "one per ControlNet such as 0.8,0.4")
    group.add_argument("--control-preprocess", type=_preprocesses, default=None, metavar="HOW[,HOW...]",
                       help="how a frame becomes the control picture: canny edges, depth (estimated by Depth "
                            "Anything V2 Small), or none (the frame itself, e.g. a depth camera's feed); default: "
                            "the kind's own, none for a folder or hub id; one for all, or one per ControlNet")
    group.add_argument("--canny-thresholds", type=_thresholds, default=None, metavar="LOW,HIGH",
                       help="Canny's hysteresis thresholds on 0-255 gradients (default 100,200; lower: more edges)")
    group.add_argument("--depth-estimator", default=None, metavar="small|base|large|FOLDER|HUB_ID",
                       help="the Depth Anything V2 size that estimates depth for a depth ControlNet: small (default, "
                            "25 M parameters, Apache-2.0), base (98 M) or large (335 M), finer but slower per frame "
                            "and licensed for non-commercial use only (CC-BY-NC-4.0); or a folder or hub id")


def add_style_options(parser: argparse.ArgumentParser) -> None:
    """The IP-Adapter options (--style-image, --ip-adapter, --ip-adapter-scale); style_settings checks them."""
    group = parser.add_argument_group("style picture (IP-Adapter)")
    group.add_argument("--style-image", default=None, metavar="PICTURE",
                       help="a picture whose look steers every frame, through an IP-Adapter (the published base one "
                            "of the model's family unless --ip-adapter says otherwise): sd15-lcm, tiny-sd, sdxl-turbo "
                            "and sdxl-lcm; SD 2.x models such as sd-turbo and sdxs-512 have none")
    group.add_argument("--ip-adapter", default=None, metavar="base|plus|FILE",
                       help="the IP-Adapter: base, plus (finer detail of the picture, 16 tokens instead of 4) or a "
                            "weight file with its image_encoder/ folder beside it; without --style-image the camera "
                            "and the web page wait for a picture (the page, OSC), the other commands need one")
    group.add_argument("--ip-adapter-scale", type=float, default=None, metavar="SCALE",
                       help="how strongly the style picture steers, [0, 5] (default 0.6; 1: as trained, where the "
                            "picture outweighs the prompt)")


def ip_adapter(args: argparse.Namespace) -> str | None:
    """The IP-Adapter the options ask for: --ip-adapter, or the base one for --style-image; None for none."""
    given = getattr(args, "ip_adapter", None)
    return given or ("base" if getattr(args, "style_image", None) else None)


def require_style_image(args: argparse.Namespace, command: str) -> None:
    """A command that takes no picture later (no page, no OSC) needs its style picture on the command line: an
    IP-Adapter without one would load and steer nothing."""
    if getattr(args, "ip_adapter", None) and not getattr(args, "style_image", None):
        raise UserError(f"--ip-adapter needs --style-image PICTURE for {command}: nothing else gives it a picture to "
                        "steer with")


def check_model_config(args: argparse.Namespace) -> None:
    """--model-config describes a single checkpoint file; any other model brings its own configuration, so the
    option would be ignored there."""
    from .models.loading import SINGLE_FILE_SUFFIXES
    from .models.registry import DEFAULT_MODEL

    if getattr(args, "model_config", None) is None:
        return
    if Path(args.model or DEFAULT_MODEL).suffix.lower() not in SINGLE_FILE_SUFFIXES:
        model = f"--model {args.model}" if args.model else f"the default model {DEFAULT_MODEL}"
        raise UserError(f"--model-config is for a --model given as a .safetensors or .ckpt file; {model} brings its "
                        "own configuration: leave --model-config out")


def style_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The IP-Adapter setting given, checked before anything loads."""
    scale = getattr(args, "ip_adapter_scale", None)
    if scale is None:
        return {}
    if ip_adapter(args) is None:
        raise UserError("--ip-adapter-scale needs --style-image or --ip-adapter")
    return {"ip_adapter_scale": scale}


CONTROL_SETTINGS = {"control_scale": "--control-scale", "control_preprocess": "--control-preprocess",
                    "canny_thresholds": "--canny-thresholds"}


def controlnets(args: argparse.Namespace) -> tuple[str, ...]:
    """The ControlNets --controlnet names, in order (several options and comma lists joined); () for none."""
    return tuple(ref for refs in getattr(args, "controlnet", None) or () for ref in refs)


def control_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ControlNet settings given, checked against the number of ControlNets before anything loads."""
    given = {name: getattr(args, name) for name in CONTROL_SETTINGS if getattr(args, name, None) is not None}
    refs = controlnets(args)
    if given and not refs:
        raise UserError(f"{CONTROL_SETTINGS[next(iter(given))]} needs --controlnet")
    for name in ("control_scale", "control_preprocess"):
        value = given.get(name)
        if isinstance(value, tuple) and len(value) != len(refs):
            raise UserError(f"{CONTROL_SETTINGS[name]} gives {len(value)} values for {len(refs)} ControlNet(s): "
                            "give one for all, or one per ControlNet in the order of --controlnet")
    return given


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """StreamConfig settings named on the command line (unset ones keep the model's defaults)."""
    settings: dict[str, Any] = {
        "cfg_type": args.cfg, "guidance_scale": args.guidance, "delta": args.delta, "seed": args.seed,
        "fit": args.fit, "device": args.device, "dtype": args.dtype,
    }
    if args.device == "auto" and getattr(args, "accel", None) == "coreml":
        # Core ML runs the UNet and the codec; the text encoder and the small per-frame tensor work stay on the
        # CPU, where the weights are those `streamdiff convert` fingerprinted (float32 on the CPU).
        settings["device"] = "cpu"
    if args.t_index is not None:
        settings["t_index_list"] = args.t_index
    for name in ("strength", "steps", "num_inference_steps"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for name in ("width", "height"):
        value = args.render_size if getattr(args, name) is None else getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings | control_settings(args) | style_settings(args)


def progress(message: str) -> None:
    """A start-up step worth a line on stderr (model loading, compiling, converting)."""
    print(f"streamdiff: {message}", file=sys.stderr, flush=True)


def stream_from_args(args: argparse.Namespace, **overrides: Any):
    """Load the model named by --model (with its --lora styles), build the stream and encode the prompts."""
    from .images import read_picture
    from .models.depth_estimators import DEFAULT_DEPTH_ESTIMATOR
    from .models.registry import DEFAULT_MODEL
    from .stream import StreamPipeline

    check_model_config(args)
    settings = {**engine_settings(args), **overrides}
    style = getattr(args, "style_image", None)
    picture = read_picture(style, "style picture") if style else None  # a missing one is named before loading
    taesd = False if args.no_taesd else None
    pipe = StreamPipeline.from_model(args.model or DEFAULT_MODEL, taesd=taesd, model_config=args.model_config,
                                     loras=args.lora, controlnet=controlnets(args),
                                     depth_estimator=args.depth_estimator or DEFAULT_DEPTH_ESTIMATOR,
                                     ip_adapter=ip_adapter(args), **settings)
    if picture is not None:
        pipe.set_style_image(picture)
    pipe.prepare(prompt=args.prompt or "", negative_prompt=args.negative_prompt)
    return pipe


def engine_from_args(args: argparse.Namespace, **overrides: Any):
    """stream_from_args, then accelerated as --accel says."""
    from .backends.accelerate import accelerate_from_args

    return accelerate_from_args(stream_from_args(args, **overrides), args, progress=progress)
