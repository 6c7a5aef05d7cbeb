"""streamdiff: live picture streams stylized by one- and few-step diffusion models.

The engine imports no optional library (OpenCV, PyAV, web servers, CoreML) at package import.
"""

from .config import CfgType, StreamConfig
from .stream import StreamPipeline, StreamStats

__all__ = ["CfgType", "StreamConfig", "StreamPipeline", "StreamStats"]
__version__ = "0.1.0"
