"""Choosing an acceleration mode: what runs where, what an unsupported choice says, when it falls back."""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pytest
import torch
from conftest import random_frames

from streamdiff.backends import codec_fusion
from streamdiff.backends import compile as compiling
from streamdiff.backends.accelerate import (
    AccelerationUnavailable,
    AccelMode,
    accelerate,
    add_accel_options,
    resolve_mode,
)

CPU = torch.device("cpu")


def test_auto_on_a_machine_without_cuda_is_the_rewritten_eager_engine():
    assert resolve_mode("auto", CPU) is AccelMode.EAGER
    # Apple's MPS (not measured with the rewrites) and other devices keep the plain engine
    assert resolve_mode("auto", torch.device("mps")) is AccelMode.NONE


@pytest.mark.parametrize("mode", ["graphs", "max"])
def test_graphs_without_cuda_say_why_and_do_not_fall_back_unasked(mode):
    with pytest.raises(AccelerationUnavailable, match="CUDA graphs need a CUDA GPU; this stream runs on cpu"):
        resolve_mode(mode, CPU)


def test_fallback_when_asked_steps_down_to_a_mode_that_runs(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="streamdiff.backends"):
        assert resolve_mode("graphs", CPU, fallback=True) is AccelMode.EAGER
    assert "falling back to eager" in caplog.text
    monkeypatch.setattr(compiling.shutil, "which", lambda name: "/usr/bin/" + name)
    assert resolve_mode("max", CPU, fallback=True) is AccelMode.COMPILE


def test_compile_without_a_cpu_compiler_is_unavailable(monkeypatch):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(AccelerationUnavailable, match="needs a C\\+\\+ compiler"):
        resolve_mode("compile", CPU)
    assert resolve_mode("compile", CPU, fallback=True) is AccelMode.EAGER


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="accel must be one of none, eager, compile, graphs, max, coreml, auto; got 'fast'"):
        AccelMode.parse("fast")
    with pytest.raises(ValueError, match="compile preset must be one of"):
        compiling.compile_in_place({}, "fastest")


def test_none_passes_frames_to_the_engine_unchanged(make_stream):
    eager, pipe = make_stream(t_index_list=(30,)), make_stream(t_index_list=(30,))
    stream, report = accelerate(pipe, "none")
    assert (report.mode, report.build_seconds, stream.captured) == ("none", 0.0, [])
    for frame in random_frames(3, (64, 64, 3)):
        np.testing.assert_array_equal(stream.img2img(frame), eager.img2img(frame))


@pytest.mark.parametrize(("steps", "sdxl"), [((30,), False), ((20, 35), False), ((20, 35), True)],
                         ids=["1-step", "2-step", "sdxl-2-step"])
def test_eager_computes_the_plain_engines_frames_with_folded_upsampling_and_a_fused_codec(make_stream, steps, sdxl):
    """eager: the UNet's upsampling folded and TAESD fused with PyTorch's kernels on the CPU, nothing compiled
    or captured, and every frame (the stream batch's too) what the plain engine computes, to float32 rounding."""
    from streamdiff.backends import upsample_fold

    plain, pipe = make_stream(t_index_list=steps, sdxl=sdxl), make_stream(t_index_list=steps, sdxl=sdxl)
    stream, report = accelerate(pipe, "eager")
    unet, vae = pipe.components.unet, pipe.components.vae
    assert (report.mode, report.fused_codec, report.folded_upsamplers) == ("eager", True, 1)
    assert upsample_fold.folded_count(unet) == 1 and codec_fusion.is_fused(vae.encoder)
    assert not any(compiling.is_compiled(m) for m in compiling.compiled_parts(unet, vae).values())
    assert (report.build_seconds, stream.captured) == (0.0, [])  # the engine's own calls: nothing to build
    differences = []
    for frame in random_frames(6, (64, 64, 3)):
        got, expected = stream.img2img(frame, output_type="pt"), plain.img2img(frame, output_type="pt")
        assert expected.abs().max() > 0
        differences.append(float((got - expected).abs().max()))
    assert max(differences) < 1e-4, differences


def test_a_second_stream_accelerated_over_the_same_modules_keeps_what_the_first_reads(make_stream):
    """A captured step reads the folded kernels and the fused codec's weights by address: accelerating another
    stream over the same UNet and codec must neither replace nor free them, and the first draws as before."""
    from streamdiff.stream import StreamPipeline

    first = make_stream(t_index_list=(30,))
    plain = StreamPipeline(first.components, first.config)
    plain.prepare("a red fox", negative_prompt="blurry")
    frames = random_frames(2, (64, 64, 3))
    expected = [plain.img2img(frame, output_type="pt") for frame in frames]
    stream, _ = accelerate(first, "eager")
    unet, vae = first.components.unet, first.components.vae
    up = next(m for m in unet.modules() if "folded_weight" in m._buffers)
    kept = (up.folded_weight.data_ptr(), vae.encoder.__dict__["forward"], vae.decoder.__dict__["forward"])
    second = StreamPipeline(first.components, first.config)
    second.prepare("a blue bird")
    accelerate(second, "eager")
    assert (up.folded_weight.data_ptr(), vae.encoder.__dict__["forward"], vae.decoder.__dict__["forward"]) == kept
    stream.reset()
    for frame, before in zip(frames, expected):
        torch.testing.assert_close(stream.img2img(frame, output_type="pt"), before, rtol=0, atol=1e-4)


def test_the_cache_folder_is_ours_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compiling.use_cache_dir() == tmp_path / "streamdiff" / "inductor"
    assert os.environ[compiling.CACHE_ENV] == str(tmp_path / "streamdiff" / "inductor")
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    assert compiling.use_cache_dir() == tmp_path / "mine"
    assert compiling.use_cache_dir(tmp_path / "given") == tmp_path / "given"


def test_torchs_own_default_in_the_variable_is_not_taken_for_the_users_choice(tmp_path, monkeypatch):
    """Importing diffusers (through torch._dynamo) writes torch's temporary default into TORCHINDUCTOR_CACHE_DIR;
    the kernels must still go to the folder that outlives a reboot."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache_dir()  # what the import does
    assert compiling.use_cache_dir() == tmp_path / "streamdiff" / "inductor"
    assert cache_dir() == str(tmp_path / "streamdiff" / "inductor")


def test_compiling_in_place_is_reversible_and_reuses_the_compiled_forward():
    module = torch.nn.Linear(3, 3)
    parts = {"m": module}
    compiling.compile_in_place(parts)
    first = module.forward
    assert compiling.is_compiled(module)
    compiling.uncompile(parts)
    assert not compiling.is_compiled(module)
    compiling.compile_in_place(parts)
    assert module.forward is first


def test_command_line_options_default_to_auto():
    import argparse

    parser = argparse.ArgumentParser()
    add_accel_options(parser)
    args = parser.parse_args([])
    assert (args.accel, args.accel_fallback, args.compile_preset) == ("auto", False, "default")
    with pytest.raises(SystemExit):
        parser.parse_args(["--accel", "turbo"])


def _broken_compiler(parts, preset="default"):
    """Stands in for a compiler that fails at the first call, as Inductor does on a broken toolchain."""

    def fail(*args, **kwargs):
        raise RuntimeError("backend compiler failed\nC++ compile error: ...")

    for module in parts.values():
        module.__dict__["forward"] = fail
        module.__dict__["_streamdiff_compiled"] = (preset, fail)  # as compile_in_place marks its forward


def test_a_failed_compile_is_reported_or_dropped_when_a_fallback_is_allowed(make_stream, monkeypatch, tmp_path):
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(compiling, "compile_in_place", _broken_compiler)
    monkeypatch.setattr(compiling, "compile_unsupported", lambda device: None)
    with pytest.raises(AccelerationUnavailable, match="--accel compile failed to build: RuntimeError: backend "
                                                      "compiler failed"):
        accelerate(make_stream(t_index_list=(30,)), "compile")
    plain = make_stream(t_index_list=(30,))
    pipe = make_stream(t_index_list=(30,))
    stream, report = accelerate(pipe, "compile", fallback=True)
    assert report.mode == "eager"  # what resolve_mode falls back to on a CPU, as well
    assert codec_fusion.is_fused(pipe.components.vae) and not compiling.is_compiled(pipe.components.unet)
    for frame in random_frames(3, (64, 64, 3)):  # the plain engine's frames, up to float32 rounding
        difference = stream.img2img(frame).astype(int) - plain.img2img(frame).astype(int)
        assert np.abs(difference).max() <= 1


def test_an_unprepared_stream_builds_at_its_first_frames(_tiny_cache, monkeypatch, tmp_path):
    import copy

    from streamdiff import StreamPipeline

    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(compiling, "compile_unsupported", lambda device: None)
    monkeypatch.setattr(compiling, "compile_in_place", lambda parts, preset="default": None)
    pipe = StreamPipeline.from_diffusers(copy.deepcopy(_tiny_cache["taesd"]), device="cpu", width=64, height=64)
    stream, report = accelerate(pipe, "compile")
    assert (report.mode, report.build_seconds) == ("compile", 0.0)
    with pytest.raises(RuntimeError, match="call prepare"):
        stream.img2img(random_frames(1, (64, 64, 3))[0])
    stream.prepare("a fox")
    for frame in random_frames(3, (64, 64, 3)):
        stream.img2img(frame)
    assert stream.captured == ["img2img of 1 x 64x64 uint8 frames"]


def test_codec_fusion_is_applied_and_reported_unless_turned_off(make_stream, monkeypatch, tmp_path):
    """Where fusion can run (a GPU in half precision; faked here with stand-in kernels), accelerate fuses
    TAESD and leaves it out of compilation; fuse_codec=False (--no-codec-fusion) compiles it instead."""
    from streamdiff.backends import codec_fusion

    reference = codec_fusion.FusedOps(lambda x, conv: torch.relu(conv(x)),
                                      lambda x, conv, z: torch.relu(conv(x) + z))
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(compiling, "compile_unsupported", lambda device: None)
    monkeypatch.setattr(codec_fusion, "unsupported", lambda vae, device, dtype: None)
    real_fuse = codec_fusion.fuse
    monkeypatch.setattr(codec_fusion, "fuse", lambda vae, ops=reference: real_fuse(vae, ops))
    pipe = make_stream(t_index_list=(30,))
    vae = pipe.components.vae
    _, report = accelerate(pipe, "compile", build=False)
    assert report.fused_codec and codec_fusion.is_fused(vae)
    assert compiling.is_compiled(pipe.components.unet) and not compiling.is_compiled(vae.decoder)
    _, report = accelerate(pipe, "compile", build=False, fuse_codec=False)
    assert not report.fused_codec and not codec_fusion.is_fused(vae)
    assert compiling.is_compiled(vae.decoder)
    _, report = accelerate(pipe, "compile", build=False)
    assert report.fused_codec and not compiling.is_compiled(vae.decoder)


def test_no_codec_fusion_option():
    parser = argparse.ArgumentParser()
    add_accel_options(parser)
    assert not parser.parse_args([]).no_codec_fusion
    assert parser.parse_args(["--no-codec-fusion"]).no_codec_fusion


def test_upsampling_is_folded_in_accelerated_modes_unless_turned_off(make_stream, monkeypatch, tmp_path):
    from streamdiff.backends import upsample_fold

    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(compiling, "compile_unsupported", lambda device: None)
    pipe = make_stream(t_index_list=(30,))
    _, report = accelerate(pipe, "none", build=False)
    assert report.folded_upsamplers == 0
    _, report = accelerate(pipe, "compile", build=False)
    assert report.folded_upsamplers == 1 == upsample_fold.folded_count(pipe.components.unet)
    _, report = accelerate(pipe, "compile", build=False, fold_upsampling=False)
    assert report.folded_upsamplers == 0 == upsample_fold.folded_count(pipe.components.unet)
    parser = argparse.ArgumentParser()
    add_accel_options(parser)
    assert not parser.parse_args([]).no_upsample_fold and parser.parse_args(["--no-upsample-fold"]).no_upsample_fold
