"""Style LoRAs (--lora): made here with peft for the tiny model's architecture, fused at load, and refused
clearly when missing, unreadable or made for another architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_checks import one_line_error

from streamdiff import StreamPipeline
from streamdiff.cli import main
from streamdiff.errors import UserError
from streamdiff.models.digest import weights_digest
from streamdiff.models.loading import load_model
from streamdiff.models.lora import StyleLora


def make_lora(folder, unet: torch.nn.Module, *, seed: int = 0, weight_name: str = "ink.safetensors"):
    """A trained-looking LoRA for `unet`'s attention projections: random A and B (peft starts B at zero)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name=weight_name)
    return folder / weight_name


@pytest.fixture(scope="module")
def ink(tmp_path_factory):
    from streamdiff.models.tiny import build_tiny_unet

    return make_lora(tmp_path_factory.mktemp("lora"), build_tiny_unet())


def _load(*loras: StyleLora):
    return load_model("tiny", dtype=torch.float32, device="cpu", loras=loras).pipe


@pytest.mark.parametrize("text, source, scale", [
    ("ink.safetensors", "ink.safetensors", 1.0),
    ("ink.safetensors:0.8", "ink.safetensors", 0.8),
    ("owner/ink-style:-0.5", "owner/ink-style", -0.5),
    ("C:\\styles\\ink.safetensors", "C:\\styles\\ink.safetensors", 1.0),
    ("C:\\styles\\ink.safetensors:2", "C:\\styles\\ink.safetensors", 2.0),
])
def test_sources_with_and_without_a_scale(text, source, scale):
    assert StyleLora.parse(text) == StyleLora(source, scale)


@pytest.mark.parametrize("text, error", [(":0.5", "expects SOURCE"), ("ink.safetensors:nan", "finite")])
def test_bad_lora_options_are_named(text, error):
    with pytest.raises(ValueError, match=error):
        StyleLora.parse(text)


def test_a_fused_lora_changes_the_weights_by_its_scale_and_leaves_no_adapter(ink):
    plain = _load()
    styled = _load(StyleLora(str(ink)))
    assert not any("lora" in name for name in styled.unet.state_dict())
    assert weights_digest([styled.unet]) != weights_digest([plain.unet])
    half = _load(StyleLora(str(ink), 0.5))
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    full_delta = styled.unet.state_dict()[key] - plain.unet.state_dict()[key]
    torch.testing.assert_close(half.unet.state_dict()[key] - plain.unet.state_dict()[key], full_delta * 0.5)
    untouched = "conv_in.weight"  # no LoRA layer there
    torch.testing.assert_close(styled.unet.state_dict()[untouched], plain.unet.state_dict()[untouched])
    assert weights_digest([_load(StyleLora(str(ink), 0.0)).unet]) == weights_digest([plain.unet])


def test_the_stream_runs_the_fused_style_with_the_folder_form_too(ink):
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)

    def first_output(*loras):
        pipe = StreamPipeline.from_model("tiny", loras=loras, device="cpu", seed=1)
        pipe.prepare("a watercolor")
        return pipe.img2img(frame, output_type="np")

    plain, by_file, by_folder = first_output(), first_output(f"{ink}:1.0"), first_output(str(ink.parent))
    assert np.array_equal(by_file, by_folder)
    assert np.abs(by_file.astype(int) - plain.astype(int)).max() > 0


def test_an_sdxl_lora_styles_an_sdxl_stream_and_an_sd_one_is_refused_there(ink, tmp_path):
    from streamdiff.models.tiny import build_tiny_sdxl_unet

    sdxl_ink = make_lora(tmp_path, build_tiny_sdxl_unet(), weight_name="sdxl-ink.safetensors")
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)

    def first_output(*loras):
        pipe = StreamPipeline.from_model("tiny-sdxl", loras=loras, device="cpu", seed=1)
        pipe.prepare("a watercolor")
        return pipe.img2img(frame, output_type="np")

    assert np.abs(first_output(f"{sdxl_ink}:1.0").astype(int) - first_output().astype(int)).max() > 0
    with pytest.raises(UserError, match="into this model"):
        first_output(str(ink))


def test_a_lora_of_another_architecture_is_refused(tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                 attention_head_dim=8, norm_num_groups=8)
    wrong = make_lora(tmp_path, other, weight_name="other.safetensors")
    with pytest.raises(UserError, match="cannot fuse the LoRA .*other.safetensors into this model"):
        _load(StyleLora(str(wrong)))


def test_a_file_with_no_lora_layers_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "notes.safetensors"
    save_file({"something_else.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(UserError, match="notes.safetensors"):
        _load(StyleLora(str(path)))


def test_the_command_line_fuses_a_lora_and_a_missing_one_fails_before_the_model_loads(ink, tmp_path, capsys,
                                                                                      monkeypatch):
    out = tmp_path / "styled.png"
    assert main(["img2img", "sample", str(out), "--model", "tiny", "--prompt", "ink", "--lora", f"{ink}:0.7"]) == 0
    assert out.is_file()
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the missing LoRA was noticed")

    monkeypatch.setattr("streamdiff.models.loading._load_registry", refuse)
    assert main(["img2img", "sample", str(out), "--model", "tiny", "--prompt", "ink",
                 "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA not found:" in one_line_error(capsys)


def test_a_scale_that_is_no_number_after_an_existing_file_is_named_as_the_scale(tmp_path, capsys, monkeypatch):
    lora = tmp_path / "ink.safetensors"
    lora.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert main(["img2img", "sample", "out.png", "--model", "tiny", "--prompt", "ink", "--lora", "ink.safetensors:abc"]) == 2
    assert "a LoRA's scale, after the ':' in 'ink.safetensors:abc', must be a number such as 0.8; got 'abc'" \
        in one_line_error(capsys)


def test_a_hub_lora_offline_is_named_with_what_is_missing(offline_hub, capsys, tmp_path):
    assert main(["img2img", "sample", str(tmp_path / "x.png"), "--model", "tiny", "--prompt", "ink",
                 "--lora", "owner/ink-style"]) == 2
    assert "owner/ink-style" in one_line_error(capsys)
