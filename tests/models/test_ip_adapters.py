"""Loading IP-Adapters: a weight file in the published layout, the hub's h94/IP-Adapter from its cache, random
weights of the published architecture, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.errors import ModelUnavailableError, UserError
from streamdiff.models import ip_adapters
from streamdiff.models.architectures import _seeded, cast, unet_config
from streamdiff.models.registry import get_spec

SIZE = 64


def write_adapter(folder: Path, unet: torch.nn.Module, name: str = "ip-adapter.safetensors") -> Path:
    """The random base adapter _load_random builds for `unet` (same seed, same numbers), saved as h94 lays one
    out: the weight file with its image_encoder/ folder beside it."""
    from safetensors.torch import save_file

    with _seeded(torch.device("cpu"), 3):
        encoder = cast(ip_adapters.random_image_encoder(tiny=True), torch.float32)
        state = ip_adapters.random_adapter_state(unet, encoder.config.projection_dim)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(folder / "image_encoder")
    path = folder / name
    if path.suffix == ".safetensors":
        flat = {f"{part}.{key}": value.contiguous() for part, values in state.items() for key, value in values.items()}
        save_file(flat, str(path))
    else:
        torch.save(state, path)
    return path


def styled(model: str, ip_adapter: str, style, image) -> torch.Tensor:
    stream = StreamPipeline.from_model(model, ip_adapter=ip_adapter, device="cpu", width=SIZE, height=SIZE,
                                       ip_adapter_scale=1.0)
    stream.set_style_image(style)
    stream.prepare("a harbour")
    return stream.img2img(image)


def pictures():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, SIZE, SIZE, generator=generator), torch.rand(1, 3, 40, 56, generator=generator)


@pytest.mark.parametrize("name", ["ip-adapter.safetensors", "ip-adapter.bin"])
def test_a_weight_file_in_the_published_layout_loads(tmp_path, tiny_pipe, name):
    path = write_adapter(tmp_path / "adapter", tiny_pipe.unet, name)
    image, style = pictures()
    from_file = styled("tiny", str(path), style, image)
    torch.testing.assert_close(from_file, styled("tiny", "base", style, image))  # the same weights, read back
    plain = StreamPipeline.from_model("tiny", device="cpu", width=SIZE, height=SIZE)
    plain.prepare("a harbour")
    assert (from_file - plain.img2img(image)).abs().max() > 1e-3


def test_the_published_adapter_loads_from_the_hub_cache(helpers, offline_hub, tiny_pipe_factory, tmp_path):
    files = ip_adapters.IP_ADAPTER_KINDS["base"]["sd15"]
    repo = tmp_path / "h94"
    write_adapter(repo / files.subfolder, tiny_pipe_factory().unet, files.weight_name)
    helpers.add_to_hub_cache(offline_hub, ip_adapters.IP_ADAPTER_REPO, repo)
    source = ip_adapters.locate_ip_adapter("base", "sd15")
    assert Path(source.folder, files.subfolder, files.weight_name).is_file() and source.files == files
    pipe = tiny_pipe_factory()
    ip_adapters.load_ip_adapter(pipe, "base", get_spec("sd15-lcm"), source)
    reference = tiny_pipe_factory()
    ip_adapters.load_ip_adapter(reference, "base", get_spec("tiny"), random_weights=True)
    assert pipe.image_encoder is not None and pipe.feature_extractor.crop_size["height"] == 32
    ours, theirs = pipe.unet.state_dict(), reference.unet.state_dict()
    assert ours.keys() == theirs.keys() and any("to_k_ip" in key for key in ours)
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key])


def test_offline_without_the_adapter_names_it_and_what_to_pass_instead(offline_hub):
    with pytest.raises(ModelUnavailableError) as caught:
        ip_adapters.locate_ip_adapter("plus", "sdxl")
    message = str(caught.value)
    assert "h94/IP-Adapter (the plus IP-Adapter)" in message and "offline mode is on" in message
    assert "a local IP-Adapter weight file" in message
    # The repository holds every adapter (many GB): the hint downloads this one and its image encoder alone.
    assert ("`hf download h94/IP-Adapter --include 'sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors' "
            "--include 'models/image_encoder/config.json' --include 'models/image_encoder/model.safetensors'`"
            ) in message


def test_an_adapter_of_another_width_or_without_its_encoder_is_refused(tmp_path, tiny_pipe, tiny_sdxl_factory):
    other = write_adapter(tmp_path / "sdxl", tiny_sdxl_factory().unet)
    with pytest.raises(UserError, match="reads embeddings 80 wide, the model's are 32 wide"):
        ip_adapters.load_ip_adapter(tiny_pipe, str(other), get_spec("tiny"))
    lone = tmp_path / "lone" / "ip-adapter.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(other.read_bytes())
    with pytest.raises(UserError, match="needs its CLIP image encoder"):
        ip_adapters.locate_ip_adapter(str(lone), "sd15")


def test_random_weights_have_the_published_sizes():
    """The paper's 22 M parameters for SD 1.5's adapter; CLIP ViT-H/14's 632 M for its image encoder."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config("sd15-lcm", 512))
        encoder = ip_adapters.random_image_encoder(tiny=False)
        state = ip_adapters.random_adapter_state(unet, encoder.config.projection_dim)
    adapter = sum(t.numel() for part in state.values() for t in part.values())
    assert 22.0e6 < adapter < 22.5e6
    assert 631e6 < sum(p.numel() for p in encoder.parameters()) < 634e6
    assert len(state["ip_adapter"]) == 2 * 16  # a key and a value projection for each of the 16 layers
