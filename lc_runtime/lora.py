"""LoRA for the DiT in the original file format (SPEC §7): several named LoRAs, summed, merged or unmerged.

* **merged** (the fast default): each target weight becomes ``W + Σ m·α·ΔW`` (ΔW = up_j @ down_j per split
  block, computed in fp32, rounded once to the weight dtype). The untouched base weight of every merged module
  is kept on the CPU the first time it is changed, and restored bit-exactly when the LoRA set changes — no
  reload from disk, no drift.
* **unmerged** (the original's behaviour): adapters run beside the base linear,
  ``y = W x + b + Σ up(down(x in the weight dtype)) · m · α`` — inside fp32 islands the LoRA input is still
  rounded to the weight dtype first, then the matmuls run in fp32 (SPEC §7).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import CheckpointError, LoRAModule, read_lora_file


class Adapter(nn.Module):
    """An unmerged LoRA on one Linear: ``delta(x) = concat_j(up_j(down(x))_j) · multiplier · alpha``."""

    def __init__(self, lora: LoRAModule, multiplier: float, device, dtype):
        super().__init__()
        self.down = lora.down.to(device=device, dtype=dtype)
        self.ups = [u.to(device=device, dtype=dtype) for u in lora.ups]
        # the reference casts alpha_scale to the model dtype before multiplying
        self.scale = float(multiplier) * float(torch.tensor(lora.alpha_scale).to(dtype))

    def forward(self, x: torch.Tensor, *, fp32: bool, weight_dtype: torch.dtype) -> torch.Tensor:
        h = x.to(weight_dtype)
        down, ups = self.down, self.ups
        if fp32:
            h, down, ups = h.float(), down.float(), [u.float() for u in ups]
        pieces = F.linear(h, down).chunk(len(ups), dim=-1)
        out = torch.cat([F.linear(p, u) for p, u in zip(pieces, ups)], dim=-1)
        return out.to(x.dtype) * self.scale


class LoRAState:
    """Loaded LoRAs of one model and which of them are applied, and how."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.files: dict[str, dict[str, LoRAModule]] = {}
        self.active: dict[str, float] = {}
        self.merged = True
        self._base: dict[str, torch.Tensor] = {}  # module path -> original weight (CPU), for exact restore

    def load(self, path: str | Path, name: str) -> None:
        modules = read_lora_file(path)
        for target, lora in modules.items():
            self._check_target(path, target, lora)
        self.files[name] = modules

    def _check_target(self, path, target: str, lora: LoRAModule) -> None:
        try:
            layer = self.model.get_submodule(target)
        except AttributeError:
            raise CheckpointError(f"LoRA file {path} targets {target!r}, which the model does not have") from None
        if not hasattr(layer, "adapters"):
            raise CheckpointError(f"LoRA file {path} targets {target!r}, which is not a linear layer")
        out_f, in_f = layer.weight.shape
        lora_out = sum(u.shape[0] for u in lora.ups)
        if lora.down.shape[1] != in_f or lora_out != out_f:
            raise CheckpointError(
                f"LoRA file {path}: {target} maps {lora.down.shape[1]} -> {lora_out} features, "
                f"the layer maps {in_f} -> {out_f}"
            )

    def apply(self, loras: dict[str, float], *, merged: bool = True) -> None:
        unknown = sorted(set(loras) - set(self.files))
        if unknown:
            raise KeyError(f"LoRA(s) {unknown} not loaded; loaded: {sorted(self.files)}")
        self._clear()
        self.merged = merged
        for name, mult in loras.items():
            for target, lora in self.files[name].items():
                layer = self.model.get_submodule(target)
                if merged:
                    self._merge(target, layer, lora, mult)
                else:
                    layer.adapters.append(Adapter(lora, mult, layer.weight.device, layer.weight.dtype))
        self.active = dict(loras)

    @torch.no_grad()
    def _merge(self, target: str, layer, lora: LoRAModule, mult: float) -> None:
        w = layer.weight
        if target not in self._base:
            self._base[target] = w.detach().to("cpu", copy=True)
        delta = lora.delta_weight().to(w.device) * float(mult)
        w.copy_((w.float() + delta).to(w.dtype))

    @torch.no_grad()
    def _clear(self) -> None:
        """Restore every merged weight bit-exactly and drop every adapter."""
        for target, base in self._base.items():
            self.model.get_submodule(target).weight.copy_(base)
        for m in self.model.modules():
            if hasattr(m, "adapters"):
                m.adapters.clear()
        self.active = {}
