"""What ``build-engines`` traces: one declarative spec per exported graph, the shape profiles, the wrapper
modules and the ONNX exporter. See :mod:`lc_runtime.export.specs` and :mod:`lc_runtime.export.profiles`."""

from __future__ import annotations

from .profiles import PROFILES, ProfileError, ShapeProfile, resolve_profile
from .specs import GraphSpec, TensorSpec, dit_graph_specs, text_encoder_graph_specs, vae_graph_specs

__all__ = [
    "PROFILES",
    "GraphSpec",
    "ProfileError",
    "ShapeProfile",
    "TensorSpec",
    "dit_graph_specs",
    "export_onnx",
    "resolve_profile",
    "text_encoder_graph_specs",
    "vae_graph_specs",
]


def __getattr__(name: str):
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
