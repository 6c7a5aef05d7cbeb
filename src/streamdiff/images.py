"""Picture conversion and validation: float tensors, uint8 numpy arrays and PIL images in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ImageKind = Literal["pt", "np", "pil"]
KINDS: tuple[str, ...] = ("pt", "np", "pil")


def kind_of(image: Any) -> ImageKind:
    if isinstance(image, Tensor):
        return "pt"
    if isinstance(image, np.ndarray):
        return "np"
    if _is_pil(image) or (isinstance(image, (list, tuple)) and image and all(_is_pil(i) for i in image)):
        return "pil"
    raise ValueError(
        "expected a float tensor (B, 3, H, W) in [0, 1], a uint8 numpy array (H, W, 3) RGB, or a PIL image; "
        f"got {type(image).__name__}"
    )


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(image, Image.Image)


def to_uint8_tensor(image: Any) -> Tensor:
    """Any accepted picture as a uint8 or float tensor (B, 3, H, W) on its own device, validated."""
    kind = kind_of(image)
    if kind == "np":
        return _numpy_to_tensor(image)
    if kind == "pil":
        images = image if isinstance(image, (list, tuple)) else [image]
        return torch.stack([torch.from_numpy(np.array(i.convert("RGB"))).permute(2, 0, 1) for i in images])
    return _check_float_tensor(image)


def read_picture(path: str | Path, role: str = "picture") -> Any:
    """A picture file as an RGB PIL image; FileNotFoundError or ValueError naming `role` otherwise."""
    from PIL import Image, UnidentifiedImageError

    source = Path(path)
    if source.is_dir():
        raise ValueError(f"{role} {source} is a folder; expected a picture file (PNG, JPEG, ...)")
    if not source.is_file():
        raise FileNotFoundError(f"{role} not found: {source}")
    try:
        with Image.open(source) as picture:
            return picture.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read {source} as a picture ({exc})") from None


def _numpy_to_tensor(array: np.ndarray) -> Tensor:
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array (H, W, 3) RGB; got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"expected a numpy array of shape (H, W, 3) or (B, H, W, 3); got {array.shape}")
    if array.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels (RGB) in the last axis; got shape {array.shape}")
    if not array.flags.writeable:  # torch warns when it shares read-only memory (np.frombuffer, some decoders)
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def _check_float_tensor(tensor: Tensor) -> Tensor:
    if not tensor.is_floating_point():
        raise ValueError(f"expected a float tensor (B, 3, H, W) in [0, 1]; got dtype {tensor.dtype}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise ValueError(f"expected a tensor of shape (B, 3, H, W); got {tuple(tensor.shape)}")
    if tensor.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels (RGB) in dim 1; got shape {tuple(tensor.shape)}")
    # One read-back for all three checks: on a GPU each separate read would wait for the device.
    finite, low, high = torch.stack([torch.isfinite(tensor).all().to(tensor.dtype), tensor.min(), tensor.max()]).tolist()
    if not finite:
        raise ValueError("the image tensor holds NaN or infinite values; expected finite values in [0, 1]")
    if low < 0.0 or high > 1.0:
        raise ValueError(f"expected tensor values in [0, 1]; got the range [{low:.3g}, {high:.3g}]")
    return tensor


def fit_size(images: Tensor, width: int, height: int, fit: str) -> Tensor:
    """Bring (B, 3, h, w) float pictures to (B, 3, height, width) as `fit` says, or refuse."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if fit == "exact":
        raise ValueError(
            f"expected a {width}x{height} picture (width x height) with fit 'exact'; got {w}x{h} (fit 'crop', 'pad' or "
            "'stretch' adapts other sizes)"
        )
    if fit == "crop":
        scale = max(width / w, height / h)
        images = _resize(images, max(height, round(h * scale)), max(width, round(w * scale)))
        top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
        return images[..., top : top + height, left : left + width]
    if fit == "pad":
        scale = min(width / w, height / h)
        inner = _resize(images, max(1, round(h * scale)), max(1, round(w * scale)))
        out = images.new_zeros(images.shape[0], 3, height, width)
        top, left = (height - inner.shape[-2]) // 2, (width - inner.shape[-1]) // 2
        out[..., top : top + inner.shape[-2], left : left + inner.shape[-1]] = inner
        return out
    return _resize(images, height, width)


def _resize(images: Tensor, height: int, width: int) -> Tensor:
    if images.shape[-2:] == (height, width):
        return images
    antialias = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)


def prepare_input(
    image: Any, width: int, height: int, fit: str, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, ImageKind]:
    """Validated pictures as a (B, 3, height, width) tensor in [-1, 1] on the engine's device."""
    kind = kind_of(image)
    return to_model_pixels(to_uint8_tensor(image).to(device, non_blocking=True), width, height, fit, dtype), kind


def to_model_pixels(pixels: Tensor, width: int, height: int, fit: str, dtype: torch.dtype) -> Tensor:
    """uint8 or [0, 1] float pictures (B, 3, h, w) to (B, 3, height, width) in [-1, 1], with no host sync."""
    pixels = pixels.to(torch.float32) / 255.0 if pixels.dtype == torch.uint8 else pixels.to(torch.float32)
    return (fit_size(pixels, width, height, fit) * 2.0 - 1.0).to(dtype)


def postprocess(decoded: Tensor) -> Tensor:
    """Decoder output in [-1, 1] to pictures in [0, 1]."""
    return (decoded / 2.0 + 0.5).clamp(0.0, 1.0)


def to_uint8_hwc(pictures: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] to uint8 (B, H, W, 3) on the same device."""
    return (pictures.float() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_output(pictures: Tensor, kind: ImageKind) -> Any:
    """(B, 3, H, W) in [0, 1] as the kind asked for; a batch of one becomes a single numpy/PIL picture."""
    if kind not in KINDS:
        raise ValueError(f"output_type must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "pt":
        return pictures.float()
    return host_output(to_uint8_hwc(pictures).cpu().numpy(), kind)


def host_output(array: np.ndarray, kind: ImageKind) -> Any:
    """uint8 (B, H, W, 3) pictures on the host as numpy ("np") or PIL ("pil"); a batch of one becomes one picture."""
    if kind == "np":
        return array[0] if len(array) == 1 else array
    from PIL import Image

    images = [Image.fromarray(a) for a in array]
    return images[0] if len(images) == 1 else images
