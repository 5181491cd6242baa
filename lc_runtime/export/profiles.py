"""Named shape profiles: the static shapes every exported graph is built for.

An engine is built for one output size (static shapes: AOTInductor, TensorRT and CUDA graphs are fastest with
fixed shapes, and LongCat runs a handful of sizes). A profile fixes, in pixels and frames, what the DiT, the VAE
and the text encoder see; everything else (latent grid, token counts) is derived:

    480p-93f      480 x 832, 93 frames   -> latents [B, 16, 24, 60, 104]; CFG batch 2;
                  forward graphs for t2v (0 conditioning latents) and i2v (1); prefill + cached decode for
                  video continuation: 13 conditioning frames = 4 cached latents + 20 noise latents.
    720p-refine   704 x 1280, 186 frames (93 doubled), padded up to 4k+1 = 189 -> latents [1, 16, 48, 88, 160]
                  (168,960 tokens); batch 1 (refinement runs without CFG); block-sparse attention on (as the
                  refinement runs); forward graphs for t2v refinement (0 conditioning latents) and video
                  continuation refinement (8: 26 conditioning frames, SPEC §2.8).
    HxWxF         a user-given size, e.g. ``480x832x93``: like 480p-93f (F must be 4k+1).

Options of any profile (``resolve_profile`` / ``build-engines`` flags): the DiT ``batch``, ``bsa`` (block-sparse
self-attention inside the forward graphs: aoti only; every self-attention call on more than one latent frame, as
``LongCatDiT.enable_bsa``) and ``cond_latents`` (which conditioned forward graphs). i2v refinement of a 93-frame
video has 52 latents, 4 of them conditioning: ``--profile 704x1280x205 --batch 1 --bsa --cond-latents 4
--graphs dit_forward_nc4``.

Frame padding: ``latent_frames = 1 + ceil((F - 1) / 4)``, which equals the VAE's ``1 + (F - 1) // 4`` for the 4k+1
frame counts the pipeline produces and pads the refine stage's 186 frames to 48 latents as the original does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

VAE_SPATIAL = 8  # Wan2.1 VAE: 8x spatial compression
VAE_TEMPORAL = 4  # ... and 4x temporal (1 + 4k frames -> 1 + k latents)
PATCH = 2  # DiT patch (1, 2, 2)
SIZE_MULTIPLE = VAE_SPATIAL * PATCH
TEXT_LENGTH = 512  # the text encoder pads every prompt to 512 tokens


class ProfileError(ValueError):
    """A shape profile that cannot be built (bad name, size, frame count or conditioning)."""


@dataclass(frozen=True, kw_only=True)
class ShapeProfile:
    """Static shapes of one engine build. All sizes in pixels / video frames; latents are derived."""

    name: str
    height: int
    width: int
    num_frames: int
    batch: int = 2  # DiT batch: 2 = [uncond; cond] with CFG, 1 = no CFG (distilled, refinement)
    cond_latents: tuple[int, ...] = (0, 1)  # one full/conditioned forward graph per count (t2v 0, i2v 1)
    cache_latents: int | None = 4  # prefill + cached decode graphs (vc: 13 frames -> 4 latents); None: none
    bsa: bool = False  # block-sparse self-attention in the DiT forward graphs (refinement; aoti engines only)

    def __post_init__(self):
        object.__setattr__(self, "cond_latents", tuple(int(c) for c in self.cond_latents))
        for field_name in ("height", "width"):
            v = getattr(self, field_name)
            if not isinstance(v, int) or v <= 0 or v % SIZE_MULTIPLE:
                raise ProfileError(
                    f"profile {self.name!r}: {field_name} {v} must be a positive multiple of {SIZE_MULTIPLE} "
                    f"(VAE {VAE_SPATIAL}x times DiT patch {PATCH}); e.g. {max(SIZE_MULTIPLE, _round(v))}"
                )
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ProfileError(f"profile {self.name!r}: num_frames must be a positive integer, got {self.num_frames!r}")
        if self.batch not in (1, 2):
            raise ProfileError(f"profile {self.name!r}: batch must be 1 (no CFG) or 2 (CFG), got {self.batch}")
        T = self.latent_frames
        bad = [c for c in self.cond_latents if not 0 <= c < T]
        if bad or len(set(self.cond_latents)) != len(self.cond_latents):
            raise ProfileError(
                f"profile {self.name!r}: conditioning latent counts {list(self.cond_latents)} must be distinct and in "
                f"[0, {T}) for {T} latent frames"
            )
        if self.cache_latents is not None and not 0 < self.cache_latents < T:
            raise ProfileError(
                f"profile {self.name!r}: cache_latents {self.cache_latents} must be in [1, {T}) for {T} latent frames"
            )

    # ------------------------------------------------------------------------------------------- derived
    @property
    def latent_frames(self) -> int:
        return 1 + math.ceil((self.num_frames - 1) / VAE_TEMPORAL)

    @property
    def latent_height(self) -> int:
        return self.height // VAE_SPATIAL

    @property
    def latent_width(self) -> int:
        return self.width // VAE_SPATIAL

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // PATCH) * (self.latent_width // PATCH)

    @property
    def tokens(self) -> int:
        return self.latent_frames * self.tokens_per_frame

    def latent_shape(self, frames: int | None = None, batch: int | None = None) -> tuple[int, int, int, int, int]:
        """[B, 16, T, h, w] of ``frames`` latent frames (default: all) at ``batch`` (default: the DiT batch)."""
        T = self.latent_frames if frames is None else frames
        B = self.batch if batch is None else batch
        return (B, 16, T, self.latent_height, self.latent_width)

    @classmethod
    def from_description(cls, d: dict) -> ShapeProfile:
        """Inverse of :meth:`describe` (derived entries ignored)."""
        keys = ("name", "height", "width", "num_frames", "batch", "cond_latents", "cache_latents")
        return cls(**{k: d[k] for k in keys}, bsa=bool(d.get("bsa", False)))  # manifests before bsa: dense

    def describe(self) -> dict:
        """JSON-able summary for manifests and logs."""
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "batch": self.batch,
            "cond_latents": list(self.cond_latents),
            "cache_latents": self.cache_latents,
            "bsa": self.bsa,
            "latent_shape": list(self.latent_shape()),
            "tokens": self.tokens,
        }


def _round(v) -> int:
    return SIZE_MULTIPLE * round(v / SIZE_MULTIPLE) if isinstance(v, int) else SIZE_MULTIPLE


PROFILES: dict[str, ShapeProfile] = {
    "480p-93f": ShapeProfile(name="480p-93f", height=480, width=832, num_frames=93),
    "720p-refine": ShapeProfile(
        name="720p-refine",
        height=704,
        width=1280,
        num_frames=186,
        batch=1,
        cond_latents=(0, 8),
        cache_latents=None,
        bsa=True,
    ),
}

_CUSTOM = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def resolve_profile(
    spec: str | ShapeProfile,
    *,
    batch: int | None = None,
    bsa: bool | None = None,
    cond_latents: tuple[int, ...] | None = None,
) -> ShapeProfile:
    """A named profile (``480p-93f``, ``720p-refine``) or a user-given ``HxWxF`` size, optionally with another
    batch, block-sparse attention on or off (``bsa``) or another set of conditioned forward graphs.

    User sizes need F = 4k+1 (what the pipeline generates); they get the 480p-93f graph set: forward graphs for
    0 and 1 conditioning latents, and prefill + cached decode with 4 cached latents when there are more than 4.
    """
    if isinstance(spec, ShapeProfile):
        profile = spec
    elif spec in PROFILES:
        profile = PROFILES[spec]
    else:
        m = _CUSTOM.match(str(spec).strip())
        if not m:
            raise ProfileError(
                f"unknown profile {spec!r}: use one of {', '.join(PROFILES)} or a size HxWxF such as 480x832x93"
            )
        h, w, f = (int(g) for g in m.groups())
        if f < 1 or (f - 1) % VAE_TEMPORAL:
            lo = 1 + (max(f, 1) - 1) // VAE_TEMPORAL * VAE_TEMPORAL
            raise ProfileError(
                f"profile {spec!r}: num_frames {f} must be 4k+1 (the pipeline rounds {f} down to {lo}); "
                f"use {lo} or {lo + VAE_TEMPORAL}"
            )
        T = 1 + (f - 1) // VAE_TEMPORAL
        profile = ShapeProfile(
            name=str(spec), height=h, width=w, num_frames=f, cond_latents=(0, 1) if T > 1 else (0,),
            cache_latents=4 if T > 4 else None,
        )  # fmt: skip
    changes = {"batch": batch, "bsa": bsa, "cond_latents": None if cond_latents is None else tuple(cond_latents)}
    changes = {k: v for k, v in changes.items() if v is not None and v != getattr(profile, k)}
    return replace(profile, **changes) if changes else profile
