"""The `streamdiff bench` subcommand: time streams (and what users would otherwise run), write JSON, Markdown, PNG."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from ..backends.accelerate import AccelMode, add_rewrite_options
from ..backends.compile import COMPILE_PRESETS
from ..cli_options import add_control_options, checked, control_settings, controlnets, output_folder
from ..config import CfgType, StreamConfig
from ..errors import UserError
from .baselines import BASELINES
from .clips import CLIPS
from .scenario import TASKS, Scenario, grid

if TYPE_CHECKING:
    import torch

    from .run import BenchOptions


MAX_STEPS = StreamConfig.num_inference_steps  # a case's steps are spread over the default schedule


def _list(kind: Callable[[str], Any], choices: tuple[str, ...] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            bad = [i for i in items if i not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        try:
            return [kind(i) for i in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values such as 1,2; got {text!r}") from None

    return parse


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="time streams: latency, FPS, stages, memory, energy; compare baselines",
                              description="Time every combination of the listed settings (comma-separated lists).")
    p.add_argument("--model", type=_list(str), default=["sd-turbo"], help="registry names or paths (sd-turbo)")
    p.add_argument("--random-weights", action="store_true",
                   help="the real architecture with random weights: no download, meaningless pictures")
    p.add_argument("--no-taesd", action="store_true", help="decode with the model's full VAE instead of TAESD")
    add_rewrite_options(p)
    p.add_argument("--task", type=_list(str, TASKS), default=["img2img"], help="img2img, txt2img")
    p.add_argument("--steps", type=_list(checked(int, lambda steps: 1 <= steps <= MAX_STEPS,
                                                 f"steps from 1 to {MAX_STEPS} (the schedule's length)")),
                   default=[1], help=f"denoising steps, 1 to {MAX_STEPS}, e.g. 1,2,4")
    p.add_argument("--cfg", type=_list(str, tuple(m.value for m in CfgType)), default=["none"],
                   help="residual CFG modes: none, self, initialize, full")
    p.add_argument("--guidance", type=checked(float, lambda scale: scale >= 0, "a number of 0 or more"), default=1.4,
                   help="guidance scale of the cfg modes, 0 or more")
    p.add_argument("--frame-buffer-size", type=_list(int), default=[1], help="frames (or streams) per call")
    p.add_argument("--resolution", type=_list(int), default=[512], help="square render sizes")
    p.add_argument("--sequential", action="store_true", help="run the steps one after another (no stream batch)")
    p.add_argument("--similarity", type=checked(float, lambda threshold: 0 <= threshold <= 1, "a number in [0, 1]"),
                   default=None, help="similarity filter threshold, [0, 1] (off by default)")
    add_control_options(p)
    p.add_argument("--ip-adapter", default=None, metavar="base|plus|FILE",
                   help="steer every case by a generated style picture through this IP-Adapter (a kind, or a weight "
                        "file with its image_encoder/ folder beside it; --random-weights builds a random base one)")
    p.add_argument("--pipelined", type=_list(lambda text: text == "yes", ("no", "yes")), default=[False],
                   metavar="no,yes", help="img2img frames pipelined (each launched before the previous one is "
                                          "waited for): no, yes or no,yes; times are then intervals between frames")
    p.add_argument("--clip", choices=CLIPS, default="moving", help="synthetic input clip")
    p.add_argument("--accel", type=_list(str, tuple(m.value for m in AccelMode)), default=["auto"],
                   help="none, compile, graphs, max, auto (a list times each)")
    p.add_argument("--accel-fallback", action="store_true", help="use the best mode that runs instead of failing")
    p.add_argument("--compile-cache", default=None, metavar="DIR", help="compiled-kernel cache folder")
    p.add_argument("--compile-preset", choices=sorted(COMPILE_PRESETS), default="default")
    p.add_argument("--compare", type=_list(str, BASELINES), default=[],
                   help="also time diffusers' own pipeline and/or StreamDiffusion 0.1.1 on the same weights")
    p.add_argument("--ablation", action="store_true",
                   help="run the component study (stream batch, R-CFG, similarity filter, codec, acceleration)")
    p.add_argument("--calls", type=int, default=100, help="timed calls per case")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per case first")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing each case at least this long (GPU energy needs a window of a second or more)")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    p.add_argument("--prompt", default="a watercolor painting of a lighthouse at dusk")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float16 (GPU default), bfloat16, float32 (CPU default)")
    p.add_argument("--output-dir", default="bench-results", help="where bench.json/.md/.png go")
    p.set_defaults(func=run_command)


def _options(args: argparse.Namespace) -> Any:
    from .run import BenchOptions

    if args.calls < 1 or args.warmup < 0:
        raise UserError(f"--calls must be at least 1 and --warmup at least 0; got {args.calls} and {args.warmup}")
    return BenchOptions(calls=args.calls, warmup=args.warmup, min_seconds=args.min_seconds, device=args.device,
                        dtype=args.dtype, random_weights=args.random_weights, prompt=args.prompt,
                        compare=tuple(args.compare),
                        stages=not args.no_stages, fallback=args.accel_fallback, cache_dir=args.compile_cache,
                        compile_preset=args.compile_preset)


def scenarios_from_args(args: argparse.Namespace) -> list[Scenario]:
    base = Scenario(guidance=args.guidance, taesd=not args.no_taesd, codec_fusion=not args.no_codec_fusion,
                    upsample_fold=not args.no_upsample_fold,
                    batched=not args.sequential, similarity=args.similarity, clip=args.clip,
                    ip_adapter=args.ip_adapter, **_control_fields(args))
    scenarios = []
    for model in args.model:
        for task in args.task:
            pipelined = args.pipelined if task == "img2img" else [False]  # txt2img has no input to pipeline
            scenarios += grid(base.with_changes(model=model, task=task), steps=args.steps, cfg=args.cfg,
                              frame_buffer_size=args.frame_buffer_size, resolution=args.resolution,
                              accel=args.accel, pipelined=pipelined)
    return scenarios


def _control_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The Scenario fields of the ControlNet options; one of them without --controlnet is a UserError."""
    settings = control_settings(args)  # the engine commands' check and message
    if args.depth_estimator is not None:
        settings["depth_estimator"] = args.depth_estimator
    refs = controlnets(args)
    return {"controlnet": refs[0] if len(refs) == 1 else refs, **settings} if refs else settings


def _check_controlnet(args: argparse.Namespace) -> None:
    """Before any model loads: refuse what cannot take --controlnet, and fetch the ControlNet where it is known."""
    if _control_fields(args) and args.ablation:
        raise UserError("--ablation studies the stream's own components; time --controlnet without it")
    from ..models.controlnets import check_depth_estimator_use, prefetch_controlnets
    from ..models.depth_estimators import DEFAULT_DEPTH_ESTIMATOR

    refs = controlnets(args)
    estimator = args.depth_estimator or DEFAULT_DEPTH_ESTIMATOR
    check_depth_estimator_use(refs, args.control_preprocess, estimator)
    for model in args.model if refs else ():
        prefetch_controlnets(refs, model, args.control_preprocess, random_weights=args.random_weights,
                             depth_estimator=estimator)


def _check_ip_adapter(args: argparse.Namespace) -> None:
    """Before any model loads: refuse what cannot take --ip-adapter, and fetch the adapter of each registry model
    (an adapter for a model given by path is found when it loads)."""
    if args.ip_adapter is None:
        return
    if args.ablation:
        raise UserError("--ablation studies the stream's own components; time --ip-adapter without it")
    from ..models.ip_adapters import locate_ip_adapter
    from ..models.registry import REGISTRY

    for model in args.model:
        spec = REGISTRY.get(model)
        if spec is not None:
            locate_ip_adapter(args.ip_adapter, spec.family, random_weights=args.random_weights)


def _fetch_models(scenarios: list[Scenario], options: BenchOptions, device: torch.device) -> None:
    """Before any timing: every model the cases load is there (downloaded where it must be), or one error says
    what is missing."""
    from ..devices import resolve_dtype
    from ..models.loading import prefetch_model

    dtype = resolve_dtype(options.dtype, device)
    for model, taesd in dict.fromkeys((s.model, s.taesd) for s in scenarios):
        prefetch_model(model, dtype=dtype, taesd=taesd, random_weights=options.random_weights)


def run_command(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from . import report
    from .ablation import ablation_cases, ablation_table, write_ablation_chart
    from .run import run_all

    device = resolve_device(args.device)  # a missing GPU is reported before any model loads
    options = _options(args)
    _check_controlnet(args)
    _check_ip_adapter(args)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    cases = []
    if args.ablation:
        cases = [c for m in args.model for r in args.resolution for c in ablation_cases(m, r, args.accel[0])]
        scenarios = [c.scenario for c in cases]
    else:
        scenarios = scenarios_from_args(args)
    out = output_folder(args.output_dir, "--output-dir")  # before the timing whose results go there
    _fetch_models(scenarios, options, device)
    results = run_all(scenarios, options, progress=say)
    if results and all("error" in r for r in results):
        raise UserError(f"nothing could be measured: {results[0]['error']}")
    name = "ablation" if args.ablation else "bench"
    document = {"command": "streamdiff " + " ".join(sys.argv[1:]) if sys.argv else "", "started": started,
                "environment": report.environment(device), "options": options.__dict__, "results": results}
    table = report.markdown_table(results) + "\n" + report.stages_table(results)
    if args.ablation:
        ablation_md, rows = ablation_table(cases, results)
        document["ablation"] = rows
        table = ablation_md + "\n" + table
        write_ablation_chart(out / f"{name}.png", rows)
    else:
        where = document["environment"].get("gpu", str(device))
        report.write_chart(out / f"{name}.png", results, f"streamdiff bench on {where}")
    report.write_json(out / f"{name}.json", document)
    (out / f"{name}.md").write_text(table)
    print(table)
    failed = sum("error" in r for r in results if r.get("kind") == "streamdiff")
    if failed and failed == sum(r.get("kind") == "streamdiff" for r in results):
        raise UserError(f"every case failed; the first: {next(r['error'] for r in results if 'error' in r)}")
    return 0
