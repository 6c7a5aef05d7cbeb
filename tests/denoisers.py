"""A denoiser that notes what a stream asks of it, for tests of handing a stream another denoiser."""

from __future__ import annotations

from torch import Tensor

from streamdiff.backends.torch import TorchDenoiser


class RecordingDenoiser(TorchDenoiser):
    """A TorchDenoiser whose `log` lists "condition" and "call" in the order the stream asked for them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log: list[str] = []

    def condition(self, timesteps: Tensor | None, embeddings: Tensor | None) -> None:
        self.log.append("condition")
        super().condition(timesteps, embeddings)

    def __call__(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        self.log.append("call")
        return super().__call__(latents, timesteps, embeddings)
