"""Real architectures with random weights: counted and run on the meta device, so nothing is allocated."""

import pytest
import torch

from streamdiff import added_conditions
from streamdiff.models.architectures import RECONSTRUCTED, UNET_CONFIGS, build_random_pipeline
from streamdiff.models.registry import REGISTRY, get_spec


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.fixture(scope="module")
def meta_pipes():
    return {name: build_random_pipeline(get_spec(name), taesd=True, dtype=torch.float16, device="meta")
            for name in UNET_CONFIGS}


def test_every_hub_model_of_the_registry_has_an_architecture():
    assert set(UNET_CONFIGS) == {name for name, spec in REGISTRY.items() if not spec.local_builder}
    assert RECONSTRUCTED == {"sdxs-512", "tiny-sd"}


@pytest.mark.parametrize(("name", "unet", "text", "text_2"), [
    ("sd-turbo", 865.9, 340.4, None),  # SD 2.1 UNet; OpenCLIP ViT-H text tower, 23 layers
    ("sd15-lcm", 859.5, 123.1, None),  # SD 1.5 UNet; CLIP ViT-L/14 text tower
    ("sdxl-turbo", 2567.5, 123.1, 694.7),  # SDXL UNet; CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers
    ("sdxl-lcm", 2567.5, 123.1, 694.7),  # SDXL 1.0 base, the same architecture
])
def test_published_architectures_have_their_published_sizes(meta_pipes, name, unet, text, text_2):
    pipe = meta_pipes[name]
    assert millions(pipe.unet) == pytest.approx(unet, abs=0.1)
    assert millions(pipe.text_encoder) == pytest.approx(text, abs=0.1)
    if text_2 is not None:
        assert millions(pipe.text_encoder_2) == pytest.approx(text_2, abs=0.1)
        assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"


@pytest.mark.parametrize(("name", "unet"), [("sdxs-512", 328.0), ("tiny-sd", 323.0)])
def test_reconstructions_have_the_published_unet_size(meta_pipes, name, unet):
    pipe = meta_pipes[name]
    assert millions(pipe.unet) == pytest.approx(unet, rel=0.10)
    assert pipe.unet.mid_block is None and len(pipe.unet.down_blocks) == 3


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_components_fit_together_at_the_native_size(meta_pipes, name):
    pipe, spec = meta_pipes[name], get_spec(name)
    assert pipe.unet.dtype == torch.float16 and pipe.unet.device.type == "meta"
    towers = [pipe.text_encoder] + ([pipe.text_encoder_2] if spec.family == "sdxl" else [])
    widths = [tower.config.hidden_size for tower in towers]
    assert widths == {"sd15": [768], "sd21": [1024], "sdxl": [768, 1280]}[spec.family]
    assert pipe.unet.config.cross_attention_dim == sum(widths)
    ids = pipe.tokenizer(["a watercolor fox"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert int(ids.max()) < min(tower.config.vocab_size for tower in towers)
    side = spec.resolution // 8
    outputs = [tower(ids.to("meta"), output_hidden_states=True) for tower in towers]
    context = torch.cat([out.hidden_states[-2 if spec.family == "sdxl" else -1] for out in outputs], dim=-1)
    if spec.family == "sdxl":  # the pooled embedding the UNet adds to its timestep embedding
        assert added_conditions.pooled_width(pipe.unet) == outputs[1].text_embeds.shape[-1] == 1280
        context = added_conditions.pack(context, outputs[1].text_embeds)
    sample = torch.empty(1, 4, side, side, device="meta", dtype=torch.float16)
    hidden, added = added_conditions.model_inputs(sample, context, added_conditions.pooled_width(pipe.unet))
    out = pipe.unet(sample, torch.tensor([999], device="meta"), hidden, **added).sample
    assert out.shape == (1, 4, side, side)
    assert pipe.vae.decode(sample).sample.shape == (1, 3, spec.resolution, spec.resolution)


def test_random_weight_models_say_what_they_are():
    from streamdiff.models.loading import load_model

    sdxs = load_model("sdxs-512", random_weights=True, dtype=torch.float16, device="meta", taesd=False)
    assert "UNet architecture reconstructed" in sdxs.spec.description and not sdxs.spec.use_taesd
    assert type(sdxs.pipe.vae).__name__ == "AutoencoderKL" and sdxs.pipe.unet.dtype == torch.float16
    sd15 = load_model("sd15-lcm", random_weights=True, dtype=torch.float16, device="meta")
    assert "published architecture" in sd15.spec.description and sd15.spec.use_taesd
    assert sd15.spec.lora_repo is None  # nothing to adapt in random weights
    assert type(sd15.pipe.vae).__name__ == "AutoencoderTiny"


def test_full_vae_is_the_sd_autoencoder():
    pipe = build_random_pipeline(get_spec("sd-turbo"), taesd=False, dtype=torch.float32, device="meta")
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert millions(pipe.vae) == pytest.approx(83.65, abs=0.01)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


def test_sdxl_full_vae_has_its_own_latent_scale_and_asks_for_float32():
    pipe = build_random_pipeline(get_spec("sdxl-turbo"), taesd=False, dtype=torch.float32, device="meta")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and millions(pipe.vae) == pytest.approx(83.65, abs=0.01)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.13025) and pipe.vae.config.force_upcast
    assert pipe.config.force_zeros_for_empty_prompt  # an empty negative prompt is zeros, as SDXL was trained


def test_taesd_is_the_published_tiny_autoencoder(meta_pipes):
    vae = meta_pipes["sd-turbo"].vae
    assert type(vae).__name__ == "AutoencoderTiny"
    assert millions(vae) == pytest.approx(2.445, abs=0.001)  # TAESD: 1.22M encoder + 1.22M decoder


def test_random_weights_are_seeded_and_leave_the_global_generator_alone(monkeypatch):
    from streamdiff.models import architectures

    # Small stand-ins keep this on the CPU in milliseconds; the seeding is what is under test.
    monkeypatch.setitem(architectures.UNET_CONFIGS, "sd-turbo", {
        **architectures.UNET_SD21, "block_out_channels": (32, 64, 64, 64), "attention_head_dim": 8,
        "norm_num_groups": 8, "layers_per_block": 1})
    monkeypatch.setitem(architectures.TEXT_ENCODER_CONFIGS, "sd21", {
        **architectures.TEXT_ENCODER_SD21, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1})
    spec = get_spec("sd-turbo")
    state = torch.get_rng_state()
    first, again, other = (build_random_pipeline(spec, taesd=True, dtype=torch.float32, device="cpu", seed=s)
                           for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("unet", "text_encoder", "vae"):
        a, b, c = (getattr(p, name).state_dict() for p in (first, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
