"""Flow-matching sampling math as pure functions over tensors (SPEC §0, §2.3, §2.4, §3).

Nothing here holds per-step state: a :class:`Schedule` is a frozen pair of tensors built once per request, and the
denoise loop calls :func:`cfg_zero` and :func:`euler_step` with explicit sigmas. The numerics copy the reference
(diffusers ``FlowMatchEulerDiscreteScheduler`` as used by ``LongCatVideoPipeline``) operation for operation, so the
schedules are bit-identical to it:

* sigmas are built in fp32 torch, shifted in numpy float32 (as ``set_timesteps`` does), ``timesteps = sigmas * 1000``;
* the DiT sees the timestep rounded to its own dtype (bf16: 998.27 -> 1000), the Euler step uses the fp32 sigmas;
* the DiT predicts ``v = x0 - eps``; the reference negates it and takes a plain Euler step,
  ``x <- x + (sigma_next - sigma) * (-v)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# The distilled (cfg_step LoRA) schedule picks its sigmas from a fixed 50-point grid 1000/50 apart.
NUM_DISTILL_GRID_STEPS = 50
# enhance_hf (video continuation): below this timestep the schedule switches to uniform steps ...
ENHANCE_HF_TAIL_START = 500
# ... of this many points: linspace(500, 0, 10, endpoint=False) = 500, 450, ..., 50.
ENHANCE_HF_TAIL_STEPS = 10
# Additive guard of the CFG-Zero* scale denominator (reference value).
CFG_ZERO_EPS = 1e-8


# ---------------------------------------------------------------------------------------------- sigmas
def standard_sigmas(n: int) -> torch.Tensor:
    """Unshifted sigmas of the base model: ``linspace(1, 0.001, n)``, fp32 [n]."""
    _check_steps(n)
    # torch.linspace (not numpy) on purpose: the reference builds them in torch, and the two differ in the last ulp.
    return torch.linspace(1.0, 0.001, n, dtype=torch.float32)


def distill_sigmas(n: int) -> torch.Tensor:
    """Unshifted sigmas of the distilled schedule, fp32 [n].

    The grid is ``[1000, 980, ..., 20] / 1000``; step ``k`` takes grid point ``floor(k * 50 / n)``
    (n=16 -> 1.00, 0.94, 0.88, ..., 0.08).
    """
    _check_steps(n)
    stride = NUM_TRAIN_TIMESTEPS // NUM_DISTILL_GRID_STEPS
    grid = torch.arange(NUM_DISTILL_GRID_STEPS, 0, -1, dtype=torch.int64) * stride  # 1000, 980, ..., 20
    # The indices go through a float64 numpy linspace and floor, like the reference, so that a k*50/n landing a hair
    # under an integer rounds the same way it does there.
    idx = np.floor(np.linspace(0, NUM_DISTILL_GRID_STEPS, num=n, endpoint=False)).astype(np.int64)
    return grid[torch.from_numpy(idx)].to(torch.float32) / NUM_TRAIN_TIMESTEPS


def apply_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Static time shift ``shift * s / (1 + (shift - 1) * s)``, fp32 [n] -> fp32 [n].

    Evaluated in numpy float32 with the Python-float constants cast per operation, exactly as diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` does (``shift - 1`` is formed in float64 first).
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    s = sigmas.detach().cpu().numpy().astype(np.float32)
    numerator = np.float32(shift) * s
    denominator = np.float32(1.0) + np.float32(shift - 1.0) * s
    return torch.from_numpy(numerator / denominator)


# ---------------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """The timesteps a denoise loop iterates over and the sigmas its Euler steps use.

    ``timesteps``: fp32 [n], in [0, 1000], un-rounded (round with :func:`dit_timestep` for the DiT).
    ``sigmas``: fp32 [n + 1], ``sigmas[i]`` belongs to ``timesteps[i]``; the trailing entry is the terminal 0.
    Step ``i`` moves the latents from ``sigmas[i]`` to ``sigmas[i + 1]``.
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    def __post_init__(self):
        t, s = self.timesteps, self.sigmas
        if t.dtype != torch.float32 or s.dtype != torch.float32:
            raise ValueError(f"Schedule tensors must be float32, got timesteps {t.dtype}, sigmas {s.dtype}")
        if t.ndim != 1 or s.ndim != 1 or s.numel() != t.numel() + 1:
            raise ValueError(f"Schedule needs timesteps [n] and sigmas [n+1], got {list(t.shape)} and {list(s.shape)}")
        if s[-1].item() != 0.0:
            raise ValueError(f"Schedule sigmas must end with the terminal 0, got {s[-1].item()}")

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule on ``device`` (builders return CPU tensors)."""
        return Schedule(timesteps=self.timesteps.to(device), sigmas=self.sigmas.to(device))

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def __len__(self) -> int:
        return self.num_steps


def _with_terminal_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def _from_timesteps(timesteps: torch.Tensor) -> Schedule:
    """A schedule given by its timesteps, sigmas = t / 1000 (how the reference overrides the scheduler)."""
    return Schedule(timesteps=timesteps, sigmas=_with_terminal_zero(timesteps / NUM_TRAIN_TIMESTEPS))


def make_schedule(n: int, shift: float, use_distill: bool = False, *, enhance_hf: bool = False) -> Schedule:
    """The schedule of t2v / i2v / vc for ``n`` inference steps (SPEC §2.3).

    ``use_distill`` selects the distilled sigmas (cfg_step LoRA); ``enhance_hf`` (video continuation only) swaps the
    tail for uniform steps, see :func:`enhance_hf_schedule`. The two cannot be combined (the reference asserts).
    """
    if enhance_hf and use_distill:
        raise ValueError("enhance_hf and use_distill cannot both be set (the reference forbids the combination)")
    if enhance_hf:
        return enhance_hf_schedule(n, shift)
    sigmas = apply_shift(distill_sigmas(n) if use_distill else standard_sigmas(n), shift)
    # timesteps = sigmas * 1000 in fp32 torch, as set_timesteps computes them.
    return Schedule(timesteps=sigmas * NUM_TRAIN_TIMESTEPS, sigmas=_with_terminal_zero(sigmas))


def enhance_hf_schedule(n: int, shift: float) -> Schedule:
    """Video-continuation schedule with a uniform high-frequency tail: [t > 500 of the standard n-step schedule]
    ++ [500, 450, ..., 50]; sigmas = t / 1000 ++ [0]. n=50, shift 12 -> 46 + 10 = 56 steps."""
    head = make_schedule(n, shift).timesteps
    head = head[head > ENHANCE_HF_TAIL_START]
    tail = np.linspace(ENHANCE_HF_TAIL_START, 0, ENHANCE_HF_TAIL_STEPS, endpoint=False, dtype=np.float32)
    return _from_timesteps(torch.cat([head, torch.from_numpy(tail)]))


def refine_schedule(n: int, shift: float, t_thresh: float) -> Schedule:
    """Refinement schedule: the state starts at sigma = ``t_thresh``, so run [1000 * t_thresh] ++ [t < 1000 * t_thresh
    of the standard n-step schedule]; sigmas = t / 1000 ++ [0]. n=50, shift 12, t_thresh 0.5 -> 5 steps.

    ``t_thresh == 0`` keeps the full standard schedule, as in the reference (its ``if t_thresh:`` is falsy).
    """
    if not 0.0 <= t_thresh <= 1.0:
        raise ValueError(f"t_thresh must be in [0, 1], got {t_thresh!r}")
    full = make_schedule(n, shift)
    if not t_thresh:
        return full
    # 1000 * t_thresh is formed in float64 and then rounded to fp32, like the reference's torch.tensor(t * 1000).
    start = torch.tensor([t_thresh * NUM_TRAIN_TIMESTEPS], dtype=torch.float32)
    return _from_timesteps(torch.cat([start, full.timesteps[full.timesteps < start]]))


def dit_timestep(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The timestep as the DiT receives it: ``t`` cast to the DiT dtype (bf16 rounds 998.27 to 1000, SPEC §0.2).

    Any shape in, same shape out, in ``dtype``. The scheduler keeps using the un-rounded fp32 sigmas.
    """
    return t.to(dtype)


# ---------------------------------------------------------------------------------------------- per-step math
def cfg_zero(u: torch.Tensor, c: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG-Zero*-style guidance without zero-init (SPEC §2.4): ``v = s*u + g*(c - s*u)``, ``s = <c,u>/(|u|^2+1e-8)``.

    ``u``/``c``: the unconditional / conditional velocity, same shape (e.g. [1, C, T, H, W]); returns fp32, same shape.
    ``s`` is ONE scalar over every element of the flattened tensors, which is the reference's per-sample scale for
    batch 1 (the only batch size it supports: for B > 1 its broadcast is wrong, here the scale spans the batch).
    Computed in fp32 whatever the input dtype.
    """
    if u.shape != c.shape:
        raise ValueError(f"cfg_zero: uncond {list(u.shape)} and cond {list(c.shape)} must have the same shape")
    u = u.float()
    c = c.float()
    # Reductions over the [1, N] view along dim 1, the same call the reference makes, to keep its summation order.
    uf = u.reshape(1, -1)
    cf = c.reshape(1, -1)
    s = torch.sum(cf * uf, dim=1, keepdim=True) / (torch.sum(uf**2, dim=1, keepdim=True) + CFG_ZERO_EPS)
    s = s.reshape([1] * u.ndim)
    su = u * s
    return su + guidance * (c - su)


def euler_step(
    x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """One flow-matching Euler step from ``sigma`` to ``sigma_next``: ``x.float() + (sigma_next - sigma) * (-v)``.

    ``x``: latents (any dtype); ``v``: the DiT's velocity prediction (x0 - eps) of the same shape.
    Dtype rule of diffusers' ``step`` (which receives ``-v`` as ``model_output``): the update is computed with the
    sample upcast to fp32 and the result is cast to the dtype of the model output, i.e. ``v.dtype`` (fp32 in every
    LongCat path, so latents become fp32 after the first step). ``sigma_next - sigma`` is formed as an fp32 scalar
    tensor, as it is from the scheduler's fp32 sigma table.
    """
    if x.shape != v.shape:
        raise ValueError(f"euler_step: latents {list(x.shape)} and velocity {list(v.shape)} must have the same shape")
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    out = x.float() + (s_next - s) * (-v)
    return out.to(v.dtype)


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"number of inference steps must be a positive integer, got {n!r}")
