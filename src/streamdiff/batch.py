"""The stream batch (StreamDiffusion, sec. 3.1): every in-flight denoising step in one denoiser call.

Slots are step-major: F = frame_buffer_size frames at step 0 (the newest input), F at step 1, ...
A frame entering at call k leaves at call k + n - 1. Unlike the reference implementation, the first
call fills the in-flight slots from the first frame (instead of all-zero latents), and F > 1 works
with any number of steps. All state lives in tensors updated in place, so one call can be replayed
as a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends.protocols import Denoiser
from .guidance import Guidance, next_residual
from .schedule import SlotCoefficients, add_noise, predict_x0


class StreamBatch:
    """Owns the fixed noise, the in-flight latents and the residual noise of one stream."""

    def __init__(
        self,
        denoiser: Denoiser,
        coeffs: SlotCoefficients,
        noise: Tensor,
        guidance: Guidance,
        frames: int,
        *,
        use_denoising_batch: bool = True,
        do_add_noise: bool = True,
    ):
        self.coeffs = coeffs  # per slot, (B, 1, 1, 1)
        self.noise = noise  # (B, 4, h, w), fixed for the stream's life
        self.guidance = guidance
        self.frames = frames
        self.steps = len(coeffs.timesteps) // frames
        self.use_denoising_batch = use_denoising_batch
        self.do_add_noise = do_add_noise
        self.alpha_next, self.beta_next = self._next_levels(coeffs)  # (B, 1, 1, 1) each
        self.in_flight = torch.zeros_like(noise[frames:])  # ((n-1) F, 4, h, w)
        self.stock = torch.zeros_like(noise)  # residual noise per slot
        self.filled = False
        self.use_denoiser(denoiser)

    def use_denoiser(self, denoiser: Denoiser) -> None:
        """Run the following calls through another denoiser (another backend of the same model)."""
        self.denoiser = denoiser
        # Denoisers that precompute from the timesteps and embeddings offer condition() and claim() (optional).
        self._condition = getattr(denoiser, "condition", None)
        self._claim = getattr(denoiser, "claim", None)

    def reset(self) -> None:
        """Forget the frames in flight; the next call fills the pipeline again.

        Buffers are cleared in place: a captured CUDA graph keeps reading the same addresses.
        """
        self.in_flight.zero_()
        self.stock.zero_()
        self.filled = False

    def _next_levels(self, coeffs: SlotCoefficients) -> tuple[Tensor, Tensor]:
        """Each slot's next noise level (alpha, beta), 1 after the last step."""
        ones = torch.ones_like(coeffs.alpha_sqrt[: self.frames])
        return torch.cat([coeffs.alpha_sqrt[self.frames :], ones]), torch.cat([coeffs.beta_sqrt[self.frames :], ones])

    def set_coefficients(self, coeffs: SlotCoefficients) -> None:
        """Move the stream to other timesteps with the same slots, in place (a captured step reads these tensors).

        Latents in flight and residual noise were computed for the old timesteps: where there are any, the
        stream fills again from its next frame, as a new stream would.
        """
        self.coeffs.copy_(coeffs)
        alpha_next, beta_next = self._next_levels(coeffs)
        self.alpha_next.copy_(alpha_next)
        self.beta_next.copy_(beta_next)
        if self.steps > 1 or self.guidance.tracks_residual:
            self.reset()

    @property
    def ready(self) -> bool:
        """Whether the next step takes no first-call branch (the in-flight slots are filled)."""
        return self.filled or not self.use_denoising_batch

    def set_noise(self, noise: Tensor) -> None:
        self.noise.copy_(noise)

    def condition(self, cond: Tensor, uncond: Tensor) -> None:
        """Tell the denoiser the timesteps and embeddings of every call from now on: call after cond or uncond
        (B, 77, D) changed. Steps run one by one call it with other ones per step, so they get none."""
        if self._condition is None:
            return
        if self.use_denoising_batch:
            self._condition(*self.guidance.conditioning(self.coeffs.timesteps, cond, uncond))
        else:
            self._condition(None, None)

    def claim_conditioning(self) -> None:
        """Before a replayed call (which runs no Python): make sure the denoiser's stored conditioning is this
        stream's, not that of another stream sharing its modules."""
        if self._claim is not None:
            self._claim()

    def first_slot(self, latent: Tensor) -> Tensor:
        """The new frame's latent noised to the first timestep (always with noise, as the reference)."""
        c = self.coeffs
        return add_noise(latent, self.noise[: self.frames], c.alpha_sqrt[: self.frames], c.beta_sqrt[: self.frames])

    def step(self, x_first: Tensor, fill_latent: Tensor | None, cond: Tensor, uncond: Tensor) -> Tensor:
        """Advance the stream by one call; returns x0 of the frames leaving it, (F, 4, h, w).

        x_first: the new frames at step 0; fill_latent: clean latent to fill empty slots from (None:
        pure noise, for txt2img); cond/uncond: text embeddings for all B slots.
        """
        if not self.use_denoising_batch:
            return self._sequential(x_first, cond, uncond)
        return self._batched(x_first, fill_latent, cond, uncond)

    def _batched(self, x_first: Tensor, fill_latent: Tensor | None, cond: Tensor, uncond: Tensor) -> Tensor:
        f, c = self.frames, self.coeffs
        if self.guidance.tracks_residual and self.steps > 1:
            # Each frame's residual moves one slot along with it; the new frame starts from its noise.
            self.stock.copy_(torch.cat([self.noise[:f], self.stock[:-f]]))
        if not self.filled:
            self._fill(fill_latent)
        x = torch.cat([x_first, self.in_flight]) if self.steps > 1 else x_first
        eps = self._guided_eps(x, c, self.guidance, self.stock, cond, uncond)
        x0 = predict_x0(x, eps, c)
        if self.guidance.tracks_residual:
            rolled = torch.cat([self.noise[f:], self.noise[:f]])
            self.stock.copy_(next_residual(eps, self.stock, c, rolled, self.alpha_next, self.beta_next))
        if self.steps == 1:
            return x0
        self.in_flight.copy_(self._renoise(x0[:-f], f, None))
        return x0[-f:]

    def _fill(self, fill_latent: Tensor | None) -> None:
        """Put the first frame into every in-flight slot, noised to that slot's step."""
        f = self.frames
        self.filled = True
        if self.steps == 1:
            return
        if fill_latent is None:
            self.in_flight.copy_(self.noise[f:])
        else:
            self.in_flight.copy_(self._renoise(fill_latent.repeat(self.steps - 1, 1, 1, 1), f, None))
        if self.guidance.tracks_residual:
            self.stock[f:].copy_(self.noise[f:])

    def _renoise(self, x0: Tensor, start: int, stop: int | None) -> Tensor:
        """x0 of slots [start, stop) moved to those slots' noise level with the fixed noise."""
        c = self.coeffs
        alpha = c.alpha_sqrt[start:stop]
        if not self.do_add_noise:
            return alpha * x0
        return add_noise(x0, self.noise[start:stop], alpha, c.beta_sqrt[start:stop])

    def _sequential(self, x: Tensor, cond: Tensor, uncond: Tensor) -> Tensor:
        """The same math one step at a time: the reference for the stream-batch property."""
        f = self.frames
        stock = self.noise[:f].clone()
        guidance = self.guidance
        for i in range(self.steps):
            c = self.coeffs.group(i, f)
            eps = self._guided_eps(x, c, guidance, stock, cond[:f], uncond[:f])
            x0 = predict_x0(x, eps, c)
            last = i == self.steps - 1
            nxt = slice(0, f) if last else slice((i + 1) * f, (i + 2) * f)
            if guidance.tracks_residual:
                stock = next_residual(eps, stock, c, self.noise[nxt], self.alpha_next[i * f : (i + 1) * f],
                                      self.beta_next[i * f : (i + 1) * f])
            if last:
                return x0
            x = self._renoise(x0, nxt.start, nxt.stop)
            guidance = guidance.later_steps()
        raise AssertionError("unreachable: at least one step")

    def _guided_eps(
        self, x: Tensor, c: SlotCoefficients, guidance: Guidance, stock: Tensor, cond: Tensor, uncond: Tensor
    ) -> Tensor:
        x_in, t_in, e_in = guidance.batch(x, c.timesteps, cond, uncond)
        return guidance.combine(self.denoiser(x_in, t_in, e_in), stock)

