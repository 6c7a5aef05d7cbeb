"""`streamdiff bench` on the tiny SDXL model, on the CPU: diffusers' own SDXL pipelines as the baseline,
StreamDiffusion 0.1.1 refused."""

from __future__ import annotations

import json
import math

import pytest

from streamdiff.bench.baselines import unavailable
from streamdiff.cli import main

TINY_SDXL = ["bench", "--model", "tiny-sdxl", "--random-weights", "--resolution", "32", "--calls", "2", "--warmup", "1",
             "--device", "cpu"]
SDXL_REFUSAL = "StreamDiffusion 0.1.1 runs SD 1.x / 2.x pipelines only, not SDXL"


def _recording_calls(monkeypatch, pipeline: type, seen: list) -> None:
    """Record each call of a diffusers pipeline class: its control pictures' shapes, its ControlNet scales and the
    type of its ControlNet (all None without one)."""
    call = pipeline.__call__

    def recorded(self, *args, **kwargs):
        scale = kwargs.get("controlnet_conditioning_scale")
        image = kwargs.get("control_image", kwargs.get("image")) if scale is not None else None
        images = [] if image is None else image if isinstance(image, list) else [image]
        shapes = tuple(tuple(i.shape) for i in images) or None
        scales = tuple(scale) if isinstance(scale, list) else scale
        seen.append((shapes, scales, type(getattr(self, "controlnet", None)).__name__))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "__call__", recorded)


def _finite_numbers(result: dict) -> bool:
    stages = result.get("stages_ms", {}).values()
    numbers = [*result["latency"].values(), result["ms_per_frame"], result["fps"], *stages]
    return all(math.isfinite(n) and n >= 0 for n in numbers) and result["fps"] > 0


def test_bench_times_tiny_sdxl_and_diffusers_own_sdxl_pipeline(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    seen: list = []
    _recording_calls(monkeypatch, StableDiffusionXLImg2ImgPipeline, seen)
    out = tmp_path / "results"
    assert main([*TINY_SDXL, "--compare", "diffusers", "--output-dir", str(out)]) == 0
    diffusers, ours = json.loads((out / "bench.json").read_text())["results"]
    assert (diffusers["kind"], ours["kind"]) == ("diffusers", "streamdiff")
    assert "error" not in diffusers and "error" not in ours
    assert _finite_numbers(diffusers) and _finite_numbers(ours) and diffusers["latency"]["calls"] == 3
    assert ours["latency"]["calls"] == 2 and ours["stages_ms"]["unet"] > 0
    assert seen == [(None, None, "NoneType")] * 4  # the SDXL img2img pipeline ran every warm-up and timed call
    table = capsys.readouterr().out
    assert "| diffusers: tiny-sdxl img2img 1step 32px accel-none |" in table
    assert "| tiny-sdxl img2img 1step 32px accel-auto |" in table


def test_streamdiffusion_is_refused_for_sdxl_with_the_reason(tmp_path, capsys):
    out = tmp_path / "results"
    assert main([*TINY_SDXL, "--compare", "streamdiffusion", "--no-stages", "--output-dir", str(out)]) == 0
    refused, ours = json.loads((out / "bench.json").read_text())["results"]
    assert refused["kind"] == "streamdiffusion" and refused["error"] == SDXL_REFUSAL
    assert "error" not in ours and ours["fps"] > 0
    assert f"| streamdiffusion: tiny-sdxl img2img 1step 32px accel-none | failed: {SDXL_REFUSAL} |" in \
        capsys.readouterr().out


@pytest.mark.parametrize("device_type, controlnet", [("cpu", False), ("cuda", False), ("cuda", True)])
def test_sdxl_is_the_first_reason_streamdiffusion_gives(device_type, controlnet):
    assert unavailable("streamdiffusion", device_type, controlnet=controlnet, sdxl=True) == SDXL_REFUSAL
    assert unavailable("diffusers", device_type, controlnet=controlnet, sdxl=True) is None


def test_a_controlnet_steers_tiny_sdxl_and_diffusers_sdxl_controlnet_pipeline(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    seen: list = []
    _recording_calls(monkeypatch, StableDiffusionXLControlNetImg2ImgPipeline, seen)
    out = tmp_path / "results"
    assert main([*TINY_SDXL, "--controlnet", "canny", "--control-scale", "0.8", "--compare", "diffusers",
                 "--output-dir", str(out)]) == 0
    diffusers, ours = json.loads((out / "bench.json").read_text())["results"]
    assert "error" not in diffusers and _finite_numbers(diffusers) and _finite_numbers(ours)
    assert diffusers["name"] == "diffusers: tiny-sdxl img2img 1step 32px accel-none controlnet-canny@0.8"
    assert ours["stages_ms"]["control"] > 0 and ours["stages_ms"]["unet"] > 0
    assert seen and set(seen) == {(((1, 3, 32, 32),), 0.8, "ControlNetModel")}  # the engine's control picture
    assert "| tiny-sdxl img2img 1step 32px accel-auto controlnet-canny@0.8 |" in capsys.readouterr().out


def test_two_controlnets_become_diffusers_multicontrolnet_for_sdxl(tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLControlNetPipeline

    seen: list = []
    _recording_calls(monkeypatch, StableDiffusionXLControlNetPipeline, seen)
    out = tmp_path / "results"
    assert main([*TINY_SDXL, "--task", "txt2img", "--controlnet", "canny,depth", "--control-preprocess", "canny,none",
                 "--control-scale", "0.8,0.4", "--compare", "diffusers", "--output-dir", str(out)]) == 0
    diffusers, ours = json.loads((out / "bench.json").read_text())["results"]
    assert "error" not in diffusers and _finite_numbers(diffusers) and _finite_numbers(ours)
    assert seen and set(seen) == {(((1, 3, 32, 32),) * 2, (0.8, 0.4), "MultiControlNetModel")}


def test_the_sdxl_baseline_gets_its_autoencoder_back_from_a_stream_that_upcast_it(tmp_path):
    """A float16 stream keeps SDXL's full autoencoder in float32; the ControlNet baseline builds one (for its control
    pictures) before it runs, and diffusers' txt2img decodes float16 latents only with a float16 autoencoder."""
    out = tmp_path / "results"
    assert main([*TINY_SDXL, "--task", "txt2img", "--no-taesd", "--dtype", "float16", "--controlnet", "canny",
                 "--compare", "diffusers", "--no-stages", "--output-dir", str(out)]) == 0
    diffusers, ours = json.loads((out / "bench.json").read_text())["results"]
    assert "error" not in diffusers, diffusers["error"]
    assert _finite_numbers(diffusers) and _finite_numbers(ours)
