"""The Core ML backend on the tiny model: real conversions with coremltools, the parts' declared interface, the
store on disk, and the runtime's calls checked against that interface (Core ML itself runs only on macOS)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
from conftest import CONTROLLED, convert_stream, copy_of_converted, random_frames

from streamdiff import StreamPipeline
from streamdiff.backends.accelerate import (
    AccelerationUnavailable,
    AccelMode,
    resolve_mode,
)
from streamdiff.backends.coreml import CoreMLDenoiser, use_coreml
from streamdiff.backends.coreml.convert import (
    UNET,
    CodecCall,
    ControlledUnetCall,
    ModelStore,
    UnetCall,
    fingerprint,
    require_coremltools,
    trace,
)
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.errors import UserError

SIZE = 64
_FLOAT16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16


@pytest.fixture
def tiny(make_stream):
    """A fresh two-step 64x64 stream over a private copy of the tiny components, prepared."""
    return lambda **settings: make_stream(**{"strength": 0.6, "steps": 2, **settings})


def _declared(path: Path) -> tuple[dict[str, tuple[list[int], int]], dict[str, tuple[list[int], int]]]:
    """A stored part's inputs and outputs as its Core ML spec declares them: name -> (shape, data type)."""
    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "mlProgram"

    def of(features) -> dict[str, tuple[list[int], int]]:
        return {f.name: (list(f.type.multiArrayType.shape), f.type.multiArrayType.dataType) for f in features}

    return of(spec.description.input), of(spec.description.output)


class SpecPredictor:
    """Stands in for Core ML on a machine without it: it takes exactly the inputs the stored part's spec
    declares (names, shapes, half precision) and computes the part's output with the module it was made from."""

    calls = 0

    def __init__(self, path: Path, modules: dict[str, torch.nn.Module]):
        self.inputs, outputs = _declared(path)
        (self.output, (self.output_shape, _)), = outputs.items()
        self.module = modules[json.loads((path / "streamdiff.json").read_text())["part"]]

    def predict(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert set(data) == set(self.inputs)
        for name, (shape, kind) in self.inputs.items():
            assert list(data[name].shape) == shape and kind == _FLOAT16 and data[name].dtype == np.float16
        SpecPredictor.calls += 1
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(data[name]).float() for name in self.inputs))
        assert list(out.shape) == self.output_shape
        return {self.output: out.numpy().astype(np.float16)}


def test_stored_parts_declare_the_stream_shapes_in_half_precision(tiny, converted):
    pipe, (root, store) = tiny(), converted
    parts = {json.loads((p / "streamdiff.json").read_text())["part"]: p for p in store.asked}
    assert set(parts) == {"unet", "encoder", "decoder"}
    assert all(part.seconds is not None and part.path.is_dir() for part in store.asked.values())
    slots, latent = 2, SIZE // 8  # two steps, no CFG: one UNet sample per step
    width = pipe.components.text_encoder.config.hidden_size
    expected = {
        "unet": ({"sample": [slots, 4, latent, latent], "timestep": [slots],
                  "encoder_hidden_states": [slots, 77, width]}, {"noise_pred": [slots, 4, latent, latent]}),
        "encoder": ({"pixels": [1, 3, SIZE, SIZE]}, {"latents": [1, 4, latent, latent]}),
        "decoder": ({"latents": [1, 4, latent, latent]}, {"pixels": [1, 3, SIZE, SIZE]}),
    }
    for part, (inputs, outputs) in expected.items():
        declared_in, declared_out = _declared(parts[part])
        assert declared_in == {name: (shape, _FLOAT16) for name, shape in inputs.items()}
        assert declared_out == {name: (shape, _FLOAT16) for name, shape in outputs.items()}
    manifest = json.loads((parts["unet"] / "streamdiff.json").read_text())
    assert manifest["inputs"]["sample"] == [slots, 4, latent, latent] and manifest["coremltools"] == ct.__version__
    assert not list(root.rglob(".*"))  # no half-written parts left behind


def test_a_second_stream_of_the_same_weights_converts_nothing_and_other_weights_get_their_own(tiny, converted,
                                                                                             tmp_path):
    root = copy_of_converted(converted, tmp_path)
    again = convert_stream(tiny(), root, txt2img=False)
    assert {p.relative_to(root) for p in again.asked} == {p.relative_to(converted[0]) for p in converted[1].asked}
    assert all(part.seconds is None for part in again.asked.values())

    changed = tiny()
    with torch.no_grad():
        changed.components.unet.conv_out.weight.mul_(1.01)  # e.g. a LoRA fused into the weights
    other = convert_stream(changed, root, txt2img=False)
    new = {p.parent.name.split("-")[0] for p, part in other.asked.items() if part.seconds is not None}
    assert new == {"unet"}  # the codec's weights did not change: its parts are found


def test_fingerprint_follows_the_weights_not_the_copy(tiny):
    unet = tiny().components.unet
    twin = copy.deepcopy(unet)
    assert fingerprint(twin) == fingerprint(unet)
    with torch.no_grad():
        twin.conv_in.bias.add_(1e-3)
    assert fingerprint(twin) != fingerprint(unet)


def test_the_traced_graph_coremltools_converts_computes_what_the_stream_computes(tiny):
    pipe = tiny()
    latents = torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([999.0, 499.0])
    text = torch.randn(2, 77, pipe.components.text_encoder.config.hidden_size)
    expected = TorchDenoiser(pipe.components.unet)(latents, timesteps, text)
    traced = trace(UnetCall(pipe.components.unet), (latents, timesteps, text))
    other = (torch.randn_like(latents), torch.tensor([259.0, 19.0]), torch.randn_like(text))
    torch.testing.assert_close(traced(latents, timesteps, text), expected)
    torch.testing.assert_close(traced(*other), TorchDenoiser(pipe.components.unet)(*other))
    pixels = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    encode = CodecCall(pipe.components.vae, "encode")
    torch.testing.assert_close(trace(encode, (pixels,))(pixels), pipe.codec.encode(pixels))


def test_an_sdxl_unet_converts_with_the_engines_packed_embeddings_as_its_input(tiny, tmp_path):
    """SDXL's pooled embedding rides in the embeddings (78 tokens) and the size numbers are constants of the
    converted shape: the traced graph takes the engine's tensors as they are and computes what PyTorch does."""
    pipe = tiny(sdxl=True)
    store = convert_stream(pipe, tmp_path, txt2img=False)
    unet_part = next(p for p in store.asked if json.loads((p / "streamdiff.json").read_text())["part"] == "unet")
    width = pipe.components.unet.config.cross_attention_dim
    assert _declared(unet_part)[0]["encoder_hidden_states"] == ([2, 78, width], _FLOAT16)
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 499.0])
    text = pipe.prompts.encode("a red fox").expand(2, -1, -1)
    traced = trace(UnetCall(pipe.components.unet), (latents, timesteps, text))
    other = (torch.randn_like(latents), torch.tensor([259.0, 19.0]), pipe.prompts.encode("ink").expand(2, -1, -1))
    for inputs in ((latents, timesteps, text), other):
        torch.testing.assert_close(traced(*inputs), TorchDenoiser(pipe.components.unet)(*inputs))


def test_a_stream_on_the_converted_parts_matches_pytorch_through_their_declared_interface(tiny, converted):
    reference, pipe = tiny(), tiny()
    root = converted[0]  # converted beforehand, as `streamdiff convert` would
    modules = {"unet": UnetCall(pipe.components.unet), "encoder": CodecCall(pipe.components.vae, "encode"),
               "decoder": CodecCall(pipe.components.vae, "decode")}
    opened: list[Path] = []

    def load(path: Path) -> SpecPredictor:
        opened.append(path)
        return SpecPredictor(path, modules)

    store = use_coreml(pipe, root, load=load)
    SpecPredictor.calls = 0
    frames = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), np.uint8) for i in range(4)]
    for frame in frames:
        got, want = pipe.img2img(frame, output_type="np"), reference.img2img(frame, output_type="np")
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2  # half-precision inputs and outputs
    text_got, text_want = pipe.txt2img(output_type="np"), reference.txt2img(output_type="np")
    assert np.abs(text_got.astype(int) - text_want.astype(int)).max() <= 2
    assert SpecPredictor.calls == 3 * 4 + 2  # every frame went through the parts: encode, UNet, decode
    assert len(opened) == len(set(opened)) == 3  # each part opened once, at its first call
    assert all(part.seconds is None for part in store.asked.values())  # converted beforehand, found


def test_a_frame_calls_the_parts_at_the_shapes_the_conversion_ran(tiny, converted, tmp_path):
    """A shape not converted yet is converted at its first call: test_coreml_command.py's second conversion."""
    root, pipe = copy_of_converted(converted, tmp_path), tiny()
    store = convert_stream(pipe, root, txt2img=False)
    before = set(store.asked)
    assert all(part.seconds is None for part in store.asked.values())
    pipe.img2img(np.zeros((SIZE, SIZE, 3), np.uint8), output_type="np")
    assert set(store.asked) == before


def test_the_traced_controlled_unet_takes_the_control_pictures_and_scales_as_inputs(make_controlled_stream):
    pipe = make_controlled_stream(**{**CONTROLLED, "count": 2, "control_scale": (0.9, 0.6)})  # their sum, each scaled
    control, unet = pipe.control, pipe.components.unet
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 499.0])
    text = pipe.prompts.encode("a red fox").expand(2, -1, -1)

    def inputs(seed: int, scales: list[float]) -> tuple[torch.Tensor, ...]:
        pictures = torch.rand(1, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))  # one kind, F=1
        return latents, timesteps, text, pictures, torch.tensor(scales)

    first, second = inputs(0, [0.9, 0.6]), inputs(1, [0.3, 1.4])
    traced = trace(ControlledUnetCall(unet, control), first)
    plain = TorchDenoiser(unet, cache_conditioning=False, control=control)
    for given in (first, second):  # the stream's own pictures and scales, set to the inputs'
        control.images["canny"].copy_(given[3][0])
        control.scales.copy_(given[4])
        torch.testing.assert_close(traced(*given), plain(*given[:3]))
    assert (traced(*first) - traced(*second)).abs().max() > 0.05


def test_a_controlnet_stream_runs_its_unet_and_controlnets_as_one_part_fed_the_live_pictures_and_scales(
        make_controlled_stream, converted, converted_controlled, tmp_path):
    root, store = converted_controlled
    parts = {json.loads((p / "streamdiff.json").read_text())["part"]: (p, part) for p, part in store.asked.items()}
    assert set(parts) == {"controlled-unet", "encoder", "decoder"}
    assert parts["controlled-unet"][1].seconds is not None and parts["encoder"][1].seconds is None  # codec: found
    declared = _declared(parts["controlled-unet"][0])[0]
    assert declared["control_pictures"] == ([1, 1, 3, SIZE, SIZE], _FLOAT16)  # one kind of picture, one frame
    assert declared["control_scales"] == ([1], _FLOAT16)

    reference, unchanged, pipe = (make_controlled_stream(**CONTROLLED) for _ in range(3))
    modules = {"controlled-unet": ControlledUnetCall(pipe.components.unet, pipe.control),
               "encoder": CodecCall(pipe.components.vae, "encode"), "decoder": CodecCall(pipe.components.vae, "decode")}
    again = use_coreml(pipe, root, load=lambda path: SpecPredictor(path, modules))
    SpecPredictor.calls = 0
    for k, frame in enumerate(random_frames(4, (SIZE, SIZE, 3))):
        if k == 2:  # a live scale change reaches the part's input
            for stream in (pipe, reference):
                stream.set_control_scale(0.1)
        got, want = pipe.img2img(frame, output_type="np"), reference.img2img(frame, output_type="np")
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2  # half-precision inputs and outputs
        before = unchanged.img2img(frame, output_type="np")
    assert np.abs(before.astype(int) - want.astype(int)).max() > 8  # the change moved the pictures
    assert SpecPredictor.calls == 3 * 4 and all(part.seconds is None for part in again.asked.values())


def test_the_controlled_part_is_named_by_the_controlnets_weights_too(make_controlled_stream, tmp_path):
    def digest(pipe: StreamPipeline) -> str:
        return CoreMLDenoiser(pipe.components.unet, ModelStore(tmp_path), None, pipe.control).part.digest

    pipe = make_controlled_stream(**CONTROLLED)
    first = digest(pipe)
    assert digest(make_controlled_stream(**CONTROLLED)) == first  # the same weights, another copy
    with torch.no_grad():
        pipe.control.controlnets[0].controlnet_cond_embedding.conv_in.weight.mul_(1.01)  # the UNet's untouched
    assert digest(pipe) != first


def test_a_failed_conversion_leaves_nothing_half_written(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states):
            raise RuntimeError("cannot trace this")

    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="cannot trace"):
        store.ensure(UNET, Broken(), "0" * 16, [torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 77, 8)])
    assert not [p for p in tmp_path.rglob("*") if p.suffix == ".mlpackage"]


def test_coremltools_with_a_numpy_it_cannot_convert_with_is_named(monkeypatch):
    monkeypatch.setattr(np, "__version__", "2.4.1")
    with pytest.raises(UserError, match=r"numpy<2.4"):
        require_coremltools()


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_mode_off_macos_says_why_and_falls_back_only_when_asked():
    with pytest.raises(AccelerationUnavailable, match="macOS.*streamdiff convert"):
        resolve_mode("coreml", torch.device("cpu"))
    assert resolve_mode("coreml", torch.device("cpu"), fallback=True) is AccelMode.EAGER
    assert resolve_mode("auto", torch.device("cpu")) is AccelMode.EAGER  # auto never picks an unmeasured mode

