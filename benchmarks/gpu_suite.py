"""The GPU benchmark suite: everything the CUDA fast path claims, measured in one command per part.

    python benchmarks/gpu_suite.py A --out DIR --budget 570   # start times, prewarm, accelerated-vs-eager equality
    python benchmarks/gpu_suite.py T --out DIR --budget 570   # targets and baselines (reuses A's compile cache)
    python benchmarks/gpu_suite.py B --out DIR --budget 570   # SDXS-512 and the component study (ablation)

Each part fits a 10-minute call; T needs A's compile cache (the same machine, straight after A) to fit.
Each phase runs in its own process with a time limit, so one failure or overrun costs only that phase;
results are written after every phase (DIR/results-<part>.json, DIR/suite.log, DIR/<phase>.json).
Compilation is CPU work: the prewarm phases compile several shapes at once in separate processes, so the
timed phases find them in the on-disk cache. Models use random weights of their real architectures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("STREAMDIFF_SUITE_CACHE", "/tmp/streamdiff-suite-inductor"))
RES = 512


def _log(out: Path, text: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {text}"
    print(line, flush=True)
    with open(out / "suite.log", "a") as f:
        f.write(line + "\n")


class Driver:
    def __init__(self, part: str, out: Path, budget: float):
        self.part, self.out, self.deadline = part, out, time.time() + budget
        self.results: dict[str, Any] = {"part": part, "phases": {}}

    def remaining(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        (self.out / f"results-{self.part}.json").write_text(json.dumps(self.results, indent=1, default=str))

    def run(self, name: str, argv: list[str], limit: float, minimum: float = 20.0) -> dict[str, Any]:
        """Run one phase as a process, within min(limit, what is left); record its outcome."""
        allowed = min(limit, self.remaining() - 15.0)
        if allowed < minimum:
            record = {"skipped": f"{self.remaining():.0f} s left"}
            _log(self.out, f"phase {name}: skipped ({record['skipped']})")
            self.results["phases"][name] = record
            self.save()
            return record
        _log(self.out, f"phase {name}: start (limit {allowed:.0f} s): {' '.join(argv)}")
        start = time.time()
        with open(self.out / "suite.log", "a") as log:
            try:
                rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=allowed).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        record = {"rc": rc, "seconds": round(time.time() - start, 1)}
        _log(self.out, f"phase {name}: rc={rc} after {record['seconds']} s")
        self.results["phases"][name] = record
        self.save()
        return record

    def parallel(self, name: str, jobs: dict[str, list[str]], limit: float) -> None:
        """Run several processes at once (compilation is CPU work; 16 cores share it)."""
        allowed = min(limit, self.remaining() - 15.0)
        if allowed < 30:
            self.results["phases"][name] = {"skipped": f"{self.remaining():.0f} s left"}
            return
        _log(self.out, f"phase {name}: {len(jobs)} processes at once (limit {allowed:.0f} s)")
        start = time.time()
        procs = {}
        for job, argv in jobs.items():
            log = open(self.out / f"prewarm-{job}.log", "w")
            procs[job] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log)
        outcome = {}
        for job, (proc, log) in procs.items():
            try:
                outcome[job] = proc.wait(timeout=max(1.0, allowed - (time.time() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
                outcome[job] = "timeout"
            log.close()
            with open(self.out / "suite.log", "a") as f:
                f.write((self.out / f"prewarm-{job}.log").read_text()[-3000:])
            (self.out / f"prewarm-{job}.log").unlink()
        self.results["phases"][name] = {"rc": outcome, "seconds": round(time.time() - start, 1)}
        _log(self.out, f"phase {name}: {outcome} after {time.time() - start:.0f} s")
        self.save()


def _py(*args: str) -> list[str]:
    return [sys.executable, "-u", *args]


def _me(*args: str) -> list[str]:
    return _py(str(Path(__file__).resolve()), *args)


def _bench_cli(out: Path, tag: str, *extra: str) -> list[str]:
    return _py("-m", "streamdiff.cli", "bench", "--model", "sd-turbo", "--random-weights", "--calls", "50",
               "--warmup", "5", "--no-stages", "--compile-cache", str(CACHE), "--output-dir", str(out / tag), *extra)


def _start_phase(d: Driver, tag: str) -> None:
    """Cold (empty cache) or warm start of `streamdiff bench` with accel max: process wall time and build time."""
    record = d.run(tag, _bench_cli(Path("/tmp/suite-runs"), tag, "--accel", "max"), limit=330)
    bench = Path("/tmp/suite-runs") / tag / "bench.json"
    if bench.exists():
        result = json.loads(bench.read_text())["results"][0]
        record.update(build_seconds=result.get("accel", {}).get("build_seconds"),
                      median_ms=result.get("latency", {}).get("median_ms"))
    d.save()


def part_a(d: Driver) -> None:
    shutil.rmtree(CACHE, ignore_errors=True)
    d.run("environment", _me("environment", "--json", str(d.out / "environment.json")), limit=60)
    d.run("gpu-tests", _py("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/backends"), limit=150)
    _start_phase(d, "cold-start")
    d.parallel("prewarm", {
        "turbo-2step": _me("prewarm", "--model", "sd-turbo", "--steps", "2"),
        "turbo-fbs8": _me("prewarm", "--model", "sd-turbo", "--fbs", "8"),
        "turbo-fbs16": _me("prewarm", "--model", "sd-turbo", "--fbs", "16"),
        "sdxs": _me("prewarm", "--model", "sdxs-512"),
    }, limit=240)
    _start_phase(d, "warm-start")
    d.run("equality", _me("equality", "--json", str(d.out / "equality.json")), limit=200)


def part_t(d: Driver) -> None:
    d.run("targets", _me("targets", "--json", str(d.out / "targets.json")), limit=560, minimum=60)


def part_b(d: Driver) -> None:
    jobs = {f"turbo-b{b}": _me("prewarm", "--model", "sd-turbo", "--steps", str(s), "--cfg", c)
            for b, (s, c) in {1: (1, "none"), 2: (2, "none"), 3: (2, "initialize"), 4: (2, "full")}.items()}
    jobs |= {"turbo-kl": _me("prewarm", "--model", "sd-turbo", "--full-vae"),
             "sdxs": _me("prewarm", "--model", "sdxs-512")}
    d.parallel("prewarm", jobs, limit=200)
    d.run("sdxs", _me("sdxs", "--json", str(d.out / "sdxs.json")), limit=100, minimum=60)
    d.run("ablation", _me("ablation", "--json", str(d.out / "ablation.json")), limit=500, minimum=60)


PARTS = {"A": part_a, "T": part_t, "B": part_b}


# ----- phases, each run in its own process ---------------------------------------------------------

def _options(**changes: Any):
    from streamdiff.bench.run import BenchOptions

    base = dict(calls=100, warmup=10, min_seconds=2.0, random_weights=True, cache_dir=str(CACHE), device="cuda")
    return BenchOptions(**{**base, **changes})


def phase_environment(args: argparse.Namespace) -> None:
    import torch

    from streamdiff.bench.report import environment

    env = environment(torch.device("cuda"))
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    Path(args.json).write_text(json.dumps(env, indent=1))
    print(env)


def phase_prewarm(args: argparse.Namespace) -> None:
    """Compile and capture one case so that the cache holds it (no timing)."""
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.bench.run import ModelPool, prepared_stream
    from streamdiff.bench.scenario import Scenario

    scenario = Scenario(model=args.model, steps=args.steps, cfg=args.cfg, frame_buffer_size=args.fbs,
                        taesd=not args.full_vae, accel="max", resolution=RES)
    options = _options(compile_preset=args.preset)
    pool = ModelPool(options, torch.device("cuda"), torch.float16)
    entry = pool.get(scenario.model, scenario.taesd, pristine=False)
    pipe = prepared_stream(scenario, entry, torch.device("cuda"), options, "a lighthouse")
    start = time.time()
    _, report = accelerate(pipe, "max", cache_dir=str(CACHE), compile_preset=args.preset, progress=print)
    print(f"prewarm {scenario.name()}: {time.time() - start:.1f} s", report)


def _frames(count: int):
    from streamdiff.bench.clips import make_clip

    return make_clip("moving", count, RES, RES, seed=1)


def _run_frames(stream, frames) -> list:
    return [stream.img2img(f, output_type="np").astype("int16") for f in frames]


def _compare(a: list, b: list, skip: int) -> dict[str, float]:
    import numpy as np

    d = np.stack([np.abs(x - y) for x, y in zip(a[skip:], b[skip:])]).astype(np.float64)
    mse = float((d**2).mean())
    return {"max_levels": float(d.max()), "mean_levels": float(d.mean()),
            "psnr_db": float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")}


def phase_equality(args: argparse.Namespace) -> None:
    """Accelerated fp16 output vs the eager fp16 engine and vs eager fp32 (fp16 rounding sets the tolerance)."""
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.bench.run import ModelPool, prepared_stream
    from streamdiff.bench.scenario import Scenario

    device = torch.device("cuda")
    frames = _frames(8)
    steps_list = (1, 2)
    outputs: dict[tuple[str, int], list] = {}
    for dtype in (torch.float32, torch.float16):
        options = _options(dtype="float32" if dtype == torch.float32 else "float16")
        pool = ModelPool(options, device, dtype)
        entry = pool.get("sd-turbo", True, pristine=True)
        modes = ("none",) if dtype == torch.float32 else ("none", "graphs", "max")
        for mode in modes:
            for steps in steps_list:
                scenario = Scenario(steps=steps, resolution=RES)
                pipe = prepared_stream(scenario, entry, device, options, "a lighthouse at dusk")
                stream, _ = accelerate(pipe, mode, cache_dir=str(CACHE), progress=print)
                key = ("eager-fp32" if dtype == torch.float32 else f"{mode}-fp16", steps)
                outputs[key] = _run_frames(stream, frames)
        pool.release()
    report = {}
    for steps in steps_list:
        ref32, eager16 = outputs[("eager-fp32", steps)], outputs[("none-fp16", steps)]
        floor = _compare(eager16, ref32, skip=2)
        report[f"{steps}-step eager fp16 vs fp32"] = floor
        for mode in ("graphs", "max"):
            versus32 = _compare(outputs[(f"{mode}-fp16", steps)], ref32, skip=2)
            versus16 = _compare(outputs[(f"{mode}-fp16", steps)], eager16, skip=2)
            ok = versus32["mean_levels"] <= 1.5 * floor["mean_levels"] + 0.5
            report[f"{steps}-step {mode} fp16 vs fp32"] = versus32
            report[f"{steps}-step {mode} fp16 vs eager fp16"] = versus16 | {"within_fp16_tolerance": ok}
    Path(args.json).write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        print(k, v)


def phase_targets(args: argparse.Namespace) -> None:
    import torch

    from streamdiff.bench.report import environment, markdown_table, stages_table, write_chart
    from streamdiff.bench.run import run_all
    from streamdiff.bench.scenario import Scenario

    base = Scenario(model="sd-turbo", resolution=RES, compare=False)
    scenarios = [base.with_changes(accel="none", compare=True)]
    scenarios += [base.with_changes(accel=m) for m in ("graphs", "compile", "max")]
    scenarios += [base.with_changes(accel="max", steps=2, compare=True),
                  base.with_changes(accel="max", frame_buffer_size=8),
                  base.with_changes(accel="max", frame_buffer_size=16),
                  base.with_changes(accel="max", task="txt2img", compare=True),
                  base.with_changes(model="sdxs-512", accel="max", compare=True)]
    results = run_all(scenarios, _options(compare=("diffusers", "streamdiffusion")), progress=print)
    document = {"environment": environment(torch.device("cuda")), "results": results}
    Path(args.json).write_text(json.dumps(document, indent=1, default=str))
    write_chart(Path(args.json).with_suffix(".png"), results, "streamdiff on " + document["environment"].get("gpu", ""))
    print(markdown_table(results))
    print(stages_table(results))


def _saver(path: Path, **fixed: Any):
    def save(results: list) -> None:
        path.write_text(json.dumps({**fixed, "results": results}, indent=1, default=str))

    return save


def phase_sdxs(args: argparse.Namespace) -> None:
    """SDXS-512 (reconstructed architecture) with its baselines."""
    from streamdiff.bench.report import markdown_table, stages_table
    from streamdiff.bench.run import run_all
    from streamdiff.bench.scenario import Scenario

    results = run_all([Scenario(model="sdxs-512", accel="max", resolution=RES)],
                      _options(compare=("diffusers", "streamdiffusion")), progress=print, sink=_saver(Path(args.json)))
    print(markdown_table(results))
    print(stages_table(results))


def phase_ablation(args: argparse.Namespace) -> None:
    import torch

    from streamdiff.bench.ablation import ablation_cases, ablation_table, write_ablation_chart
    from streamdiff.bench.report import environment, markdown_table
    from streamdiff.bench.run import run_all

    cases = ablation_cases("sd-turbo", RES, "max")
    codec = [c for c in cases if c.group == "codec"]
    scenarios = [c.scenario.with_changes(compare=c in codec) for c in cases]
    results = run_all(scenarios, _options(compare=("diffusers",), stages=False, calls=60, min_seconds=1.0),
                      progress=print, sink=_saver(Path(args.json), partial=True))
    table, rows = ablation_table(cases, results)
    document = {"environment": environment(torch.device("cuda")), "results": results, "ablation": rows}
    Path(args.json).write_text(json.dumps(document, indent=1, default=str))
    write_ablation_chart(Path(args.json).with_suffix(".png"), rows)
    print(table)
    print(markdown_table(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["A", "T", "B", "environment", "prewarm", "equality", "targets", "sdxs",
                                         "ablation"])
    parser.add_argument("--out", default=os.environ.get("OUT", "suite-out"))
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole part")
    parser.add_argument("--json", default=None)
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--cfg", default="none")
    parser.add_argument("--fbs", type=int, default=1)
    parser.add_argument("--full-vae", action="store_true")
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if args.what in PARTS:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        driver = Driver(args.what, out, args.budget)
        PARTS[args.what](driver)
        _log(out, f"part {args.what} done, {driver.remaining():.0f} s of the budget left")
        return
    {"environment": phase_environment, "prewarm": phase_prewarm, "equality": phase_equality,
     "targets": phase_targets, "sdxs": phase_sdxs, "ablation": phase_ablation}[args.what](args)


if __name__ == "__main__":
    main()
