"""What users would otherwise run, on the same weights: diffusers' own pipelines and StreamDiffusion 0.1.1.

Each baseline is written the way its documentation shows it: PIL picture in, PIL picture out, the prompt
passed as text. Build them before accelerating the modules: acceleration changes the modules in place.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np

from ..config import StreamConfig
from ..devices import cpu_generator
from ..stream import Components

BASELINES: tuple[str, ...] = ("diffusers", "streamdiffusion")

# diffusers' pipeline class by (SDXL, steered by ControlNets, img2img).
_PIPELINES: dict[tuple[bool, bool, bool], str] = {
    (False, False, True): "StableDiffusionImg2ImgPipeline",
    (False, False, False): "StableDiffusionPipeline",
    (False, True, True): "StableDiffusionControlNetImg2ImgPipeline",
    (False, True, False): "StableDiffusionControlNetPipeline",
    (True, False, True): "StableDiffusionXLImg2ImgPipeline",
    (True, False, False): "StableDiffusionXLPipeline",
    (True, True, True): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, True, False): "StableDiffusionXLControlNetPipeline",
}


def unavailable(name: str, device_type: str, controlnet: bool = False, sdxl: bool = False,
                ip_adapter: bool = False) -> str | None:
    """Why a baseline cannot run here (for a stream steered by a ControlNet, if `controlnet`; of an SDXL model, if
    `sdxl`; steered by a style picture through an IP-Adapter, if `ip_adapter`), or None."""
    if name not in BASELINES:
        return f"unknown baseline {name!r}; known: {', '.join(BASELINES)}"
    if name == "diffusers" and controlnet and ip_adapter:
        # _control_arguments builds a stream, and a stream takes the adapter over from the UNet the pipeline shares.
        return ("diffusers' ControlNet pipelines are not timed with an IP-Adapter: the baseline makes its control "
                "pictures with a stream, which takes the adapter over from their shared UNet")
    if name == "streamdiffusion":
        if sdxl:  # its wrapper encodes prompts with one text tower and calls the UNet without added conditions
            return "StreamDiffusion 0.1.1 runs SD 1.x / 2.x pipelines only, not SDXL"
        if controlnet:
            return "StreamDiffusion 0.1.1 takes no ControlNet"
        if ip_adapter:
            return "StreamDiffusion 0.1.1 takes no IP-Adapter"
        if importlib.util.find_spec("streamdiffusion") is None:
            return "the streamdiffusion package (0.1.1) is not installed"
        if device_type != "cuda":
            return "StreamDiffusion 0.1.1 times itself with CUDA events and needs a CUDA GPU"
    return None


def _to_pil(frame: np.ndarray) -> Any:
    from PIL import Image

    return [Image.fromarray(f) for f in frame] if frame.ndim == 4 else Image.fromarray(frame)


def diffusers_call(components: Components, config: StreamConfig, prompt: str, task: str,
                   style: np.ndarray | None = None) -> Callable[[np.ndarray], Any]:
    """diffusers' StableDiffusion(Img2Img)Pipeline over the same modules, as its docs for one-step models show;
    with a ControlNet among the modules, StableDiffusionControlNet(Img2Img)Pipeline; for SDXL, the
    StableDiffusionXL ones. With a style picture (uint8 (H, W, 3)), the IP-Adapter loaded into the UNet steers
    each call by it at config.ip_adapter_scale, as diffusers' IP-Adapter guide shows (`ip_adapter_image`: the
    pipeline encodes the picture at every call). Call it before any stream is built on the modules: a stream takes
    the adapter over.

    img2img runs `steps` denoising steps as num_inference_steps = 2 x steps at strength 0.5, guidance off. Each call
    draws its noise from config.seed as the stream draws its fixed noise, so that where the schedules agree the
    pictures can be compared.
    """
    pipe = _diffusers_pipeline(components, task)
    steps, batch = config.denoising_steps, config.frame_buffer_size
    size = {"height": config.height, "width": config.width}
    control = _control_arguments(components, config, task)
    styled: dict[str, Any] = {}
    if style is not None:
        pipe.set_ip_adapter_scale(config.ip_adapter_scale)
        styled = {"ip_adapter_image": _to_pil(style)}
    _hand_over_vae(components)

    def img2img(frame: np.ndarray) -> Any:
        images = _to_pil(frame)
        prompts = [prompt] * batch if batch > 1 else prompt
        return pipe(prompts, image=images, num_inference_steps=2 * steps, strength=0.5, guidance_scale=0.0,
                    generator=cpu_generator(config.seed), **control(frame), **styled).images

    def txt2img(frame: np.ndarray) -> Any:
        return pipe(prompt, num_inference_steps=steps, guidance_scale=0.0, num_images_per_prompt=batch, **size,
                    generator=cpu_generator(config.seed), **control(frame), **styled).images

    return img2img if task == "img2img" else txt2img


def _diffusers_pipeline(components: Components, task: str) -> Any:
    import diffusers

    # The image encoder and its preprocessing are an IP-Adapter's (None without one).
    modules = dict(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                   unet=components.unet, scheduler=_lcm(components.scheduler_config),
                   image_encoder=components.image_encoder, feature_extractor=components.feature_extractor)
    if components.sdxl:
        # SDXL's pipelines have no safety checker; their invisible watermark is no part of making the picture.
        modules.update(text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
                       force_zeros_for_empty_prompt=components.zero_empty_negative, add_watermarker=False)
    else:
        modules.update(safety_checker=None, requires_safety_checker=False)
    nets = components.controlnets  # several become diffusers' MultiControlNetModel, which sums them as we do
    if nets:
        modules["controlnet"] = nets[0] if len(nets) == 1 else list(nets)
    kind = getattr(diffusers, _PIPELINES[(components.sdxl, bool(nets), task == "img2img")])
    pipe = kind(**modules)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hand_over_vae(components: Components) -> None:
    """The VAE in the UNet's dtype, as diffusers loads it: a stream keeps SDXL's float16 autoencoder in float32
    (Components.vae_dtype), while SDXL's pipelines upcast it around each use themselves and decode the float16
    latents of txt2img only with a float16 or upcast autoencoder."""
    vae, dtype = components.vae, components.unet.dtype
    if vae.dtype != dtype:
        vae.to(dtype=dtype)


def _control_arguments(components: Components, config: StreamConfig, task: str) -> Callable[[np.ndarray], dict]:
    """A frame's ControlNet arguments of a diffusers call (none without a ControlNet): the scale, and the control
    picture the engine would make of the frame (its Canny edges on the device, its estimated depth, or the frame
    itself), so that only the pipelines differ. txt2img gets the engine's picture before any frame (black), as
    the stream's txt2img has it."""
    if not components.controlnets:
        return lambda frame: {}
    from ..stream import StreamPipeline

    engine = StreamPipeline(components, config)  # for its control pictures alone
    control = engine.control
    assert control is not None
    single = len(control.controlnets) == 1
    scales = engine.control_scales
    scale = {"controlnet_conditioning_scale": scales[0] if single else list(scales)}

    def pictures(count: int | None = None) -> Any:
        """Each ControlNet's picture (several: a list, as MultiControlNetModel takes them)."""
        each = [control.images[kind][:count] for kind in control.preprocesses]
        return each[0] if single else each

    if task == "txt2img":
        still = pictures(1)  # (1, 3, H, W) each: diffusers repeats it for each picture
        return lambda frame: {"image": still, **scale}

    def arguments(frame: np.ndarray) -> dict:
        engine.set_control_image(frame)
        return {"control_image": pictures(), **scale}  # (F, 3, H, W) in [0, 1] each

    return arguments


def streamdiffusion_call(components: Components, config: StreamConfig, prompt: str, task: str,
                         dtype: Any) -> Callable[[np.ndarray], Any]:
    """StreamDiffusion 0.1.1 (no TensorRT) over the same modules, as its README's img2img loop runs it."""
    from diffusers import StableDiffusionPipeline
    from streamdiffusion import StreamDiffusion

    base = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=components.unet,
                                   scheduler=_lcm(components.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    stream = StreamDiffusion(base, t_index_list=list(config.t_index_list), torch_dtype=dtype, width=config.width,
                             height=config.height, frame_buffer_size=config.frame_buffer_size,
                             use_denoising_batch=config.use_denoising_batch, cfg_type="none")
    stream.prepare(prompt, num_inference_steps=config.num_inference_steps, guidance_scale=1.0)

    def img2img(frame: np.ndarray) -> Any:
        return stream.image_processor.postprocess(stream(_to_pil(frame)), output_type="pil")

    def txt2img(frame: np.ndarray) -> Any:
        return stream.image_processor.postprocess(stream.txt2img(config.frame_buffer_size), output_type="pil")

    return img2img if task == "img2img" else txt2img


def _lcm(scheduler_config: dict) -> Any:
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(scheduler_config)
