"""What a warm start could save by loading a precompiled UNet instead of tracing it again.

A warm start (the compile cache full) still spends seconds in Dynamo: it traces the UNet's Python again,
builds its guards and loads the compiled kernels. torch 2.11 can save a whole compiled function
(`aot_compile`, experimental) and load it in a new process with no tracing and no guards at all. This
probe measures both on the UNet alone, as diffusers builds it (random weights of the real architecture,
half precision, channels-last; none of the engine's rewrites), each phase in a fresh process:
- `compile-cold` / `compile-warm`: torch.compile (full graph, static shapes) and its first call, with an
  empty and then the filled compile cache: what the engine does today;
- `aot-save`: the same compile through `aot_compile`, saved to a file (module passed in, not pickled);
- `aot-load`: the file loaded and called. This process draws the weights with another seed, so the
  output can only match eager if the loaded code reads the weights it is given.
Each child reports its seconds, the median ms of 50 calls after, and its largest difference from eager.

    python3 benchmarks/aot_load_probe.py --out DIR --work DIR --models sdxs-512,sd-turbo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ("compile-cold", "compile-warm", "aot-save", "aot-load")


def unet_call(unet: Any, latents: Any, timesteps: Any, embeddings: Any) -> Any:
    """The UNet called as the engine calls it; a module-level function, so a saved compile can name it."""
    return unet(latents, timesteps, encoder_hidden_states=embeddings, return_dict=False)[0]


def child(model: str, phase: str, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    import torch
    from diffusers import UNet2DConditionModel

    from streamdiff.models.architectures import cast, unet_config
    from streamdiff.models.registry import get_spec

    spec = get_spec(model)
    seed = 1 if phase == "aot-load" else 0
    torch.manual_seed(seed)
    with torch.device("cuda"):
        unet = cast(UNet2DConditionModel(**unet_config(model, spec.resolution)), torch.float16)
    unet = unet.to(memory_format=torch.channels_last)
    config = unet.config
    generator = torch.Generator("cuda").manual_seed(7)
    side = spec.resolution // 8
    latents = torch.randn(1, config.in_channels, side, side, device="cuda", dtype=torch.float16, generator=generator)
    latents = latents.to(memory_format=torch.channels_last)
    timesteps = torch.tensor([999], device="cuda")
    embeddings = torch.randn(1, 77, config.cross_attention_dim, device="cuda", dtype=torch.float16,
                             generator=generator)
    args = (unet, latents, timesteps, embeddings)
    with torch.no_grad():
        reference = unet_call(*args)
        torch.cuda.synchronize()
        ready = time.perf_counter()
        call = _compiled(phase, args, work / f"{model}.aot")
        out = call(*args)
        torch.cuda.synchronize()
        first = time.perf_counter()
        times = []
        for _ in range(50):
            t = time.perf_counter()
            call(*args)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    times.sort()
    return {"model": model, "phase": phase, "setup_s": ready - start, "to_first_output_s": first - ready,
            "call_ms": 1000 * times[len(times) // 2], "max_diff_vs_eager": (out - reference).abs().max().item(),
            "file_mb": (work / f"{model}.aot").stat().st_size / 1e6 if phase.startswith("aot") else None}


def _compiled(phase: str, args: tuple[Any, ...], path: Path) -> Any:
    import torch
    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "enable_aot_compile"):  # torch 2.11 offers aot_compile only when asked
        dynamo_config.enable_aot_compile = True

    if phase.startswith("compile"):
        return torch.compile(unet_call, fullgraph=True, dynamic=False)
    if phase == "aot-save":
        # No guards can be saved for a module passed in (they name objects by id); the caller must keep the
        # module's structure, the inputs' shapes and layouts as they were.
        compiled = torch.compile(unet_call, fullgraph=True, dynamic=False,
                                 options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe})
        saved = compiled.aot_compile((args, {}))
        saved.save_compiled_function(str(path))
        return saved
    with open(path, "rb") as file:
        return torch.compiler.load_compiled_function(file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="compile cache and saved functions (emptied)")
    parser.add_argument("--models", default="sdxs-512,sd-turbo")
    parser.add_argument("--phases", default=",".join(PHASES), help="a subset of " + ", ".join(PHASES))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.work)), flush=True)
        return
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    args.work.mkdir(parents=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(args.work / "cache")}
    rows = []
    for model in args.models.split(","):
        for phase in args.phases.split(","):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--child", model, phase],
                                  capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = ({**json.loads(lines[-1]), "process_s": time.perf_counter() - started} if lines and done.returncode == 0
                   else {"model": model, "phase": phase, "rc": done.returncode, "stderr_tail": done.stderr[-2000:]})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "aot-load.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
