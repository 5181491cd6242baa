"""Schedules against the reference goldens (golden `schedules`, SPEC §2.3) and the per-step math (SPEC §2.4)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from lc_runtime.config import SchedulerConfig
from lc_runtime.sampling import (
    Schedule,
    apply_shift,
    cfg_zero,
    distill_sigmas,
    dit_timestep,
    enhance_hf_schedule,
    euler_step,
    make_schedule,
    refine_schedule,
    standard_sigmas,
)


@pytest.fixture(scope="module")
def shift(tiny_dir) -> float:
    return SchedulerConfig.from_json(tiny_dir / "scheduler" / "scheduler_config.json").shift


def _schedule_for(entry: dict, shift: float) -> Schedule:
    n = entry["num_inference_steps"]
    kind = entry["kind"]
    if kind == "standard":
        return make_schedule(n, shift)
    if kind == "distill":
        return make_schedule(n, shift, use_distill=True)
    if kind == "vc enhance_hf":
        return make_schedule(n, shift, enhance_hf=True)
    if kind == "refine t_thresh":
        return refine_schedule(n, shift, entry["t_thresh"])
    raise AssertionError(f"unknown golden schedule kind {kind!r}")


def test_every_golden_schedule_is_bit_exact(golden, shift):
    case = golden("schedules")
    assert shift == 12.0
    checked = 0
    for entry in case.meta["entries"]:
        p = entry["prefix"]
        sched = _schedule_for(entry, shift)
        assert len(sched) == entry["steps_run"], p
        # Bitwise: the schedules are built with the reference's exact sequence of fp32 operations.
        torch.testing.assert_close(sched.timesteps, case[f"{p}.timesteps"], rtol=0, atol=0, msg=f"{p}.timesteps")
        torch.testing.assert_close(sched.sigmas, case[f"{p}.sigmas"], rtol=0, atol=0, msg=f"{p}.sigmas")
        bf16 = dit_timestep(sched.timesteps, torch.bfloat16)
        assert bf16.dtype == torch.bfloat16
        torch.testing.assert_close(bf16.float(), case[f"{p}.timesteps_bf16"], rtol=0, atol=0, msg=f"{p} bf16")
        if f"{p}.sigmas_in" in case:
            n = entry["num_inference_steps"]
            sig_in = distill_sigmas(n) if entry["kind"] == "distill" else standard_sigmas(n)
            torch.testing.assert_close(sig_in, case[f"{p}.sigmas_in"], rtol=0, atol=0, msg=f"{p}.sigmas_in")
        checked += 1
    assert checked == 11


def test_spec_numbers(shift):
    # SPEC §2.3 / §0.8: refine at n=50 runs 5 steps; enhance_hf gives 56; distill 16 sigmas.
    refine = refine_schedule(50, shift, 0.5)
    assert_close(refine.timesteps, torch.tensor([500, 443.02, 343.47, 207.77, 11.87]), rtol=0, atol=6e-3)
    assert len(enhance_hf_schedule(50, shift)) == 56
    d16 = [1.00, 0.94, 0.88, 0.82, 0.76, 0.70, 0.64, 0.58, 0.50, 0.44, 0.38, 0.32, 0.26, 0.20, 0.14, 0.08]
    assert_close(distill_sigmas(16), torch.tensor(d16), rtol=0, atol=1e-7)
    assert dit_timestep(make_schedule(50, shift).timesteps, torch.bfloat16)[1].item() == 1000.0


def test_shift_one_is_identity():
    s = standard_sigmas(7)
    assert torch.equal(apply_shift(s, 1.0), s)
    assert len(refine_schedule(50, 1.0, 0.5)) == 26  # SPEC §2.3: with shift 1 the refine would be 26 steps


def test_refine_t_thresh_zero_keeps_full_schedule(shift):
    full = make_schedule(50, shift)
    zero = refine_schedule(50, shift, 0.0)
    assert torch.equal(zero.timesteps, full.timesteps) and torch.equal(zero.sigmas, full.sigmas)


def test_invalid_arguments(shift):
    with pytest.raises(ValueError, match="enhance_hf and use_distill"):
        make_schedule(16, shift, use_distill=True, enhance_hf=True)
    with pytest.raises(ValueError, match="positive integer"):
        make_schedule(0, shift)
    with pytest.raises(ValueError, match="shift"):
        make_schedule(8, 0.0)
    with pytest.raises(ValueError, match="t_thresh"):
        refine_schedule(50, shift, 1.5)
    with pytest.raises(ValueError, match=r"\[n\+1\]"):
        Schedule(timesteps=torch.ones(3), sigmas=torch.ones(3))


def test_schedule_is_frozen(shift):
    sched = make_schedule(4, shift)
    with pytest.raises(AttributeError):
        sched.timesteps = torch.zeros(4)


def _cfg_zero_by_hand(u: torch.Tensor, c: torch.Tensor, g: float) -> torch.Tensor:
    u64, c64 = u.double(), c.double()
    s = (u64 * c64).sum() / ((u64 * u64).sum() + 1e-8)
    return s * u64 + g * (c64 - s * u64)


def test_cfg_zero_matches_hand_formula():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(1, 4, 3, 5, 6, generator=gen)
    c = 0.7 * u + 0.3 * torch.randn(1, 4, 3, 5, 6, generator=gen)
    out = cfg_zero(u, c, 4.0)
    assert out.dtype == torch.float32 and out.shape == u.shape
    assert_close(out, _cfg_zero_by_hand(u, c, 4.0), rtol=1e-5, atol=1e-5, what="cfg_zero")
    # guidance 1 returns the conditional prediction whatever the scale; c == u gives s = 1 and returns u.
    assert_close(cfg_zero(u, c, 1.0), c, rtol=1e-6, atol=1e-6, what="g=1")
    assert_close(cfg_zero(u, u, 4.0), u, rtol=1e-5, atol=1e-6, what="c=u")


def test_cfg_zero_is_bitwise_the_reference_sequence_of_ops():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(1, 16, 3, 6, 8, generator=gen)
    c = torch.randn(1, 16, 3, 6, 8, generator=gen)
    # SPEC §2.4, op for op: per-sample [B, N] sums, scale viewed (B, 1, 1, 1), u*s formed twice.
    pos, neg = c.reshape(1, -1), u.reshape(1, -1)
    s = torch.sum(pos * neg, dim=1, keepdim=True) / (torch.sum(neg**2, dim=1, keepdim=True) + 1e-8)
    s = s.view(1, 1, 1, 1)
    ref = u * s + 4.0 * (c - u * s)
    assert torch.equal(cfg_zero(u, c, 4.0), ref)


def test_cfg_zero_upcasts_and_checks_shapes():
    u = torch.randn(1, 2, 2, 3, 3).bfloat16()
    assert cfg_zero(u, u, 3.0).dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        cfg_zero(u, u[:, :1], 3.0)


def test_euler_step_matches_hand_formula_and_dtype_rule():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 3, 3, generator=gen)
    v = torch.randn(1, 4, 2, 3, 3, generator=gen)
    sig, sig_next = torch.tensor(0.75), torch.tensor(0.5)
    out = euler_step(x, v, sig, sig_next)
    # x + (sigma_next - sigma) * (-v) = x + 0.25 v: moves toward the data direction v = x0 - eps.
    assert torch.equal(out, x + (sig_next - sig) * (-v))
    assert_close(out, x + 0.25 * v, rtol=0, atol=1e-6, what="euler")
    # Python-float sigmas give the same fp32 result.
    assert torch.equal(euler_step(x, v, 0.75, 0.5), out)
    # bf16 latents with an fp32 velocity come out fp32 (sample upcast, result cast to the model output dtype).
    assert euler_step(x.bfloat16(), v, sig, sig_next).dtype == torch.float32
    assert euler_step(x, v.bfloat16(), sig, sig_next).dtype == torch.bfloat16


def test_final_step_reaches_prediction_of_x0():
    # From sigma to 0, x_sigma = (1 - sigma) x0 + sigma * eps with the exact v = x0 - eps lands on x0.
    gen = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    sigma = 0.3
    x = (1 - sigma) * x0 + sigma * eps
    assert_close(euler_step(x, x0 - eps, sigma, 0.0), x0, rtol=0, atol=1e-6, what="x0")
