"""Python side of the CUDA C++ ops in csrc/ (built by CMakeLists.txt into ``lc_ops.so``; see csrc/README.md).

The library registers ``torch.ops.lc_ops.*`` (schemas and CUDA kernels) when loaded; :func:`load_csrc_ops` then
adds the fake kernels (shape functions, symbolic-shape safe) that torch.export and AOTInductor trace with. Nothing
here is needed on a CPU machine, where the library does not exist and :func:`load_csrc_ops` returns False. Every
op has its PyTorch reference beside it: the DiT's own function.

    gated_residual_add(x, gate, y, frames)   == lc_runtime.models.dit.gated_add(x, gate, y, frames), bitwise
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.dit import gated_add as gated_residual_add_ref  # noqa: F401  (the reference, re-exported)

LIBRARY = "lc_ops.so"
_SEARCH = (
    Path(__file__).resolve().parent.parent / "lib",  # cmake --install DESTINATION lc_runtime/lib
    Path(__file__).resolve().parents[2] / "build",  # cmake -B build at the repository root
)


def library_path() -> Path | None:
    """``$LC_OPS_LIBRARY``, else the first ``lc_ops.so`` in lc_runtime/lib or build/."""
    env = os.environ.get("LC_OPS_LIBRARY")
    if env:
        return Path(env)
    return next((d / LIBRARY for d in _SEARCH if (d / LIBRARY).is_file()), None)


def load_csrc_ops(path: str | Path | None = None) -> bool:
    """Load the op library (idempotent); False when it was not built (CPU machines)."""
    if hasattr(torch.ops, "lc_ops") and hasattr(torch.ops.lc_ops, "gated_residual_add"):
        return True
    path = Path(path) if path is not None else library_path()
    if path is None or not path.is_file():
        return False
    torch.ops.load_library(str(path))
    torch.library.register_fake("lc_ops::gated_residual_add", _gated_residual_add_fake)
    return True


def _gated_residual_add_fake(x, gate, y, frames):
    torch._check(x.dim() == 3 and y.shape == x.shape and y.dtype == x.dtype, lambda: "y must match x [B, N, C]")
    torch._check(x.shape[1] % frames == 0, lambda: f"{x.shape[1]} tokens do not split into {frames} frames")
    torch._check(gate.dtype == torch.float32 and gate.numel() == x.shape[0] * frames * x.shape[2], lambda: "gate")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def gated_residual_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, frames: int) -> torch.Tensor:
    """``(x.float() + gate * y.float()).to(x.dtype)``; x, y [B, N, C], gate fp32 [B, frames, 1, C] (CUDA)."""
    return torch.ops.lc_ops.gated_residual_add(x, gate, y, frames)
