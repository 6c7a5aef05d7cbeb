"""`streamdiff bench` end to end on the tiny model, on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_bad_lists_are_argument_errors(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--steps", "one"])
    with pytest.raises(SystemExit):
        main(["bench", "--compare", "onnx"])
    assert "choose from diffusers, streamdiffusion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--pipelined", "maybe"])
    assert "choose from no, yes" in capsys.readouterr().err
