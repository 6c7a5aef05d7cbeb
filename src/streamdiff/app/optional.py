"""Optional libraries of the app, imported when first needed, with a hint when they are missing."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from streamdiff.errors import UserError

# module -> (pip package, streamdiff extra)
PACKAGES: dict[str, tuple[str, str]] = {
    "cv2": ("opencv-python", "camera"),
    "av": ("av", "video"),
    "mss": ("mss", "camera"),
    "pyvirtualcam": ("pyvirtualcam", "camera"),
    "yaml": ("pyyaml", "camera"),
    "fastapi": ("fastapi", "web"),
    "uvicorn": ("uvicorn", "web"),
    "websockets": ("websockets", "web"),
    "aiortc": ("aiortc", "web"),
    "pythonosc": ("python-osc", "camera"),
    "mido": ("mido", "midi"),
    "rtmidi": ("python-rtmidi", "midi"),
    "NDIlib": ("ndi-python", "ndi"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or say, in one line, what to install for `purpose`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = PACKAGES[module]
        raise UserError(f"{purpose} needs {package}: pip install 'streamdiff[{extra}]' (or pip install "
                        f"{package})") from None


@functools.cache
def import_av() -> ModuleType:
    """PyAV, loaded after OpenCV where both are installed: PyAV's wheels bundle their own libxcb, and
    OpenCV's Qt window hangs at creation when that copy was loaded first. Looked up once: a video source
    asks for it at every frame, and where OpenCV is missing a failed import searches the whole import
    path again each time (a missing PyAV raises, and is not remembered)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        pass
    return require("av", "reading and writing video")
