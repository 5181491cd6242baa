"""Exact softmax attention used by the DiT, with the decode variant that attends to a shared prefix.

Semantics everywhere: q, k, v are [B, H, S, D] ("HND" indexing), softmax scale 1/sqrt(D), non-causal. Any
strides are accepted as long as D is the unit-stride dim; the DiT's fast path hands in HND *views* of
[B, S, H, D]-contiguous storage ("NHD" memory), which is what FlashAttention-3 and PyTorch's flash/cuDNN kernels
read natively, so no backend below transposes or copies its inputs.

The original dispatches to FlashAttention; any exact softmax attention reproduces it (SPEC §1.1). Backends, best
first (``select_attention_backend`` picks the first one the device offers, once, at start; ``--attention``
overrides it):

=========== ==================================================================================================
``fa3``     FlashAttention-3 forward (the optional ``[fa3]`` extra: ``fa3-fwd`` imports as ``fa3_fwd_interface``;
            upstream builds as ``flash_attn_interface``); Hopper, bf16; returns the softmax LSE itself.
``cudnn``   PyTorch SDPA preferring cuDNN's fused attention (then flash, efficient, math where it cannot).
``flash``   PyTorch SDPA preferring its FlashAttention-2 kernel (then efficient, math).
``efficient`` PyTorch SDPA preferring the memory-efficient (xformers) kernel; also takes fp32.
``sdpa``    PyTorch SDPA with its own dispatch (the CPU default).
``math``    :func:`attention_ref`: fp32 matmul + softmax, materialises the S×S scores (tests, tiny shapes).
=========== ==================================================================================================

A backend that cannot take a call (a key mask, fp32 inputs for the half-only kernels, a CPU tensor) hands it to
``sdpa``; that choice depends on dtype/device/mask only, so it is fixed per traced graph. Log-sum-exps (the
cached decode) come from FA3 when selected, else from PyTorch's flash kernel (half dtypes) or the efficient one.

``prefix_attention`` (the cached decode) never concatenates the cache: the new queries attend to the shared
prefix (batch folded into the query length) and to the new keys in two calls, and the two partial results are
merged by their log-sum-exps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("fa3", "cudnn", "flash", "efficient", "sdpa", "math")
# PyTorch SDPA kernels in priority order: the named one first, PyTorch's own checks fall back down the list for a
# call it cannot take (e.g. cuDNN's layout/length constraints on the caption K/V), so no call ever fails.
_SDPA_ORDER = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
}
_HALF = (torch.bfloat16, torch.float16)
_BACKEND = {"name": "sdpa"}


# ---------------------------------------------------------------------------------------------- selection
_FA3: dict = {}  # {"module": the FA3 interface module or None}, filled on first probe


def fa3_interface():
    """The FlashAttention-3 Python module (``fa3_fwd_interface`` or ``flash_attn_interface``), or None."""
    if "module" not in _FA3:
        _FA3["module"] = None
        for name in ("fa3_fwd_interface", "flash_attn_interface"):
            try:
                mod = importlib.import_module(name)
            except Exception:  # a broken or CPU-only install counts as absent
                continue
            if hasattr(mod, "flash_attn_func"):
                from .registry import defer_module_ops

                defer_module_ops(mod)  # its op's first call would import torch._dynamo (seconds of a cold start)
                _FA3["module"] = mod
                break
    return _FA3["module"]


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable on ``device`` (default: CUDA when present), best first."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return ["sdpa", "math"]
    names = []
    major, _ = torch.cuda.get_device_capability(device)
    if major == 9 and fa3_interface() is not None:  # FA3's kernels are Hopper-only
        names.append("fa3")
    if torch.backends.cudnn.is_available() and major >= 8:
        names.append("cudnn")
    if major >= 8:
        names.append("flash")
    return names + ["efficient", "sdpa", "math"]


def set_attention_backend(name: str) -> None:
    """Use ``name`` for every later :func:`attention` / :func:`prefix_attention` call (process-wide)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}")
    if name == "fa3" and fa3_interface() is None:
        raise ValueError("attention backend 'fa3' needs FlashAttention-3: pip install 'lc-runtime[fa3]' (fa3-fwd)")
    _BACKEND["name"] = name


def get_attention_backend() -> str:
    return _BACKEND["name"]


def select_attention_backend(preferred: str | None = None, device: torch.device | str | None = None) -> str:
    """Pick the backend once: ``preferred`` if given (must be available on ``device``), else the best available.
    Sets it process-wide and returns its name."""
    names = available_backends(device)
    if preferred is not None:
        if preferred not in names:
            raise ValueError(f"attention backend {preferred!r} is not available here; available: {', '.join(names)}")
        name = preferred
    else:
        name = names[0]
    set_attention_backend(name)
    return name


# ---------------------------------------------------------------------------------------------- references
def attention_ref(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention in fp32; ``mask`` [B, Sk] bool (True = attend) or None."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def attention_lse_ref(q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`attention_lse` in fp32: (out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32)."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = s.logsumexp(-1)
    return ((s - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def merge_attention_ref(o_a, lse_a, o_b, lse_b) -> torch.Tensor:
    """Combine two attentions of the same queries over disjoint key sets by their log-sum-exps (fp32 math).

    o_a, o_b [B, H, S, D]; lse_a, lse_b [B, H, S] fp32. Returns [B, H, S, D] in o_a's dtype."""
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = (lse_a - lse).exp()[..., None]
    w_b = (lse_b - lse).exp()[..., None]
    return (o_a.float() * w_a + o_b.float() * w_b).to(o_a.dtype)


# ---------------------------------------------------------------------------------------------- backends
def _nhd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # [B, H, S, D] view <-> [B, S, H, D] view, no copy


def _fa3_ok(q: torch.Tensor, mask) -> bool:
    ok = mask is None and q.is_cuda and q.dtype == torch.bfloat16 and q.shape[-1] <= 256
    return ok and _FA3.get("module") is not None


def _sdpa_ok(name: str, q: torch.Tensor, mask) -> bool:
    if not q.is_cuda or mask is not None:
        return False
    return name == "efficient" or q.dtype in _HALF


def _sdpa(q, k, v, mask):
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def attention_with(name: str, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention through backend ``name``; q, k, v [B, H, S, D]; ``mask`` [B, Sk] bool or None."""
    if name == "math":
        return attention_ref(q, k, v, mask)
    if name == "fa3" and _fa3_ok(q, mask):
        fa3 = _FA3["module"]
        return _nhd(fa3.flash_attn_func(_nhd(q), _nhd(k), _nhd(v), softmax_scale=q.shape[-1] ** -0.5))
    if name in _SDPA_ORDER and _sdpa_ok(name, q, mask):
        with sdpa_kernel([*_SDPA_ORDER[name], SDPBackend.MATH], set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)
    return _sdpa(q, k, v, mask)


def _lse(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Backend LSEs to [B, H, Sq] fp32 (the efficient kernel pads Sq to a multiple of 32)."""
    B, H, S, _ = q.shape
    return lse.reshape(B, H, -1)[..., :S].float()


def attention_lse_with(name: str, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention [B, H, Sq, D] and its log-sum-exp [B, H, Sq] (fp32, natural log, of the scaled scores)."""
    scale = q.shape[-1] ** -0.5
    if name == "math":
        return attention_lse_ref(q, k, v)
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, _lse(lse, q)
    if name == "fa3" and _fa3_ok(q, None):
        fa3 = _FA3["module"]
        out, lse = fa3.flash_attn_func(_nhd(q), _nhd(k), _nhd(v), softmax_scale=scale, return_attn_probs=True)
        return _nhd(out), _lse(lse, q)
    if name != "efficient" and q.dtype in _HALF:  # any strides, any lengths, exact natural-log LSE
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[:2]
        return out, _lse(lse, q)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[:2]
    return out, _lse(lse, q)


def fold_batch(q: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [1, H, B·N, D] (rows b-major). A view when q is NHD in memory, else one copy."""
    B, H, N, D = q.shape
    return _nhd(_nhd(q).reshape(1, B * N, H, D))


def unfold_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`fold_batch` for [1, H, B·N, ...] -> [B, H, N, ...] (a view)."""
    _, H, BN, *rest = x.shape
    return x.reshape(H, batch, BN // batch, *rest).transpose(0, 1)


def prefix_attention_with(
    name: str, q, k, v, k_prefix, v_prefix, merge: Callable = merge_attention_ref
) -> torch.Tensor:
    """Attention of q over [k_prefix ; k] without materialising the concatenation (see module doc).

    q, k, v: [B, H, N, D]; k_prefix, v_prefix: [1, H, Np, D], shared by every batch row (the KV cache of the
    conditioning frames, built once at batch 1). ``merge`` combines the partial results (the fast path passes
    its Triton kernel). Equals ``attention(q, cat([k_prefix.expand(B), k]), cat([v_prefix.expand(B), v]))``
    up to rounding.
    """
    B = q.shape[0]
    o_p, lse_p = attention_lse_with(name, fold_batch(q), k_prefix, v_prefix)
    o_n, lse_n = attention_lse_with(name, q, k, v)
    return merge(unfold_batch(o_p, B), unfold_batch(lse_p, B), o_n, lse_n)


# ---------------------------------------------------------------------------------------------- public API
def attention(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention [B, H, Sq, D] with the selected backend; ``mask`` [B, Sk] bool (True = attend) or None."""
    return attention_with(_BACKEND["name"], q, k, v, mask)


def attention_lse(q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output [B, H, Sq, D] and its log-sum-exp [B, H, Sq] (fp32), no mask, selected backend."""
    return attention_lse_with(_BACKEND["name"], q, k, v)


def prefix_attention(q, k, v, k_prefix, v_prefix) -> torch.Tensor:
    """:func:`prefix_attention_with` on the selected backend, merged in PyTorch."""
    return prefix_attention_with(_BACKEND["name"], q, k, v, k_prefix, v_prefix)


def prefix_attention_ref(q, k, v, k_prefix, v_prefix) -> torch.Tensor:
    """Reference for :func:`prefix_attention`: concatenate the (batch-expanded) prefix and attend."""
    B = q.shape[0]
    kk = torch.cat([k_prefix.expand(B, -1, -1, -1), k], dim=2)
    vv = torch.cat([v_prefix.expand(B, -1, -1, -1), v], dim=2)
    return attention(q, kk, vv)
