"""The conditioning cache: stored time projections and cross-attention keys/values give the UNet's own numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import SIZE, random_frames

from streamdiff import StreamPipeline
from streamdiff.backends.accelerate import _fuse_projections
from streamdiff.backends.conditioning import ConditioningCache, StoredProjection
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.config import StreamConfig
from streamdiff.control import Control
from streamdiff.models.controlnets import random_controlnet


@pytest.fixture
def unet(_tiny_cache):
    return copy.deepcopy(_tiny_cache["taesd"].unet).eval()


def _inputs(unet, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).float()
    embeddings = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return latents, timesteps, embeddings


@torch.no_grad()
def test_stored_conditioning_gives_the_unets_own_numbers(unet):
    plain, cached = TorchDenoiser(unet, cache_conditioning=False), TorchDenoiser(unet)
    latents, t, e = _inputs(unet, 3, seed=0)
    expected = plain(latents, t, e)
    cached.condition(t, e)
    assert torch.equal(cached(latents, t, e), expected)
    # The plain denoiser, on the same modules, still computes everything from its inputs.
    _, t2, e2 = _inputs(unet, 3, seed=1)
    assert torch.equal(plain(latents, t2, e2), TorchDenoiser(unet, cache_conditioning=False)(latents, t2, e2))


@torch.no_grad()
def test_calls_read_the_stored_conditioning_not_their_arguments(unet):
    plain, cached = TorchDenoiser(unet, cache_conditioning=False), TorchDenoiser(unet)
    latents, t, e = _inputs(unet, 2, seed=0)
    _, t_other, e_other = _inputs(unet, 2, seed=1)
    cached.condition(t, e)
    out = cached(latents, t_other, e_other)
    assert torch.equal(out, plain(latents, t, e))
    assert not torch.allclose(out, plain(latents, t_other, e_other))
    cached.condition(t_other, e_other)
    assert torch.equal(cached(latents, t_other, e_other), plain(latents, t_other, e_other))
    cached.condition(None, None)  # calls that differ from one another: everything computed again
    assert torch.equal(cached(latents, t, e), plain(latents, t, e))


def _projections(model) -> tuple[int, int]:
    """How many ResNets with a time projection and cross-attention layers `model` has."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    resnets = sum(isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None for m in model.modules())
    crosses = sum(isinstance(m, Attention) and m.is_cross_attention for m in model.modules())
    return resnets, crosses


@torch.no_grad()
def test_stand_ins_cover_every_time_projection_and_cross_attention(unet):
    resnets, crosses = _projections(unet)
    assert resnets > 0 and crosses > 0
    state = unet.state_dict()
    linears = {name: m for name, m in unet.named_modules() if type(m) is torch.nn.Linear}
    TorchDenoiser(unet).condition(*_inputs(unet, 1, seed=0)[1:])
    stored = sum(isinstance(m, StoredProjection) for m in unet.modules())
    assert stored == resnets + 2 * crosses  # separate key and value projections
    # The stand-ins hold the projections' own parameters under their names: the state dict is unchanged.
    after = unet.state_dict()
    assert list(after) == list(state) and all(after[k] is state[k] or torch.equal(after[k], state[k]) for k in state)
    _fuse_projections(unet)
    assert not any(isinstance(m, StoredProjection) for m in unet.modules())
    assert all(dict(unet.named_modules())[name] is m for name, m in linears.items())


@torch.no_grad()
def test_fused_projections_are_stored_after_fusing(unet):
    cached = TorchDenoiser(unet)
    latents, t, e = _inputs(unet, 2, seed=0)
    cached.condition(t, e)
    _fuse_projections(unet)
    out = cached(latents, t, e)  # stores again, now in front of the fused key/value products
    crosses = sum(type(m.processor).__name__ == "FusedAttnProcessor2_0" and m.is_cross_attention
                  for m in unet.modules() if hasattr(m, "processor"))
    assert sum(isinstance(m, StoredProjection) and m.value.shape[1] == 77 for m in unet.modules()) == crosses
    torch.testing.assert_close(out, TorchDenoiser(unet, cache_conditioning=False)(latents, t, e))


@pytest.mark.parametrize("steered", [False, True], ids=["unet", "unet-and-controlnet"])
@torch.no_grad()
def test_streams_sharing_a_unet_or_controlnet_each_get_their_own_conditioning(unet, request, steered):
    control = request.getfixturevalue("control") if steered else None
    plain = TorchDenoiser(unet, cache_conditioning=False, control=control)
    first, second = TorchDenoiser(unet, control=control), TorchDenoiser(unet, control=control)
    lat1, t1, e1 = _inputs(unet, 1, seed=0)
    lat2, t2, e2 = _inputs(unet, 3, seed=1)
    first.condition(t1, e1)
    second.condition(t2, e2)
    for _ in range(2):
        assert torch.equal(first(lat1, t1, e1), plain(lat1, t1, e1))
        assert torch.equal(second(lat2, t2, e2), plain(lat2, t2, e2))


@torch.no_grad()
def test_a_denoiser_of_another_shape_stores_into_tensors_of_its_own(unet):
    """A captured step reads its stream's stored values by address: a stream of another batch on the same UNet
    must store its own elsewhere and leave them where they are, with the values they had."""
    first, second = TorchDenoiser(unet), TorchDenoiser(unet)
    lat1, t1, e1 = _inputs(unet, 1, seed=0)
    _, t2, e2 = _inputs(unet, 3, seed=1)
    first.condition(t1, e1)
    stand_ins = [m for m in unet.modules() if isinstance(m, StoredProjection)]
    kept = [(m.value.data_ptr(), m.value.clone()) for m in stand_ins]
    second.condition(t2, e2)
    assert all(m.value.data_ptr() != address for m, (address, _) in zip(stand_ins, kept))
    first.condition(t1 + 1, e1 * 2)  # a new conditioning of the first shape: written in place
    for m, (address, _) in zip(stand_ins, kept):
        assert m.value.data_ptr() == address
    first.condition(t1, e1)
    for m, (_, value) in zip(stand_ins, kept):
        assert torch.equal(m.value, value)
    plain = TorchDenoiser(unet, cache_conditioning=False)
    assert torch.equal(first(lat1, t1, e1), plain(lat1, t1, e1))


def _stream(make_stream, cache: bool, **settings) -> StreamPipeline:
    stream = make_stream(**settings)
    stream.denoiser = TorchDenoiser(stream.components.unet, cache_conditioning=cache)
    stream.prepare("a red fox", negative_prompt="blurry")  # again, for the stream batch to take this denoiser
    return stream


@pytest.mark.parametrize("settings", [
    {"t_index_list": (20, 40)},
    {"t_index_list": (10, 25, 40), "cfg_type": "initialize", "guidance_scale": 1.4},
    {"t_index_list": (0,), "cfg_type": "full", "guidance_scale": 1.5, "frame_buffer_size": 2},
    {"t_index_list": (20, 40), "use_denoising_batch": False, "cfg_type": "self", "guidance_scale": 1.3},
], ids=["lcm-2", "initialize-3", "full-fbs2", "sequential-self"])
def test_streams_with_the_cache_equal_streams_without(make_stream, settings):
    _assert_same_pictures(*(_stream(make_stream, cache, **settings) for cache in (False, True)))


def _assert_same_pictures(plain: StreamPipeline, cached: StreamPipeline) -> None:
    """Seven frames through both streams, with a prompt transition before frame 2 and a prompt change before
    frame 5, then txt2img: the pictures are equal."""
    f = plain.config.frame_buffer_size
    shape = (f, SIZE, SIZE, 3) if f > 1 else (SIZE, SIZE, 3)
    for k, frame in enumerate(random_frames(7, shape)):
        if k == 2:
            for stream in (plain, cached):
                stream.update_prompt("a cat", negative_prompt="dark", transition_frames=2)
        if k == 5:
            for stream in (plain, cached):
                stream.update_prompt("a boat")
        np.testing.assert_array_equal(cached.img2img(frame, output_type="np"), plain.img2img(frame, output_type="np"),
                                      err_msg=f"frame {k}")
    np.testing.assert_array_equal(cached.txt2img("np"), plain.txt2img("np"))


@torch.no_grad()
def test_embeddings_projected_by_the_unet_first_keep_their_keys_and_values_computed(unet):
    """With encoder_hid_proj the cross-attention layers attend to projected states: only the time path is stored."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    projected = UNet2DConditionModel.from_config(unet.config, encoder_hid_dim=24, encoder_hid_dim_type="text_proj")
    projected.eval()
    assert projected.encoder_hid_proj is not None
    latents, t, _ = _inputs(projected, 2, seed=0)
    e = torch.randn(2, 77, 24)
    cached = TorchDenoiser(projected)
    cached.condition(t, e)
    assert all(m.value.dim() == 2 for m in projected.modules() if isinstance(m, StoredProjection))
    assert torch.equal(cached(latents, t, e), TorchDenoiser(projected, cache_conditioning=False)(latents, t, e))


# ----- a ControlNet, called with the UNet's timesteps and embeddings, stores its own ------------------------

@pytest.fixture
def control(unet):
    """Two seeded ControlNets of the tiny UNet's architecture steering together, with a random control picture
    for 8x8 latents: each must store (and read) its own conditioning."""
    config = StreamConfig(width=64, height=64, control_preprocess="none", control_scale=(0.7, 1.3))
    nets = [random_controlnet(unet, seed).eval() for seed in (1, 2)]
    control = Control(nets, config, torch.device("cpu"), torch.float32)
    picture = control.images["none"]
    picture.copy_(torch.rand(picture.shape, generator=torch.Generator().manual_seed(5)))
    return control


@torch.no_grad()
def test_a_controlnets_stored_conditioning_gives_its_own_numbers(unet, control):
    plain, cached = TorchDenoiser(unet, cache_conditioning=False, control=control), TorchDenoiser(unet, control=control)
    latents, t, e = _inputs(unet, 3, seed=0)
    _, t_other, e_other = _inputs(unet, 3, seed=1)
    expected = plain(latents, t, e)
    cached.condition(t, e)
    assert torch.equal(cached(latents, t, e), expected)
    # Both read what was stored, not the call's arguments: a ControlNet computing from them would differ.
    assert torch.equal(cached(latents, t_other, e_other), expected)
    # The ControlNets' own caches, as the background compile switches each on around its call alone.
    with ConditioningCache.of(control.controlnets[0]).active(), ConditioningCache.of(control.controlnets[1]).active():
        stored = _flat(control.residuals(latents, t_other, e_other))
    assert torch.equal(stored, _flat(control.residuals(latents, t, e)))


def _flat(residuals: dict) -> torch.Tensor:
    """A ControlNet's residuals (down stages' and the middle stage's) as one vector."""
    down, mid = residuals["down_block_additional_residuals"], residuals["mid_block_additional_residual"]
    return torch.cat([r.flatten() for r in (*down, mid)])


@torch.no_grad()
def test_a_new_conditioning_reaches_the_controlnets_stored_projections(unet, control):
    """A prompt or schedule change stores the ControlNet's projections again: stale keys and values would steer
    the UNet by the old prompt."""
    plain, cached = TorchDenoiser(unet, cache_conditioning=False, control=control), TorchDenoiser(unet, control=control)
    latents, t, e = _inputs(unet, 2, seed=0)
    _, t_other, e_other = _inputs(unet, 2, seed=1)
    cached.condition(t, e)
    assert torch.equal(cached(latents, t, e), plain(latents, t, e))
    cached.condition(t, e_other)  # a new prompt only
    assert torch.equal(cached(latents, t, e_other), plain(latents, t, e_other))
    cached.condition(t_other, e_other)  # a new schedule
    assert torch.equal(cached(latents, t_other, e_other), plain(latents, t_other, e_other))
    cached.condition(None, None)
    assert torch.equal(cached(latents, t, e), plain(latents, t, e))


@torch.no_grad()
def test_stand_ins_cover_the_controlnets_projections_and_survive_fusing(unet, control):
    controlnet = control.controlnets[1]
    resnets, crosses = _projections(controlnet)
    assert resnets > 0 and crosses > 0
    state = controlnet.state_dict()
    cached = TorchDenoiser(unet, control=control)
    latents, t, e = _inputs(unet, 2, seed=0)
    cached.condition(t, e)
    assert sum(isinstance(m, StoredProjection) for m in controlnet.modules()) == resnets + 2 * crosses
    after = controlnet.state_dict()
    assert list(after) == list(state) and all(after[k] is state[k] or torch.equal(after[k], state[k]) for k in state)
    before = TorchDenoiser(unet, cache_conditioning=False, control=control)(latents, t, e)
    # accelerate strips the stand-ins of the cache the denoiser uses; its next call stores them again.
    _fuse_projections(controlnet)
    assert not any(isinstance(m, StoredProjection) for m in controlnet.modules())
    # diffusers' own fuse_qkv_projections leaves a ControlNet's layers as they were; ours fuses every one.
    layers = [m for m in controlnet.modules() if hasattr(m, "fused_projections")]
    assert layers and all(m.fused_projections for m in layers)
    assert {type(p).__name__ for p in controlnet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    out = cached(latents, t, e)
    assert any(isinstance(m, StoredProjection) and m.value is not None for m in controlnet.modules())
    torch.testing.assert_close(out, before)
    torch.testing.assert_close(out, TorchDenoiser(unet, cache_conditioning=False, control=control)(latents, t, e))


@pytest.mark.parametrize("settings", [
    {"t_index_list": (20, 40)},
    {"t_index_list": (10, 25, 40), "cfg_type": "initialize", "guidance_scale": 1.4},
    {"t_index_list": (0,), "cfg_type": "full", "guidance_scale": 1.5, "frame_buffer_size": 2},
], ids=["lcm-2", "initialize-3", "full-fbs2"])
def test_controlnet_streams_with_the_cache_equal_streams_without(make_controlled_stream, settings):
    _assert_same_pictures(*(make_controlled_stream(cache, **settings) for cache in (False, True)))
