"""`streamdiff bench --ip-adapter` on the tiny models, on the CPU: the timed stream is steered by the generated style
picture, diffusers' img2img pipeline is given the same picture on the same modules, and what cannot take an adapter
is refused with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_checks import one_line_error

from streamdiff.bench.baselines import diffusers_call, unavailable
from streamdiff.bench.clips import make_clip, style_picture
from streamdiff.bench.run import BenchOptions, ModelPool
from streamdiff.cli import main
from streamdiff.config import StreamConfig
from streamdiff.ip_adapter import ImagePromptAttention
from streamdiff.stream import StreamPipeline

SIZE = 32
TINY = ["bench", "--model", "tiny", "--random-weights", "--resolution", str(SIZE), "--calls", "2", "--warmup", "1",
        "--device", "cpu"]
CONTROLNET_REFUSAL = ("diffusers' ControlNet pipelines are not timed with an IP-Adapter: the baseline makes its "
                      "control pictures with a stream, which takes the adapter over from their shared UNet")


def _record_adapter_scales(monkeypatch) -> list[float]:
    """The scale every call of the engine's IP-Adapter layers weighs the image tokens by."""
    scales: list[float] = []
    call = ImagePromptAttention.__call__

    def recorded(self, *args, **kwargs):
        scales.append(float(self.scale))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ImagePromptAttention, "__call__", recorded)
    return scales


def test_the_timed_stream_and_diffusers_img2img_are_steered_by_the_same_style_picture(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionImg2ImgPipeline

    baseline_calls: list[tuple[np.ndarray, list[float]]] = []
    pipeline_call = StableDiffusionImg2ImgPipeline.__call__

    def baseline(self, *args, **kwargs):
        adapters = [p for p in self.unet.attn_processors.values() if type(p).__name__ == "IPAdapterAttnProcessor2_0"]
        baseline_calls.append((np.asarray(kwargs["ip_adapter_image"]), sorted({p.scale[0] for p in adapters})))
        return pipeline_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", baseline)
    engine_scales = _record_adapter_scales(monkeypatch)
    out = tmp_path / "results"
    assert main([*TINY, "--ip-adapter", "base", "--compare", "diffusers,streamdiffusion", "--output-dir", str(out)]) == 0
    diffusers, refused, ours = json.loads((out / "bench.json").read_text())["results"]
    assert [r["kind"] for r in (diffusers, refused, ours)] == ["diffusers", "streamdiffusion", "streamdiff"]
    assert "error" not in diffusers and "error" not in ours and ours["fps"] > 0
    assert refused["error"] == "StreamDiffusion 0.1.1 takes no IP-Adapter"
    assert ours["scenario"]["ip_adapter"] == "base" and ours["stages_ms"]["unet"] > 0
    assert ours["style_image_ms"] > 0  # a live picture change, timed once per case
    assert diffusers["name"] == "diffusers: tiny img2img 1step 32px accel-none ip-adapter-base"
    assert "| tiny img2img 1step 32px accel-auto ip-adapter-base |" in capsys.readouterr().out
    # Every warm-up and timed call of the baseline: the generated picture, at the stream's scale (config's default).
    assert len(baseline_calls) == 4
    for picture, scales in baseline_calls:
        np.testing.assert_array_equal(picture, style_picture())
        assert scales == [pytest.approx(StreamConfig().ip_adapter_scale)]
    assert sorted(set(engine_scales)) == pytest.approx([StreamConfig().ip_adapter_scale])


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_the_diffusers_baseline_makes_the_adapted_streams_picture_where_their_schedules_agree(model):
    """One step of the baseline (2 steps at strength 0.5: LCM's timestep 499) against the stream at the same
    timestep, both steered by the style picture: the baseline gets the picture and the scale the stream has."""
    pool = ModelPool(BenchOptions(device="cpu", random_weights=True), torch.device("cpu"), torch.float32)
    entry = pool.get(model, True, pristine=True, ip_adapter="base")
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=(25,), seed=2, device="cpu", ip_adapter_scale=0.9)
    frame = make_clip("moving", 1, SIZE, SIZE)[0]
    prompt = "a watercolor painting of a lighthouse at dusk"
    expected = diffusers_call(entry.components, config, prompt, "img2img", style_picture())(frame)[0]
    expected = np.asarray(expected).astype(np.int16)
    stream = StreamPipeline(entry.components, config, lcm_boundary=entry.spec.lcm_boundary)
    stream.set_style_image(style_picture())
    stream.prepare(prompt)
    got = stream.img2img(frame, output_type="np").astype(np.int16)
    assert got.shape == expected.shape and expected.std() > 5  # a picture, not a flat field
    assert int(np.abs(got - expected).max()) <= 1  # uint8 rounding of equal float pictures
    stream.set_ip_adapter_scale(0.0)
    assert int(np.abs(stream.img2img(frame, output_type="np").astype(np.int16) - expected).max()) > 1  # it steers


def test_diffusers_controlnet_baselines_are_refused_with_an_adapter_and_the_stream_is_timed(tmp_path, monkeypatch):
    engine_scales = _record_adapter_scales(monkeypatch)
    out = tmp_path / "results"
    assert main([*TINY, "--controlnet", "canny", "--ip-adapter", "base", "--compare", "diffusers",
                 "--output-dir", str(out)]) == 0
    refused, ours = json.loads((out / "bench.json").read_text())["results"]
    assert refused["kind"] == "diffusers" and refused["error"] == CONTROLNET_REFUSAL
    assert "error" not in ours and ours["fps"] > 0 and ours["stages_ms"]["control"] > 0
    assert ours["name"] == "tiny img2img 1step 32px accel-auto controlnet-canny ip-adapter-base"
    assert sorted(set(engine_scales)) == pytest.approx([StreamConfig().ip_adapter_scale])


@pytest.mark.parametrize("controlnet, sdxl", [(False, False), (True, False), (True, True)])
def test_which_baselines_take_an_adapter(controlnet, sdxl):
    expected = CONTROLNET_REFUSAL if controlnet else None
    assert unavailable("diffusers", "cuda", controlnet=controlnet, sdxl=sdxl, ip_adapter=True) == expected
    assert unavailable("diffusers", "cuda", controlnet=controlnet, sdxl=sdxl, ip_adapter=False) is None
    refusal = unavailable("streamdiffusion", "cuda", controlnet=controlnet, sdxl=sdxl, ip_adapter=True)
    assert refusal is not None and refusal.startswith("StreamDiffusion 0.1.1")


@pytest.mark.parametrize("options, message", [
    (["--model", "tiny", "--random-weights", "--ablation"], "--ablation studies the stream's own components; time "
                                                            "--ip-adapter without it"),
    (["--model", "sd-turbo"], "no base IP-Adapter is published for sd21 models"),
    (["--model", "sd15-lcm", "--random-weights", "--ip-adapter", "plus"],
     "random weights build the base IP-Adapter only; got --ip-adapter plus"),
    (["--model", "tiny", "--random-weights", "--ip-adapter", "styled"], "unknown IP-Adapter 'styled'"),
])
def test_what_cannot_take_an_adapter_is_one_line_before_any_model_loads(options, message, tmp_path, capsys,
                                                                       monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr("streamdiff.models.loading.load_model", refuse)
    given = [] if "--ip-adapter" in options else ["--ip-adapter", "base"]
    assert main(["bench", "--device", "cpu", *options, *given, "--output-dir", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)
