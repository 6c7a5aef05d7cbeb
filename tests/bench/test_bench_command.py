"""`streamdiff bench` end to end on the tiny model, on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from cli_checks import one_line_error

from streamdiff.cli import main

TINY = ["bench", "--model", "tiny", "--random-weights", "--resolution", "32", "--calls", "2", "--warmup", "1"]


def test_bench_writes_json_markdown_and_times_the_diffusers_pipeline(tmp_path, capsys):
    out = tmp_path / "results"
    assert main([*TINY, "--steps", "1,2", "--compare", "diffusers", "--device", "cpu", "--output-dir", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    kinds = [(r["kind"], r["scenario"]["steps"]) for r in document["results"]]
    assert kinds == [("diffusers", 1), ("diffusers", 2), ("streamdiff", 1), ("streamdiff", 2)]
    ours = document["results"][2]
    assert ours["latency"]["calls"] == 2 and ours["fps"] > 0 and set(ours["stages_ms"]) >= {"unet", "encode"}
    assert document["environment"]["torch"] == torch.__version__
    assert "| tiny img2img 1step 32px accel-auto |" in (out / "bench.md").read_text()
    assert "diffusers: tiny img2img 2step" in capsys.readouterr().out


def test_pipelined_cases_time_intervals_between_frames_and_txt2img_is_never_pipelined(tmp_path):
    out = tmp_path / "results"
    assert main([*TINY, "--task", "img2img,txt2img", "--pipelined", "no,yes", "--device", "cpu",
                 "--output-dir", str(out)]) == 0
    results = json.loads((out / "bench.json").read_text())["results"]
    cases = [(r["scenario"]["task"], r["scenario"]["pipelined"]) for r in results]
    assert cases == [("img2img", False), ("img2img", True), ("txt2img", False)]
    pipelined = results[1]
    assert pipelined["name"].endswith("pipelined") and pipelined["latency"]["calls"] == 2
    assert "stages_ms" not in pipelined and "stages_ms" in results[0]  # the stages are the unpipelined case's


def test_asking_for_cuda_without_one_is_one_clear_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([*TINY, "--device", "cuda", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("streamdiff: error:") and "no usable CUDA GPU" in err[-1]


def test_an_unsupported_accel_mode_fails_with_the_reason_unless_a_fallback_is_allowed(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([*TINY, "--accel", "graphs", "--device", "cpu", "--no-stages", "--output-dir", str(tmp_path)]) == 2
    assert "CUDA graphs need a CUDA GPU" in capsys.readouterr().err
    assert main([*TINY, "--accel", "graphs", "--accel-fallback", "--device", "cpu", "--no-stages",
                 "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    assert result["accel"]["mode"] == "eager" and result["accel"]["requested"] == "graphs"


def test_a_controlnet_steers_the_timed_stream_and_diffusers_own_controlnet_pipeline(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from streamdiff.control import Control

    engine_scales, baseline_calls = [], []
    residuals, pipeline_call = Control.residuals, StableDiffusionControlNetImg2ImgPipeline.__call__

    def engine_residuals(self, *args, **kwargs):
        engine_scales.append(tuple(self.scales.tolist()))
        return residuals(self, *args, **kwargs)

    def baseline(self, *args, **kwargs):
        baseline_calls.append((tuple(kwargs["control_image"].shape), kwargs["controlnet_conditioning_scale"]))
        return pipeline_call(self, *args, **kwargs)

    monkeypatch.setattr(Control, "residuals", engine_residuals)
    monkeypatch.setattr(StableDiffusionControlNetImg2ImgPipeline, "__call__", baseline)
    out = tmp_path / "results"
    assert main([*TINY, "--controlnet", "canny", "--control-scale", "0.8", "--compare", "diffusers,streamdiffusion",
                 "--device", "cpu", "--no-stages", "--output-dir", str(out)]) == 0
    results = json.loads((out / "bench.json").read_text())["results"]
    assert [r["kind"] for r in results] == ["diffusers", "streamdiffusion", "streamdiff"]
    assert results[1]["error"] == "StreamDiffusion 0.1.1 takes no ControlNet"
    ours = results[2]
    assert (ours["scenario"]["controlnet"], ours["scenario"]["control_scale"]) == ("canny", 0.8)
    assert ours["name"] == "tiny img2img 1step 32px accel-auto controlnet-canny@0.8" and ours["fps"] > 0
    assert results[0]["name"] == "diffusers: tiny img2img 1step 32px accel-none controlnet-canny@0.8"
    assert "| tiny img2img 1step 32px accel-auto controlnet-canny@0.8 |" in capsys.readouterr().out
    assert engine_scales and all(scales == pytest.approx((0.8,)) for scales in engine_scales)
    assert baseline_calls and set(baseline_calls) == {((1, 3, 32, 32), 0.8)}  # the engine's control picture


def test_two_controlnets_steer_the_timed_stream_and_diffusers_multicontrolnet(tmp_path, monkeypatch):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from streamdiff.control import Control

    engine_calls, baseline_calls = [], []
    residuals, pipeline_call = Control.residuals, StableDiffusionControlNetImg2ImgPipeline.__call__

    def engine_residuals(self, *args, **kwargs):
        engine_calls.append((self.preprocesses, tuple(self.scales.tolist())))
        return residuals(self, *args, **kwargs)

    def baseline(self, *args, **kwargs):
        images = kwargs["control_image"]
        baseline_calls.append((tuple(tuple(i.shape) for i in images), tuple(kwargs["controlnet_conditioning_scale"]),
                               type(self.controlnet).__name__))
        return pipeline_call(self, *args, **kwargs)

    monkeypatch.setattr(Control, "residuals", engine_residuals)
    monkeypatch.setattr(StableDiffusionControlNetImg2ImgPipeline, "__call__", baseline)
    out = tmp_path / "results"
    assert main([*TINY, "--controlnet", "canny,depth", "--control-scale", "0.8,0.4", "--control-preprocess",
                 "canny,none", "--compare", "diffusers", "--device", "cpu", "--output-dir", str(out)]) == 0
    diffusers, ours = json.loads((out / "bench.json").read_text())["results"]
    assert ours["scenario"]["controlnet"] == ["canny", "depth"] and ours["fps"] > 0 and "error" not in diffusers
    assert ours["name"] == "tiny img2img 1step 32px accel-auto controlnet-canny+depth@0.8,0.4 preprocess-canny,none"
    assert ours["stages_ms"]["control"] > 0
    assert engine_calls and all(kinds == ("canny", "none") and scales == pytest.approx((0.8, 0.4))
                                for kinds, scales in engine_calls)
    assert baseline_calls and set(baseline_calls) == {(((1, 3, 32, 32),) * 2, (0.8, 0.4), "MultiControlNetModel")}


def test_control_preprocess_and_canny_thresholds_reach_the_timed_stream(tmp_path, capsys, monkeypatch):
    from streamdiff.control import Control
    from streamdiff.models import controlnets

    seen, prefetched = set(), []
    update, prefetch = Control.update, controlnets.prefetch_controlnet

    def recording_update(self, pixels):
        seen.add((self.preprocesses, self.thresholds, self.estimator is None))
        return update(self, pixels)

    def recording_prefetch(ref, model, preprocess=None, **kwargs):
        prefetched.append((ref, model, preprocess))
        return prefetch(ref, model, preprocess, **kwargs)

    monkeypatch.setattr(Control, "update", recording_update)
    monkeypatch.setattr(controlnets, "prefetch_controlnet", recording_prefetch)
    out = tmp_path / "results"
    assert main([*TINY, "--controlnet", "canny", "--canny-thresholds", "20,60", "--device", "cpu",
                 "--output-dir", str(out)]) == 0
    ours = json.loads((out / "bench.json").read_text())["results"][0]
    assert seen == {(("canny",), (20.0, 60.0), True)} and prefetched == [("canny", "tiny", None)]
    assert ours["scenario"]["canny_thresholds"] == [20.0, 60.0] and ours["name"].endswith(" canny-20-60")
    assert ours["stages_ms"]["control"] > 0  # the edges are a stage of their own, not part of "other"
    assert "| upload | preprocess | control | encode |" in capsys.readouterr().out
    seen.clear()
    # A depth ControlNet on the frame itself: no depth estimator is loaded.
    assert main([*TINY, "--controlnet", "depth", "--control-preprocess", "none", "--device", "cpu", "--no-stages",
                 "--output-dir", str(out)]) == 0
    ours = json.loads((out / "bench.json").read_text())["results"][0]
    assert seen == {(("none",), (100.0, 200.0), True)} and prefetched[-1] == ("depth", "tiny", "none")
    assert ours["scenario"]["control_preprocess"] == "none" and ours["name"].endswith(" preprocess-none")


@pytest.mark.parametrize("options, message", [
    (["--model", "sdxs-512", "--controlnet", "canny"], "model 'sdxs-512' has no middle stage for a ControlNet to feed"),
    (["--model", "tiny", "--control-scale", "0.5"], "--control-scale needs --controlnet"),
    (["--model", "tiny", "--control-preprocess", "none"], "--control-preprocess needs --controlnet"),
    (["--model", "tiny", "--canny-thresholds", "20,60"], "--canny-thresholds needs --controlnet"),
    (["--model", "tiny", "--controlnet", "canny", "--canny-thresholds", "200,100"],
     "canny_thresholds must be two numbers with 0 <= low <= high"),
    (["--model", "tiny", "--controlnet", "canny", "--ablation"], "--ablation studies the stream's own components"),
    (["--model", "tiny", "--controlnet", "canny", "--control-preprocess", "none", "--ablation"],
     "--ablation studies the stream's own components"),
])
def test_what_cannot_take_a_controlnet_is_one_line_before_any_model_loads(options, message, tmp_path, capsys,
                                                                         monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr("streamdiff.models.loading.load_model", refuse)
    assert main(["bench", "--random-weights", "--device", "cpu", *options, "--output-dir", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)


def test_bad_lists_are_argument_errors(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--steps", "one"])
    with pytest.raises(SystemExit):
        main(["bench", "--compare", "onnx"])
    assert "choose from diffusers, streamdiffusion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--pipelined", "maybe"])
    assert "choose from no, yes" in capsys.readouterr().err


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the bench gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was noticed")

    monkeypatch.setattr("streamdiff.models.loading.load_model", refuse)


@pytest.mark.parametrize("options, message", [
    (["--steps", "1,99"], "argument --steps: expected steps from 1 to 50 (the schedule's length); got '99'"),
    (["--steps", "0"], "argument --steps: expected steps from 1 to 50"),
    (["--similarity", "5"], "argument --similarity: expected a number in [0, 1]; got '5'"),
    (["--guidance", "-1"], "argument --guidance: expected a number of 0 or more; got '-1'"),
])
def test_values_that_would_fail_every_case_are_one_line_before_timing(options, message, tmp_path, capsys, no_model):
    with pytest.raises(SystemExit) as exited:
        main([*TINY, "--device", "cpu", *options, "--output-dir", str(tmp_path / "out")])
    assert exited.value.code == 2 and not (tmp_path / "out").exists()
    assert message in one_line_error(capsys)


def test_a_model_that_cannot_be_had_is_one_whole_line_before_timing(tmp_path, capsys, monkeypatch, no_model):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    assert main(["bench", "--model", "sd-turbo", "--device", "cpu", "--output-dir", str(out)]) == 2
    err = one_line_error(capsys)
    assert "model 'sd-turbo' cannot be loaded: stabilityai/sd-turbo (the pipeline)" in err
    assert err.endswith("(older huggingface_hub: `huggingface-cli download <repo>`).\n")  # whole, not cut short
    assert not (out / "bench.md").exists()


@pytest.mark.parametrize("target, message", [
    ("taken", "--output-dir {target} is a file; expected a folder"),
    ("taken/results", "--output-dir {target}: cannot make a folder there"),
])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_timing(target, message, tmp_path, capsys, no_model):
    (tmp_path / "taken").write_text("a file in the way")
    target = str(tmp_path / target)
    assert main([*TINY, "--device", "cpu", "--output-dir", target]) == 2
    assert message.format(target=target) in one_line_error(capsys)
    assert (tmp_path / "taken").read_text() == "a file in the way"


def test_a_run_where_nothing_could_be_measured_ends_with_one_line_and_no_table(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "results"
    assert main([*TINY, "--accel", "graphs", "--device", "cpu", "--no-stages", "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (out / "bench.md").exists()
    assert captured.err.splitlines()[-1].startswith("streamdiff: error: nothing could be measured: ")
    assert "CUDA graphs need a CUDA GPU" in captured.err.splitlines()[-1]
    # One case failing among others keeps the others' numbers, and its error in the table.
    assert main([*TINY, "--accel", "none,graphs", "--device", "cpu", "--no-stages", "--output-dir", str(out)]) == 0
    results = json.loads((out / "bench.json").read_text())["results"]
    assert [("error" in r, r["scenario"]["accel"]) for r in results] == [(False, "none"), (True, "graphs")]
    assert "failed: " in capsys.readouterr().out
