"""Compiled engines: build (``build_engines``), describe (``Manifest``) and run (``load_engines``) them.

Backends: ``aoti`` (torch.export + AOTInductor, weights bound from the loaded model), ``onnx`` (opset 23, run
by onnxruntime) and ``tensorrt`` (ONNX -> strongly typed plan; tensorrt imported lazily). See docs/engines.md.
Heavy modules are imported on first use, so ``import lc_runtime.engines`` stays cheap.
"""

from __future__ import annotations

from .manifest import EngineError, EngineMismatchError, Manifest

__all__ = [
    "EngineDenoiser",
    "EngineError",
    "EngineMismatchError",
    "Engines",
    "Manifest",
    "build_engines",
    "build_engines_from_modules",
    "load_engines",
]


def __getattr__(name: str):
    if name in ("build_engines", "build_engines_from_modules"):
        from . import build

        return getattr(build, name)
    if name in ("load_engines", "EngineDenoiser", "Engines"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
