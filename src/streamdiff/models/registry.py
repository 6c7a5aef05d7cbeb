"""Named models and their abilities, stated per entry: nothing is guessed from a name or a path."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

Family = Literal["sd15", "sd21", "sdxl", "tiny"]
FAMILIES: tuple[str, ...] = ("sd15", "sd21", "sdxl", "tiny")

TURBO_T_INDEX: tuple[int, ...] = (0,)  # one step from timestep 999 of the 50-step LCM schedule
LCM_T_INDEX: tuple[int, ...] = (32, 45)  # StreamDiffusion's two-step LCM default: timesteps 359 and 99
LCM_LORA_SD15 = "latent-consistency/lcm-lora-sdv1-5"
LCM_LORA_SDXL = "latent-consistency/lcm-lora-sdxl"
TAESD_REPO = "madebyollin/taesd"  # one TAESD serves SD 1.x and 2.x latents alike
TAESDXL_REPO = "madebyollin/taesdxl"  # the same architecture trained on SDXL's latents


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about one model; every trait is stated, none inferred."""

    name: str  # registry key, or the path / hub id the user gave
    repo_id: str  # hub id of the diffusers pipeline; "" when built locally
    description: str
    # Text-encoder and latent family: sd15 (CLIP ViT-L, 768), sd21 (OpenCLIP ViT-H, 1024), sdxl (both CLIP ViT-L
    # and OpenCLIP ViT-bigG, 768 + 1280, with a pooled embedding and the picture's size as added conditions).
    family: Family
    resolution: int  # native square size in pixels
    t_index_list: tuple[int, ...]  # indices into the num_inference_steps LCM schedule
    num_inference_steps: int = 50
    lcm_boundary: bool = True  # LCM models: c_skip / c_out boundary scalings; turbo models: plain x0
    use_taesd: bool = True  # replace the model's VAE by TAESD unless asked otherwise
    taesd_repo: str = TAESD_REPO
    lora_repo: str | None = None  # LoRA fused into the UNet at load, e.g. LCM-LoRA
    cfg_type: str = "none"  # residual CFG mode (streamdiff.config.CfgType value) the model was distilled for
    guidance_scale: float = 1.0  # 1.0: classifier-free guidance has no effect
    fp16_variant: bool = False  # the repo ships "fp16" weight files, fetched when loading in half precision
    # Each weight folder of the repo holds one .safetensors file (an fp16 one too with fp16_variant), named as diffusers
    # saves them: what a load fetches is known without the hub, so a download hint can name just that.
    safetensors: bool = False
    local_builder: str | None = None  # "module:function" building the pipeline locally, without the hub

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if self.resolution <= 0 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8; got {self.resolution}")
        if not self.t_index_list or tuple(sorted(set(self.t_index_list))) != tuple(self.t_index_list):
            raise ValueError(f"t_index_list must be strictly increasing and non-empty; got {self.t_index_list}")
        if not 0 <= self.t_index_list[0] or self.t_index_list[-1] >= self.num_inference_steps:
            raise ValueError(
                f"t_index_list {self.t_index_list} must lie in [0, num_inference_steps={self.num_inference_steps})"
            )

    @property
    def default_steps(self) -> int:
        """Denoising steps per frame with the default schedule."""
        return len(self.t_index_list)

    @property
    def timesteps(self) -> tuple[int, ...]:
        """The default schedule's timesteps, as diffusers' LCMScheduler sets them for Stable Diffusion."""
        from diffusers import LCMScheduler

        scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        scheduler.set_timesteps(self.num_inference_steps)
        return tuple(int(scheduler.timesteps[i]) for i in self.t_index_list)

    def with_traits(self, **traits: Any) -> ModelSpec:
        """A copy with some traits changed (checked again), e.g. for a model outside the registry."""
        unknown = sorted(set(traits) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model traits {unknown}; known: {', '.join(self.__dataclass_fields__)}")
        return replace(self, **traits)

    def auxiliary_repos(self, taesd: bool | None = None) -> tuple[str, ...]:
        """Hub repos fetched besides the pipeline itself (TAESD, LoRA)."""
        use_taesd = self.use_taesd if taesd is None else taesd
        repos = (self.taesd_repo,) if use_taesd and not self.local_builder else ()
        return repos + ((self.lora_repo,) if self.lora_repo else ())


def _one_step(name: str, repo_id: str, description: str, family: Family, **traits: Any) -> ModelSpec:
    """A distilled one-step model at 512 px: timestep 999, x0 predicted without LCM's boundary scalings."""
    return ModelSpec(name=name, repo_id=repo_id, description=description, family=family, resolution=512,
                     t_index_list=TURBO_T_INDEX, lcm_boundary=False, **traits)


def _lcm_lora(name: str, repo_id: str, description: str, family: Family, lora_repo: str, *, resolution: int = 512,
              **traits: Any) -> ModelSpec:
    """A base model with an LCM-LoRA fused at load: two steps of the LCM schedule, with its boundary scalings."""
    return ModelSpec(name=name, repo_id=repo_id, description=description, family=family, resolution=resolution,
                     t_index_list=LCM_T_INDEX, lora_repo=lora_repo, **traits)


def _built_locally(name: str, description: str, builder: str) -> ModelSpec:
    """Tiny random components of a real layout, built by streamdiff.models.tiny's `builder` with no download."""
    return ModelSpec(name=name, repo_id="", description=description, family="tiny", resolution=64,
                     t_index_list=LCM_T_INDEX, local_builder=f"streamdiff.models.tiny:{builder}")


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _one_step("sdxs-512", "IDKiro/sdxs-512-0.9",
                  "SDXS-512 0.9: one-step distilled SD 2.1-base, small UNet without a middle stage", "sd21"),
        _one_step("sd-turbo", "stabilityai/sd-turbo", "SD-Turbo: adversarially distilled SD 2.1, one to four steps",
                  "sd21", fp16_variant=True, safetensors=True),
        _one_step("sdxl-turbo", "stabilityai/sdxl-turbo",
                  "SDXL-Turbo: adversarially distilled SDXL 1.0, one to four steps at 512 px", "sdxl",
                  taesd_repo=TAESDXL_REPO, fp16_variant=True, safetensors=True),
        _lcm_lora("sdxl-lcm", "stabilityai/stable-diffusion-xl-base-1.0",
                  "SDXL 1.0 with LCM-LoRA fused, two steps at 1024 px", "sdxl", LCM_LORA_SDXL, resolution=1024,
                  taesd_repo=TAESDXL_REPO, fp16_variant=True, safetensors=True),
        _lcm_lora("sd15-lcm", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  "Stable Diffusion 1.5 with LCM-LoRA fused, two steps", "sd15", LCM_LORA_SD15, fp16_variant=True,
                  safetensors=True),
        _lcm_lora("tiny-sd", "segmind/tiny-sd", "Segmind tiny-sd (distilled SD 1.5) with LCM-LoRA fused, two steps",
                  "sd15", LCM_LORA_SD15),
        _built_locally("tiny", "random-weight tiny components, built locally: meaningless pictures, for tests only",
                       "build_tiny_pipeline"),
        _built_locally("tiny-sdxl", "random-weight tiny SDXL components, built locally: meaningless pictures, for "
                       "tests only", "build_tiny_sdxl_pipeline"),
    )
}

DEFAULT_MODEL = "sdxs-512"


def get_spec(name: str) -> ModelSpec:
    """The registry entry called `name`; ValueError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(REGISTRY)}") from None
