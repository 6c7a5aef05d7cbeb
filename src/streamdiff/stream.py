"""StreamPipeline: the public engine. Pictures in, stylized pictures out, one call per frame.

Latency: with n denoising steps the output of call k shows input k - (n - 1); `flush()` returns the
frames still in flight at the end of a clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import added_conditions, images, temporal
from .backends.protocols import Denoiser, LatentCodec
from .backends.torch import TorchCodec, TorchDenoiser
from .batch import StreamBatch
from .components import Components, place_module
from .config import StreamConfig
from .control import Control
from .control_image import ControlImage
from .device_steps import DeviceSteps
from .devices import cpu_generator, resolve_device, resolve_dtype
from .guidance import make_guidance
from .live_schedule import LiveSchedule
from .models.lora import StyleLora
from .prompts import PromptEncoder, PromptLike, Transition, normalized_weights
from .schedule import SlotCoefficients, build_coefficients
from .similarity import SimilarityFilter
from .style_image import StyleImage

SeedLike = int | Sequence[tuple[int, float]]


@dataclass
class StreamStats:
    frames: int = 0  # pictures asked for (img2img and txt2img calls)
    processed: int = 0  # calls that ran the model
    skipped: int = 0  # calls answered with the previous output by the similarity filter
    last_similarity: float = math.nan


class StreamPipeline(LiveSchedule, DeviceSteps, StyleImage, ControlImage):
    """Stream Batch, residual CFG, the similarity filter and temporal smoothing over diffusers parts."""

    def __init__(
        self,
        components: Components,
        config: StreamConfig,
        *,
        lcm_boundary: bool = True,
        denoiser: Denoiser | None = None,
        codec: LatentCodec | None = None,
        control_names: Sequence[str] = (),
    ):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.lcm_boundary = lcm_boundary
        added_conditions.check_fits(components.unet, components.text_encoder_2)
        for module in components.modules:
            dtype = components.vae_dtype(self.dtype) if module is components.vae else self.dtype
            place_module(module, self.device, dtype)
        self.components = components
        self._take_over_ip_adapter()
        self.control = None if not components.controlnets else \
            Control(components.controlnets, config, self.device, self.dtype, components.depth_estimator,
                    control_names)
        self._batch: StreamBatch | None = None
        self.denoiser = denoiser or TorchDenoiser(components.unet, control=self.control)  # no batch yet to take it
        self.codec = codec or TorchCodec(components.vae, self.dtype)
        self.prompts = PromptEncoder(components.tokenizer, components.text_encoder, self.device, self.dtype,
                                     tokenizer_2=components.tokenizer_2, text_encoder_2=components.text_encoder_2,
                                     zero_empty_negative=components.zero_empty_negative)
        self.stats = StreamStats()
        self._schedules: dict[int, tuple[int, ...]] = {}  # the indices the stream last had per number of steps
        self._filter = self._make_filter(config.similarity_threshold, config.similarity_max_skip)

    @classmethod
    def from_diffusers(cls, pipe: Any, config: StreamConfig | None = None, *, lcm_boundary: bool = True,
                       **settings: Any) -> StreamPipeline:
        """Wrap a diffusers SD 1.x/2.x pipeline (its VAE may be AutoencoderTiny); moves its modules."""
        return cls(Components.from_diffusers(pipe), StreamConfig.from_settings(config, **settings),
                   lcm_boundary=lcm_boundary)

    @classmethod
    def from_model(cls, name_or_path: str, config: StreamConfig | None = None, *, taesd: bool | None = None,
                   random_weights: bool = False, model_config: str | None = None,
                   loras: Sequence[StyleLora | str] = (), controlnet: str | Sequence[str] | None = None,
                   depth_estimator: str = "small", ip_adapter: str | None = None,
                   **settings: Any) -> StreamPipeline:
        """A registry name (see `streamdiff models`), a local diffusers folder, a .safetensors file or a hub id.

        model_config: for a single checkpoint file, the diffusers folder or hub id of its base model.
        loras: style LoRAs (or SOURCE[:SCALE] strings, as --lora takes them) fused into the weights at load.
        controlnet: a ControlNet kind ("canny", "depth"), folder or hub id steering the UNet (control.py), or a
        sequence of them steering it together; each one's control_preprocess is its kind's own unless the
        settings say otherwise ("depth" loads an estimator, one for all).
        depth_estimator: that estimator, a Depth Anything V2 size ("small", "base", "large"), folder or hub id.
        ip_adapter: an IP-Adapter kind ("base", "plus") or weight file, letting a style picture steer the stream
        (set_style_image; see ip_adapter.py).
        """
        from .models.controlnets import (
            check_depth_estimator_use,
            load_controlnets,
            prefetch_controlnets,
        )
        from .models.ip_adapters import load_ip_adapter, locate_ip_adapter
        from .models.loading import load_model
        from .models.registry import REGISTRY

        refs = (controlnet,) if isinstance(controlnet, str) else tuple(controlnet or ())
        how = settings.get("control_preprocess")
        base = StreamConfig.from_settings(config, **settings)
        if refs:
            base.control_scales(len(refs))  # a scale per ControlNet must match their number, before any loading
        check_depth_estimator_use(refs, how, depth_estimator)
        folders = prefetch_controlnets(refs, name_or_path, how, random_weights=random_weights,
                                       depth_estimator=depth_estimator) if refs else []
        known = REGISTRY.get(name_or_path)
        adapter = None if ip_adapter is None or known is None else \
            locate_ip_adapter(ip_adapter, known.family, random_weights=random_weights)
        device = resolve_device(base.device)
        styles = [lora if isinstance(lora, StyleLora) else StyleLora.parse(lora) for lora in loras]
        loaded = load_model(name_or_path, dtype=resolve_dtype(base.dtype, device), device=device,
                            taesd=taesd, random_weights=random_weights, config=model_config, loras=styles)
        spec = loaded.spec
        defaults: dict[str, Any] = {}
        if "t_index_list" not in settings and "strength" not in settings and "steps" not in settings:
            defaults.update(t_index_list=spec.t_index_list, num_inference_steps=spec.num_inference_steps)
        if config is None:
            defaults.update({k: spec.resolution for k in ("width", "height") if k not in settings})
        nets = None
        if refs:
            nets = load_controlnets(refs, spec, loaded.pipe.unet, how, dtype=resolve_dtype(base.dtype, device),
                                    device=device, random_weights=random_weights, folders=folders,
                                    depth_estimator=depth_estimator)
            defaults["control_preprocess"] = nets.preprocesses if len(refs) > 1 else nets.preprocesses[0]
        if ip_adapter is not None:  # after the ControlNets, which diffusers makes from the UNet as it was loaded
            load_ip_adapter(loaded.pipe, ip_adapter, spec, adapter, random_weights=random_weights)
        cfg = base.with_changes(**defaults) if defaults else base
        components = Components.from_diffusers(loaded.pipe, *((nets.modules, nets.estimator) if nets else ()))
        return cls(components, cfg, lcm_boundary=spec.lcm_boundary, control_names=nets.names if nets else ())

    # ----- set-up -------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, prompt: PromptLike = "", negative_prompt: str = "", *, seed: SeedLike | None = None) -> None:
        """Encode prompts, build the schedule, draw the fixed noise and empty the stream."""
        cfg = self.config
        slots = cfg.denoising_steps * cfg.frame_buffer_size
        self._cond = self._expand(self._with_style(self.prompts.encode_weighted(prompt, cfg.prompt_blend)), slots)
        self._uncond = self._expand(self._with_style(self.prompts.encode_negative(negative_prompt), True), slots)
        self._transition: Transition | None = None
        self._seed = seed if seed is not None else cfg.seed
        self._batch = self._new_batch(cfg)
        self._recondition()
        self.reset()

    def _new_batch(self, cfg: StreamConfig) -> StreamBatch:
        """An empty stream batch for cfg's schedule, with the fixed noise of the stream's seed."""
        return StreamBatch(self.denoiser, self._coefficients(cfg), self._draw_noise(self._seed, cfg),
                           make_guidance(cfg), cfg.frame_buffer_size, use_denoising_batch=cfg.use_denoising_batch,
                           do_add_noise=cfg.do_add_noise)

    def _coefficients(self, cfg: StreamConfig) -> SlotCoefficients:
        """The per-slot schedule values of cfg's indices, on the stream's device and dtype."""
        assert cfg.t_index_list is not None
        return build_coefficients(self.components.scheduler_config, cfg.num_inference_steps, cfg.t_index_list,
                                  cfg.frame_buffer_size, self.lcm_boundary).to(self.device, self.dtype)

    def reset(self) -> None:
        """Start a new stream with the same prompts and noise (e.g. for the next clip)."""
        self._require_prepared().reset()
        self._previous_x0: Tensor | None = None
        self._previous_output: Tensor | None = None
        self._last_latent: Tensor | None = None
        self._last_kind: images.ImageKind = "pt"
        self.stats = StreamStats()
        if self._filter is not None:
            self._filter.reset()

    def _draw_noise(self, seed: SeedLike, cfg: StreamConfig | None = None) -> Tensor:
        """Fixed noise (B, 4, H/8, W/8) drawn on the CPU; several seeds blend keeping unit variance.

        One noise per slot, as StreamDiffusion draws it; with shared_noise the F frames of a call share
        their step's noise, so consecutive frames get the same noise as with frame_buffer_size 1 (a video
        stylized F frames per call then keeps the fixed-noise steadiness instead of changing every frame).
        """
        cfg = cfg or self.config
        per_step = 1 if cfg.shared_noise else cfg.frame_buffer_size
        shape = (cfg.denoising_steps * per_step, 4, cfg.height // 8, cfg.width // 8)
        if isinstance(seed, int):
            pairs = [(seed, 1.0)]
        else:
            pairs = [(int(s), float(w)) for s, w in seed]
        weights = normalized_weights([w for _, w in pairs], "seed")
        noises = [torch.randn(shape, generator=cpu_generator(s)) for s, _ in pairs]
        mixed = sum(n * w for n, w in zip(noises, weights)) / math.sqrt(sum(w * w for w in weights))
        if cfg.shared_noise:  # slots are step-major (F frames at step 0, then F at step 1, ...)
            mixed = mixed.repeat_interleave(cfg.frame_buffer_size, dim=0)
        return mixed.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _expand(embeds: Tensor, slots: int) -> Tensor:
        return embeds.expand(slots, -1, -1).clone()

    def _require_prepared(self) -> StreamBatch:
        if self._batch is None:
            raise RuntimeError("call prepare(prompt=...) before streaming")
        return self._batch

    # ----- live controls ------------------------------------------------------------------------

    @torch.no_grad()
    def update_prompt(self, prompt: PromptLike, negative_prompt: str | None = None, *,
                      transition_frames: int = 0) -> None:
        """Change the prompt (any cfg_type), at once or blended over `transition_frames` frames."""
        self._require_prepared()
        target = self._with_style(self.prompts.encode_weighted(prompt, self.config.prompt_blend))
        if negative_prompt is not None:
            self._uncond.copy_(self._with_style(self.prompts.encode_negative(negative_prompt), True)
                               .expand_as(self._uncond))
        if transition_frames > 0:
            self._transition = Transition(self._cond[:1].clone(), target, transition_frames, self.config.prompt_blend)
        else:
            self._transition = None
            self._cond.copy_(target.expand_as(self._cond))
        self._recondition()

    def set_backend(self, *, denoiser: Denoiser | None = None, codec: LatentCodec | None = None) -> None:
        """Run the UNet and/or the codec through another backend (e.g. Core ML) from the next frame on."""
        if codec is not None:
            self.codec = codec
        if denoiser is not None:
            self.denoiser = denoiser

    @property
    def denoiser(self) -> Denoiser:
        """What runs the UNet; assigning another one takes effect from the next frame on, as set_backend does."""
        return self._denoiser

    @denoiser.setter
    def denoiser(self, denoiser: Denoiser) -> None:
        """Hand the new denoiser the IP-Adapter scale, the prepared stream batch and the prompts' conditioning."""
        self._denoiser = denoiser
        self._apply_ip_adapter_scale()
        if self._batch is not None:
            self._batch.use_denoiser(denoiser)
            self._recondition()

    def _recondition(self) -> None:
        """Hand the denoiser the prompts after they changed, for what it computes once per conditioning."""
        self._require_prepared().condition(self._cond, self._uncond)

    def set_seed(self, seed: SeedLike) -> None:
        """Redraw the fixed noise from a seed or a weighted blend of seeds [(seed, weight), ...]."""
        self._require_prepared().set_noise(self._draw_noise(seed))
        self._seed = seed

    def set_temporal(self, *, feedback: float | None = None, ema: float | None = None) -> None:
        changes = {k: v for k, v in (("feedback", feedback), ("ema", ema)) if v is not None}
        self.config = self.config.with_changes(**changes)

    def set_similarity_filter(self, threshold: float | None, max_skip: int = 10) -> None:
        """Enable (threshold in [0, 1]) or disable (None) the stochastic similarity filter."""
        self.config = self.config.with_changes(similarity_threshold=threshold, similarity_max_skip=max_skip)
        self._filter = self._make_filter(threshold, max_skip)

    def _make_filter(self, threshold: float | None, max_skip: int) -> SimilarityFilter | None:
        if threshold is None:
            return None
        return SimilarityFilter(threshold, max_skip, seed=self.config.seed)

    @property
    def similarity_filter(self) -> SimilarityFilter | None:
        """The similarity filter in use (None: off); a new one after set_similarity_filter."""
        return self._filter

    # ----- streaming ----------------------------------------------------------------------------

    @torch.no_grad()
    def img2img(self, image: Any, output_type: images.ImageKind | None = None) -> Any:
        """Stylize one frame (F frames with frame_buffer_size F); returns the frame leaving the stream."""
        batch = self._require_prepared()
        cfg = self.config
        pixels, kind = images.prepare_input(image, cfg.width, cfg.height, cfg.fit, self.device, self.dtype)
        if pixels.shape[0] != cfg.frame_buffer_size:
            raise ValueError(f"expected {cfg.frame_buffer_size} picture(s) per call (frame_buffer_size); "
                             f"got {pixels.shape[0]}")
        self._last_kind = kind
        self.stats.frames += 1
        if self._skip(pixels):
            return images.to_output(self._previous_output, output_type or kind)
        if self.control is not None:
            self.control.update(pixels)
        latent = self.codec.encode(pixels)  # (F, 4, h, w)
        self._last_latent = latent
        mixed = temporal.feedback(latent, self._previous_x0, cfg.feedback)
        x0 = self._advance(batch, batch.first_slot(mixed), mixed)
        return images.to_output(self._decode(x0), output_type or kind)

    @property
    def pipelines_frames(self) -> bool:
        """Whether img2img_pipelined overlaps one frame's device work with the host's work on its neighbours
        (an accelerated stream with captured steps); here it does not."""
        return False

    def img2img_pipelined(self, frames: Iterable[Any]) -> Iterator[Any]:
        """img2img(frame, output_type="np") for each frame in turn: the same pictures, in order.

        An accelerated stream launches each frame before it waits for the previous one's pictures, so the
        host's copies overlap the device's work; here each frame simply runs.
        """
        for image in frames:
            yield self.img2img(image, output_type="np")

    @torch.no_grad()
    def txt2img(self, output_type: images.ImageKind = "pil") -> Any:
        """One picture from the prompt, starting from the fixed noise (set_seed for another); a ControlNet steers
        it with the last control picture (set_control_image, or the last img2img frame's; black before any)."""
        batch = self._require_prepared()
        self.stats.frames += 1
        x0 = self._advance(batch, batch.noise[: self.config.frame_buffer_size], None)
        return images.to_output(self._decode(x0), output_type)

    @torch.no_grad()
    def flush(self, output_type: images.ImageKind | None = None) -> list[Any]:
        """Outputs of the frames still in flight (latency_frames of them), by repeating the last input."""
        batch = self._require_prepared()
        if self._last_latent is None or not self.config.use_denoising_batch:
            return []
        outputs = []
        for _ in range(self.config.latency_frames):
            x0 = self._advance(batch, batch.first_slot(self._last_latent), self._last_latent)
            outputs.append(images.to_output(self._decode(x0), output_type or self._last_kind))
        return outputs

    def _skip(self, pixels: Tensor) -> bool:
        if self._filter is None:
            return False
        return self._count_skip(self._filter, self._filter.should_skip(pixels))

    def _skip_measured(self, cosine: float | None) -> bool:
        """_skip for a cosine a device step measured against the filter's previous input."""
        if self._filter is None:
            return False
        return self._count_skip(self._filter, self._filter.decide(cosine))

    def _count_skip(self, flt: SimilarityFilter, decision: bool) -> bool:
        skip = decision and self._previous_output is not None
        self.stats.last_similarity = flt.last_similarity
        self.stats.skipped += int(skip)
        return skip

    def _advance(self, batch: StreamBatch, x_first: Tensor, fill: Tensor | None) -> Tensor:
        self._advance_prompt()
        x0 = batch.step(x_first, fill, self._cond, self._uncond)
        self._previous_x0 = x0
        self.stats.processed += 1
        return x0

    @property
    def prompt_changing(self) -> bool:
        """Whether a prompt transition is under way (each frame then conditions the denoiser again)."""
        return self._transition is not None

    def _advance_prompt(self) -> None:
        if self._transition is not None:
            self._cond.copy_(self._transition.advance().expand_as(self._cond))
            if self._transition.finished:
                self._transition = None
            self._recondition()

    def _decode(self, x0: Tensor) -> Tensor:
        pictures = images.postprocess(self.codec.decode(x0))
        pictures = temporal.ema(self._previous_output, pictures, self.config.ema)
        self._previous_output = pictures
        return pictures
