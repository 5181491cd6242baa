"""NVTX ranges for Nsight Systems (``--nvtx``): no-ops unless enabled.

    from lc_runtime.profiling import enable_nvtx, nvtx_range
    enable_nvtx()                      # or LC_RUNTIME_NVTX=1 in the environment
    with nvtx_range("vae decode"): ...

Ranges are pushed on the host when the code runs, so inside a captured CUDA graph they mark the capture, not
the replays: profile per-block ranges with the eager denoiser (``compile="none"``); a replayed step still shows
up as one "denoise step" range around its graph launch. bench/README.md has the nsys command.
"""

from __future__ import annotations

import contextlib
import os

import torch

_STATE = {"enabled": os.environ.get("LC_RUNTIME_NVTX", "0") not in ("", "0")}


def enable_nvtx(enabled: bool = True) -> None:
    """Turn NVTX ranges on (or off) process-wide."""
    _STATE["enabled"] = bool(enabled)


def nvtx_enabled() -> bool:
    return _STATE["enabled"] and torch.cuda.is_available()


@contextlib.contextmanager
def _range(name: str):
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def nvtx_range(name: str):
    """A context manager marking ``name`` on the NVTX timeline when enabled, else ``contextlib.nullcontext``
    (free, and transparent to torch.compile / torch.export)."""
    if not _STATE["enabled"] or torch.compiler.is_compiling() or not torch.cuda.is_available():
        return contextlib.nullcontext()
    return _range(name)
