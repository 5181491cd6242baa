"""3-D rotary position embedding of LongCat's DiT (SPEC §1.8), pure PyTorch.

The head dim D is split into (t, h, w) parts of D-4*(D//6), 2*(D//6), 2*(D//6) dims; each axis has inverse
frequencies ``10000^(-2j/d)`` over integer positions, and the 128 angles of a token are the three axes'
angles, each repeated twice (interleaved pairs, GPT-J style). Tokens are in (t, h, w) raster order.

``t_offset`` shifts the temporal positions: the cached decode ropes its new tokens at t = nc..nc+T-1 while the
cache was roped once at t = 0..nc-1, which equals the original's re-roping of the whole cache every step.
"""

from __future__ import annotations

import functools

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def _axis_angles(n: int, dim: int, offset: int, device) -> torch.Tensor:
    # Exactly the reference's fp32 arithmetic: positions as fp32 integers, 1/(10000^(2j/d)) in fp32.
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    pos = torch.arange(offset, offset + n, device=device, dtype=torch.float32)
    return torch.outer(pos, inv_freq).repeat_interleave(2, dim=-1)  # [n, dim]


def rope_angles(grid: tuple[int, int, int], head_dim: int, *, t_offset: int = 0, device=None) -> torch.Tensor:
    """Angles [T*H*W, head_dim] (fp32) of the tokens of a (T, H, W) latent-token grid."""
    T, H, W = grid
    dt, dh, dw = rope_split(head_dim)
    at = _axis_angles(T, dt, t_offset, device)[:, None, None, :].expand(T, H, W, dt)
    ah = _axis_angles(H, dh, 0, device)[None, :, None, :].expand(T, H, W, dh)
    aw = _axis_angles(W, dw, 0, device)[None, None, :, :].expand(T, H, W, dw)
    return torch.cat([at, ah, aw], dim=-1).reshape(T * H * W, head_dim)


@functools.lru_cache(maxsize=32)
def _cos_sin_cached(grid, head_dim, t_offset, device_str):
    ang = rope_angles(grid, head_dim, t_offset=t_offset, device=torch.device(device_str))
    return ang.cos(), ang.sin()


def rope_cos_sin(
    grid: tuple[int, int, int], head_dim: int, *, t_offset: int = 0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [N, head_dim] fp32, cached per (grid, head_dim, offset, device) outside tracing."""
    grid = tuple(int(g) for g in grid)
    if torch.compiler.is_compiling():
        ang = rope_angles(grid, head_dim, t_offset=t_offset, device=device)
        return ang.cos(), ang.sin()
    return _cos_sin_cached(grid, head_dim, int(t_offset), str(torch.device(device or "cpu")))


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dim."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, N, D] by angles (cos, sin [N, D]); math in fp32, result in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_pairs(xf) * sin).to(x.dtype)
