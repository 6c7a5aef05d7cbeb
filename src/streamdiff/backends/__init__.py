"""Execution backends: the engine talks to a Denoiser and a LatentCodec, whatever runs them."""
