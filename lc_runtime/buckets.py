"""Aspect-ratio resolution buckets of LongCat-Video (SPEC §2.10).

i2v and video continuation do not take a height/width: the conditioning image or video is stretched to the bucket
whose aspect ratio (``height / width``) is closest to its own. The tables are facts about the model (the sizes it
was trained at), so they are reproduced value for value; each maps a ratio key to ``(H, W)`` in pixels.

Which table is used depends on the resolution and on the spatial divisibility the DiT needs,
``scale_factor_spatial = 8 (VAE) * 2 (patch) * max(cp_split_hw)`` for i2v/vc and ``... * 4`` (BSA blocks) for
refinement; the F64/F128/F256 tables hold only sizes divisible by that factor. So the chosen size can change with the
number of GPUs, exactly as in the reference (e.g. refining 480x832 gives 704x1280 on one GPU, 768x1280 with cp=2).
"""

from __future__ import annotations

# --- 480p (about 0.4 Mpx per frame) -----------------------------------------------------------------------------
ASPECT_RATIO_627: dict[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.31": (352, 1120), "0.38": (384, 1024), "0.43": (416, 960),
    "0.52": (448, 864), "0.58": (480, 832), "0.67": (512, 768), "0.74": (544, 736),
    "0.86": (576, 672), "0.95": (608, 640), "1.05": (640, 608), "1.17": (672, 576),
    "1.29": (704, 544), "1.35": (736, 544), "1.50": (768, 512), "1.67": (800, 480),
    "1.73": (832, 480), "2.00": (896, 448), "2.31": (960, 416), "2.58": (992, 384),
    "2.75": (1056, 384), "3.09": (1088, 352), "3.70": (1184, 320), "3.80": (1216, 320),
    "3.90": (1248, 320), "4.00": (1280, 320),
}  # fmt: skip

ASPECT_RATIO_627_F64: dict[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768),
    "0.82": (576, 704), "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512),
    "1.86": (832, 448), "2.00": (896, 448), "2.50": (960, 384), "2.83": (1088, 384),
    "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
}  # fmt: skip

ASPECT_RATIO_627_F128: dict[str, tuple[int, int]] = {
    "0.25": (256, 1024), "0.38": (384, 1024), "0.43": (384, 896), "0.57": (512, 896),
    "0.67": (512, 768), "1.00": (640, 640), "1.50": (768, 512), "1.75": (896, 512),
    "2.33": (896, 384), "2.67": (1024, 384), "4.00": (1024, 256),
}  # fmt: skip

ASPECT_RATIO_627_F256: dict[str, tuple[int, int]] = {
    "0.25": (256, 1024), "0.33": (256, 768), "0.50": (256, 512), "0.67": (512, 768),
    "1.00": (512, 512), "1.50": (768, 512), "2.00": (512, 256), "3.00": (768, 256),
    "4.00": (1024, 256),
}  # fmt: skip

# --- 720p (about 0.9 Mpx per frame) -----------------------------------------------------------------------------
ASPECT_RATIO_960: dict[str, tuple[int, int]] = {
    "0.25": (480, 1920), "0.29": (512, 1792), "0.32": (544, 1696), "0.36": (576, 1600),
    "0.40": (608, 1504), "0.49": (672, 1376), "0.54": (704, 1312), "0.59": (736, 1248),
    "0.69": (800, 1152), "0.74": (832, 1120), "0.82": (864, 1056), "0.88": (896, 1024),
    "0.94": (928, 992), "1.00": (960, 960), "1.07": (992, 928), "1.14": (1024, 896),
    "1.22": (1056, 864), "1.31": (1088, 832), "1.35": (1120, 832), "1.44": (1152, 800),
    "1.70": (1248, 736), "2.00": (1344, 672), "2.05": (1376, 672), "2.47": (1504, 608),
    "2.53": (1536, 608), "2.83": (1632, 576), "3.06": (1664, 544), "3.12": (1696, 544),
    "3.62": (1856, 512), "3.93": (1888, 480), "4.00": (1920, 480),
}  # fmt: skip

ASPECT_RATIO_960_F64: dict[str, tuple[int, int]] = {
    "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
    "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
    "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
    "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
    "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
    "3.75": (1920, 512),
}  # fmt: skip

ASPECT_RATIO_960_F128: dict[str, tuple[int, int]] = {
    "0.20": (384, 1920), "0.27": (512, 1920), "0.33": (512, 1536), "0.42": (640, 1536),
    "0.50": (640, 1280), "0.60": (768, 1280), "0.67": (768, 1152), "0.78": (896, 1152),
    "1.00": (1024, 1024), "1.29": (1152, 896), "1.50": (1152, 768), "1.67": (1280, 768),
    "2.00": (1280, 640), "2.40": (1536, 640), "3.00": (1536, 512), "3.75": (1920, 512),
    "5.00": (1920, 384),
}  # fmt: skip

ASPECT_RATIO_960_F256: dict[str, tuple[int, int]] = {
    "0.33": (512, 1536), "0.60": (768, 1280), "1.00": (1024, 1024), "1.67": (1280, 768),
    "3.00": (1536, 512),
}  # fmt: skip

# resolution -> {scale_factor_spatial: table}; 16 and 32 share the base table (all its sizes are multiples of 32).
BUCKET_TABLES: dict[str, dict[int, dict[str, tuple[int, int]]]] = {
    "480p": {
        16: ASPECT_RATIO_627,
        32: ASPECT_RATIO_627,
        64: ASPECT_RATIO_627_F64,
        128: ASPECT_RATIO_627_F128,
        256: ASPECT_RATIO_627_F256,
    },
    "720p": {
        16: ASPECT_RATIO_960,
        32: ASPECT_RATIO_960,
        64: ASPECT_RATIO_960_F64,
        128: ASPECT_RATIO_960_F128,
        256: ASPECT_RATIO_960_F256,
    },
}


def get_bucket_table(resolution: str, scale_factor_spatial: int) -> dict[str, tuple[int, int]]:
    """The ``{ratio_key: (H, W)}`` table for ``resolution`` ("480p" / "720p") and the spatial factor (16..256)."""
    if resolution not in BUCKET_TABLES:
        raise ValueError(f"unknown resolution {resolution!r}: expected one of {sorted(BUCKET_TABLES)}")
    by_factor = BUCKET_TABLES[resolution]
    if scale_factor_spatial not in by_factor:
        raise ValueError(
            f"no {resolution} bucket table for scale_factor_spatial={scale_factor_spatial}: "
            f"expected one of {sorted(by_factor)} (8 * 2 * max(cp_split_hw), times 4 for refinement)"
        )
    return by_factor[scale_factor_spatial]


def get_condition_shape(height: int, width: int, resolution: str, scale_factor_spatial: int) -> tuple[int, int]:
    """Bucket ``(H, W)`` for a conditioning image/video of size ``height x width`` (pixels).

    Picks the key closest to ``height / width``; on a tie the earlier key of the table wins (the reference sorts the
    keys with a stable sort by distance), which ``min`` reproduces since it keeps the first minimum.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"condition size must be positive, got height={height}, width={width}")
    table = get_bucket_table(resolution, scale_factor_spatial)
    ratio = height / width
    key = min(table, key=lambda k: abs(float(k) - ratio))
    return table[key]
