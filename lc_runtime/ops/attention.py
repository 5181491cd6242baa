"""Exact softmax attention used by the DiT, with the decode variant that attends to a shared prefix.

Layout everywhere: q, k, v are [B, H, S, D] ("HND"); softmax scale 1/sqrt(D); non-causal.

The original dispatches to FlashAttention; any exact softmax attention reproduces it (SPEC §1.1). The backend
is chosen once, by :func:`set_attention_backend` (the GPU-speed path registers faster ones); the default is
PyTorch's ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BACKEND = {"name": "sdpa"}


def set_attention_backend(name: str) -> None:
    if name not in ("sdpa", "math"):
        raise ValueError(f"unknown attention backend {name!r}; available: sdpa, math")
    _BACKEND["name"] = name


def attention_ref(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention in fp32; ``mask`` [B, Sk] bool (True = attend) or None."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def attention(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention [B, H, Sq, D]; ``mask`` [B, Sk] bool (True = attend) or None."""
    if _BACKEND["name"] == "math":
        return attention_ref(q, k, v, mask)
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def attention_lse(q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output [B, H, Sq, D] and its log-sum-exp [B, H, Sq] (fp32), no mask."""
    if q.device.type == "cpu" and _BACKEND["name"] != "math":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse.float()
    if q.device.type == "cuda" and _BACKEND["name"] != "math":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse.float()
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = s.logsumexp(-1)
    return ((s - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def prefix_attention(q, k, v, k_prefix, v_prefix) -> torch.Tensor:
    """Attention of q over [k_prefix ; k] without materialising the concatenation.

    q, k, v: [B, H, N, D]; k_prefix, v_prefix: [1, H, Np, D], shared by every batch row (the KV cache of the
    conditioning frames, built once at batch 1). The batch is folded into the query length for the prefix
    part (every row sees the same prefix keys), the two partial results are merged by their log-sum-exps.
    Equals ``attention(q, cat([k_prefix.expand(B), k]), cat([v_prefix.expand(B), v]))`` up to rounding.
    """
    B, H, N, D = q.shape
    q_fold = q.transpose(0, 1).reshape(1, H, B * N, D)
    o_p, lse_p = attention_lse(q_fold, k_prefix, v_prefix)
    o_p = o_p.reshape(H, B, N, D).transpose(0, 1)
    lse_p = lse_p.reshape(H, B, N).transpose(0, 1)
    o_n, lse_n = attention_lse(q, k, v)
    lse = torch.logaddexp(lse_p, lse_n)
    w_p = (lse_p - lse).exp()[..., None]
    w_n = (lse_n - lse).exp()[..., None]
    return (o_p.float() * w_p + o_n.float() * w_n).to(q.dtype)


def prefix_attention_ref(q, k, v, k_prefix, v_prefix) -> torch.Tensor:
    """Reference for :func:`prefix_attention`: concatenate the (batch-expanded) prefix and attend."""
    B = q.shape[0]
    kk = torch.cat([k_prefix.expand(B, -1, -1, -1), k], dim=2)
    vv = torch.cat([v_prefix.expand(B, -1, -1, -1), v], dim=2)
    return attention(q, kk, vv)
