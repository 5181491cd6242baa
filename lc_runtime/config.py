"""Typed, frozen configs for every LongCat-Video component, read from the checkpoint's json files.

Each config validates itself in ``__post_init__`` and raises ``ValueError`` naming the field and the value.
Derived quantities (head_dim, SwiGLU width, RoPE split) are properties, never stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A checkpoint config file is missing, unreadable or holds an invalid value."""


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None


def _from_dict(cls, d: dict[str, Any], source: str):
    """Build a dataclass from a dict, ignoring keys the runtime does not use (e.g. `_class_name`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def _check_positive(obj, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be a positive integer, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class BSAParams:
    """Block-sparse attention parameters (SPEC §5)."""

    sparsity: float = 0.9375
    cdf_threshold: float | None = None
    chunk_3d_shape_q: tuple[int, int, int] = (4, 4, 4)
    chunk_3d_shape_k: tuple[int, int, int] = (4, 4, 4)

    def __post_init__(self):
        object.__setattr__(self, "chunk_3d_shape_q", tuple(self.chunk_3d_shape_q))
        object.__setattr__(self, "chunk_3d_shape_k", tuple(self.chunk_3d_shape_k))
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"BSAParams.sparsity must be in [0, 1), got {self.sparsity!r}")
        for name in ("chunk_3d_shape_q", "chunk_3d_shape_k"):
            v = getattr(self, name)
            if len(v) != 3 or any(int(c) <= 0 for c in v):
                raise ValueError(f"BSAParams.{name} must be three positive ints, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """`LongCatVideoTransformer3DModel` hyper-parameters (SPEC §1.1); field names follow dit/config.json."""

    in_channels: int = 16
    out_channels: int = 16
    hidden_size: int = 4096
    depth: int = 48
    num_heads: int = 32
    caption_channels: int = 4096
    mlp_ratio: float = 4
    adaln_tembed_dim: int = 512
    frequency_embedding_size: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_tokens_zero_pad: bool = False
    bsa_params: BSAParams = field(default_factory=BSAParams)

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if isinstance(self.bsa_params, dict) or self.bsa_params is None:
            object.__setattr__(self, "bsa_params", BSAParams(**(self.bsa_params or {})))
        _check_positive(
            self,
            "in_channels",
            "out_channels",
            "hidden_size",
            "depth",
            "num_heads",
            "caption_channels",
            "adaln_tembed_dim",
            "frequency_embedding_size",
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiTConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"DiTConfig head_dim = hidden_size/num_heads must be even and >= 6, got {self.head_dim}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or any(p <= 0 for p in self.patch_size):
            raise ValueError(
                f"DiTConfig.patch_size must be [1, ph, pw] (temporal patch 1), got {list(self.patch_size)}"
            )
        if self.frequency_embedding_size % 2:
            raise ValueError(f"DiTConfig.frequency_embedding_size must be even, got {self.frequency_embedding_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        """SwiGLU width: int(2*int(h*ratio)/3) rounded up to a multiple of 256 (4096 -> 11008)."""
        hidden = int(2 * int(self.hidden_size * self.mlp_ratio) / 3)
        return 256 * math.ceil(hidden / 256)

    @property
    def patch_channels(self) -> int:
        return self.out_channels * math.prod(self.patch_size)

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim split of 3-D RoPE into (t, h, w): D - 4*(D//6), 2*(D//6), 2*(D//6) (128 -> 44, 42, 42)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        return _from_dict(cls, read_json(Path(path)), str(path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Wan2.1 `AutoencoderKLWan` hyper-parameters (SPEC §9); field names follow vae/config.json."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3
    scale_factor_spatial: int = 8
    scale_factor_temporal: int = 4
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    is_residual: bool = False
    patch_size: int | None = None
    decoder_base_dim: int | None = None

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_positive(self, "base_dim", "z_dim", "num_res_blocks", "scale_factor_spatial", "scale_factor_temporal")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"VAEConfig.temperal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} entries, "
                f"got {list(self.temperal_downsample)}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(f"VAEConfig.{name} needs z_dim = {self.z_dim} values, got {len(getattr(self, name))}")
        if self.is_residual or self.patch_size not in (None, 1):
            raise ValueError("VAEConfig: only the Wan2.1 VAE (is_residual false, no patchify) is supported")

    @classmethod
    def from_json(cls, path: str | Path) -> VAEConfig:
        return _from_dict(cls, read_json(Path(path)), str(path))


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Flow-matching Euler scheduler settings (SPEC §3); only the static shift matters for LongCat."""

    num_train_timesteps: int = 1000
    shift: float = 12.0
    use_dynamic_shifting: bool = False
    invert_sigmas: bool = False

    def __post_init__(self):
        _check_positive(self, "num_train_timesteps")
        if self.shift <= 0:
            raise ValueError(f"SchedulerConfig.shift must be > 0, got {self.shift!r}")
        if self.use_dynamic_shifting or self.invert_sigmas:
            raise ValueError("SchedulerConfig: use_dynamic_shifting/invert_sigmas are not used by LongCat-Video")

    @classmethod
    def from_json(cls, path: str | Path) -> SchedulerConfig:
        return _from_dict(cls, read_json(Path(path)), str(path))


# Flavours: the real model and the in-process tiny debug model (same dims as tests/fixtures/tiny-longcat).
LONGCAT_13B = DiTConfig(text_tokens_zero_pad=True)
LONGCAT_TINY = DiTConfig(
    hidden_size=64,
    depth=2,
    num_heads=2,
    caption_channels=24,
    adaln_tembed_dim=32,
    text_tokens_zero_pad=True,
)
DIT_FLAVOURS = {"longcat-13b": LONGCAT_13B, "tiny": LONGCAT_TINY}
