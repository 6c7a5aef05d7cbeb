"""Pure schedule math against diffusers' LCMScheduler and closed forms."""

from __future__ import annotations

import torch
from diffusers import LCMScheduler

from streamdiff.models.tiny import build_tiny_scheduler
from streamdiff.schedule import boundary_scalings, build_coefficients, lcm_timesteps, predict_x0


def test_timesteps_match_lcm_scheduler():
    config = dict(build_tiny_scheduler().config)
    for steps in (1, 4, 50):
        ours, _ = lcm_timesteps(config, steps)
        ref = LCMScheduler.from_config(config)
        ref.set_timesteps(steps)
        assert torch.equal(ours, ref.timesteps.long())
    assert lcm_timesteps(config, 50)[0][[0, 32, 45]].tolist() == [999, 359, 99]


def test_boundary_scalings_match_diffusers():
    scheduler = LCMScheduler.from_config(dict(build_tiny_scheduler().config))
    for t in (0, 1, 99, 359, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        assert abs(float(c_skip) - float(ref_skip)) < 1e-7 and abs(float(c_out) - float(ref_out)) < 1e-7
    c_skip, c_out = boundary_scalings(torch.tensor([0]))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0  # consistency at t=0 is the identity


def test_predict_x0_inverts_forward_noising_for_turbo_models():
    """With c_skip=0, c_out=1 and the true noise, the x0 prediction recovers the clean latent."""
    coeffs = build_coefficients(dict(build_tiny_scheduler().config), 50, (0, 25), 1, lcm_boundary=False)
    x0 = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    x_t = coeffs.alpha_sqrt * x0 + coeffs.beta_sqrt * noise
    torch.testing.assert_close(predict_x0(x_t, noise, coeffs), x0, atol=1e-4, rtol=1e-4)


def test_lcm_step_matches_scheduler_step():
    config = dict(build_tiny_scheduler().config)
    scheduler = LCMScheduler.from_config(config)
    scheduler.set_timesteps(1)
    t = int(scheduler.timesteps[0])
    coeffs = build_coefficients(config, 1, (0,), 1)
    sample, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    expected = scheduler.step(eps, t, sample, return_dict=True).denoised
    torch.testing.assert_close(predict_x0(sample, eps, coeffs), expected)


def test_slots_are_step_major_for_frame_buffers():
    coeffs = build_coefficients(dict(build_tiny_scheduler().config), 50, (10, 30), 3)
    assert coeffs.timesteps.tolist() == [799] * 3 + [399] * 3
    assert coeffs.alpha_sqrt.shape == (6, 1, 1, 1)
