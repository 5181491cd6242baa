"""Checkpoint layout and strict safetensors loading (SPEC §10), plus the original LoRA file format (SPEC §7).

Models are built on the ``meta`` device; every tensor is read from its shard straight onto the target device,
cast to the target dtype and assigned into the module, one tensor at a time, so no second full copy of the
model is ever held in CPU memory. Only safetensors are read: nothing is ever unpickled.

Module attribute names mirror the checkpoint keys, so the key map of the DiT is the identity; a component
whose names differ passes a ``key_map`` ``{checkpoint_key: module_key}`` (``{}`` placeholders allowed, see
:func:`expand_key_map`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint folder, shard or tensor does not match what the model expects."""


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class CheckpointLayout:
    """Paths inside a Hugging Face LongCat-Video folder (SPEC §10)."""

    root: Path

    @property
    def dit(self) -> Path:
        return self.root / "dit"

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def scheduler_config(self) -> Path:
        return self.root / "scheduler" / "scheduler_config.json"

    @property
    def cfg_step_lora(self) -> Path:
        return self.root / "lora" / "cfg_step_lora.safetensors"

    @property
    def refinement_lora(self) -> Path:
        return self.root / "lora" / "refinement_lora.safetensors"

    def check(self) -> None:
        """Raise a CheckpointError listing every missing required part of the folder."""
        if not self.root.is_dir():
            raise CheckpointError(f"model folder not found: {self.root}")
        required = [
            self.dit / "config.json",
            self.vae / "config.json",
            self.text_encoder / "config.json",
            self.tokenizer,
            self.scheduler_config,
        ]
        missing = [str(p.relative_to(self.root)) for p in required if not p.exists()]
        if missing:
            raise CheckpointError(
                f"{self.root} is not a LongCat-Video checkpoint folder: missing {', '.join(missing)} "
                "(expected the layout of meituan-longcat/LongCat-Video: dit/ vae/ text_encoder/ tokenizer/ "
                "scheduler/ lora/)"
            )


def shard_files(folder: Path, stem: str = "diffusion_pytorch_model") -> list[Path]:
    """The safetensors files of a component folder: from ``<stem>.safetensors.index.json`` if present,
    else the single ``<stem>.safetensors``, else every ``*.safetensors`` in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"component folder not found: {folder}")
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"corrupt shard index {index}: {e}") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shard index {index} names missing files: {', '.join(missing)}")
        return files
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"no safetensors weights in {folder} (pickle checkpoints are not read)")
    return found


def _open(path: Path, device: str = "cpu"):
    try:
        return safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e} (truncated or corrupt?)") from None


def iter_safetensors(
    files: list[Path], device: str = "cpu"
) -> Iterator[tuple[str, Path, Callable[[], torch.Tensor], list[int]]]:
    """Yield (key, file, load_fn, shape) for every tensor of every file, reading lazily."""
    for path in files:
        with _open(path, device) as f:
            for key in f.keys():
                shape = list(f.get_slice(key).get_shape())

                def load(f=f, key=key, path=path):
                    try:
                        return f.get_tensor(key)
                    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                        raise CheckpointError(f"cannot read tensor {key!r} from {path}: {e}") from None

                yield key, path, load, shape


def expand_key_map(template: dict[str, str], count_by_placeholder: int) -> dict[str, str]:
    """Expand ``{}`` layer placeholders: ``{"blocks.{}.x": "layers.{}.y"}`` -> one entry per layer."""
    out = {}
    for k, v in template.items():
        if "{}" in k:
            for i in range(count_by_placeholder):
                out[k.replace("{}", str(i))] = v.replace("{}", str(i))
        else:
            out[k] = v
    return out


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:  # pragma: no cover - guarded by the expected-key check
        raise CheckpointError(f"module has no tensor {name}")


def load_into(
    module: nn.Module,
    files: list[Path],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    key_map: dict[str, str] | None = None,
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    keep_dtype: Callable[[str], bool] | None = None,
) -> None:
    """Strictly load ``files`` into a (meta-built) ``module``.

    Every module parameter and buffer must be provided exactly once with its exact shape; any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` naming the key, the file and both shapes.
    ``key_map`` renames checkpoint keys; ``transforms`` maps a module key to a function applied to the
    loaded tensor; ``keep_dtype(key)`` True keeps a tensor in its file dtype (e.g. int buffers).
    """
    key_map = key_map or {}
    transforms = transforms or {}
    expected = {n: t for n, t in module.named_parameters()}
    expected.update({n: t for n, t in module.named_buffers()})
    seen: dict[str, Path] = {}
    device = torch.device(device)
    read_device = "cpu" if device.type == "meta" else str(device)
    for ckey, path, load, shape in iter_safetensors(files, read_device):
        key = key_map.get(ckey, ckey)
        if key not in expected:
            raise CheckpointError(f"unexpected key {ckey!r} in {path}: the model has no such tensor")
        if key in seen:
            raise CheckpointError(f"key {ckey!r} appears twice: in {seen[key]} and {path}")
        want = list(expected[key].shape)
        if key in transforms:
            tensor = transforms[key](load())
            shape = list(tensor.shape)
        else:
            tensor = None
        if shape != want:
            raise CheckpointError(
                f"shape mismatch for {ckey!r} in {path}: checkpoint has {shape}, model expects {want}"
            )
        if tensor is None:
            tensor = load()
        if dtype is not None and tensor.is_floating_point() and not (keep_dtype and keep_dtype(key)):
            tensor = tensor.to(dtype)
        _set_tensor(module, key, tensor.to(device))
        seen[key] = path
    missing = sorted(set(expected) - set(seen))
    if missing:
        names = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"missing keys in checkpoint {', '.join(str(f) for f in files)}: {names}")


def init_random_(module: nn.Module, *, seed: int = 0, device="cpu", dtype=torch.float32) -> nn.Module:
    """Materialise a (meta-built) module with deterministic random weights: the tiny debug model, and
    full-size speed work (timing does not depend on the values). Norm gains ~1, small biases, weights
    N(0, 1/fan_in), so activations stay O(1)."""
    g = torch.Generator("cpu").manual_seed(seed)
    for name, p in list(module.named_parameters()):
        shape = p.shape
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() <= 1 and ("norm" in name or leaf in ("gamma", "weight")):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif leaf == "bias" or p.dim() <= 1:
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        _set_tensor(module, name, t.to(device=device, dtype=dtype))
    for name, b in list(module.named_buffers()):
        if b.device.type == "meta":
            _set_tensor(module, name, torch.zeros(b.shape, device=device, dtype=dtype))
    return module


# ---------------------------------------------------------------------------------------------- LoRA
LORA_PREFIX = "lora___lorahyphen___"
LORA_SEP = "___lorahyphen___"
_LORA_KEY = re.compile(
    r"^(?P<module>[^.]+)\.(?P<rest>lora_down\.weight|lora_up\.weight|lora_up\.blocks\.(?P<j>\d+)\.weight|alpha_scale)$"
)


@dataclass(frozen=True)
class LoRAModule:
    """One LoRA target: ``delta(x) = concat_j(up_j @ down_j x) * alpha_scale``; ``down`` is [n*r, in]."""

    target: str  # module path, e.g. "blocks.0.attn.qkv"
    down: torch.Tensor  # [n*r, in]
    ups: tuple[torch.Tensor, ...]  # n tensors [out/n, r]
    alpha_scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0] // len(self.ups)

    def delta_weight(self) -> torch.Tensor:
        """The dense weight update [out, in] (fp32), block-diagonal over the n split blocks."""
        r = self.rank
        downs = self.down.float().split(r, dim=0)
        return torch.cat([u.float() @ d for u, d in zip(self.ups, downs)], dim=0) * self.alpha_scale


def read_lora_file(path: str | Path) -> dict[str, LoRAModule]:
    """Parse an original LongCat LoRA safetensors file into ``{module_path: LoRAModule}``.

    Names are ``lora___lorahyphen___`` + module path with ``.`` replaced by ``___lorahyphen___``; the
    up-projection is a single ``lora_up.weight`` or ``lora_up.blocks.{j}.weight`` for a split LoRA; the
    file's ``alpha_scale`` wins over any constructor default; the rank is inferred from the shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA file not found: {path}")
    parts: dict[str, dict] = {}
    with _open(path) as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if not m or not m["module"].startswith(LORA_PREFIX):
                raise CheckpointError(f"unexpected key {key!r} in LoRA file {path}")
            target = m["module"][len(LORA_PREFIX) :].replace(LORA_SEP, ".")
            entry = parts.setdefault(target, {"ups": {}})
            t = f.get_tensor(key)
            if m["rest"] == "lora_down.weight":
                entry["down"] = t
            elif m["rest"] == "alpha_scale":
                entry["alpha"] = float(t.float().item())
            elif m["j"] is not None:
                entry["ups"][int(m["j"])] = t
            else:
                entry["ups"][-1] = t
    out = {}
    for target, e in parts.items():
        if "down" not in e or not e["ups"] or "alpha" not in e:
            raise CheckpointError(f"LoRA file {path}: module {target} lacks lora_down, lora_up or alpha_scale")
        ups = tuple(e["ups"][j] for j in sorted(e["ups"]))
        n = len(ups)
        if e["down"].shape[0] % n or any(u.shape[1] != e["down"].shape[0] // n for u in ups):
            raise CheckpointError(
                f"LoRA file {path}: module {target} has inconsistent shapes: down {list(e['down'].shape)}, "
                f"ups {[list(u.shape) for u in ups]}"
            )
        out[target] = LoRAModule(target=target, down=e["down"], ups=ups, alpha_scale=e["alpha"])
    return out
