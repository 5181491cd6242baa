"""lc-runtime: an inference runtime for LongCat-Video.

pipe = lc_runtime.Pipeline.from_pretrained(path_or_"tiny", device=..., dtype=...)
dit = lc_runtime.load_dit(path_to_dit_folder, device=..., dtype=...)
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402
from .models.dit import KVCache, LongCatDiT, TextContext, load_dit  # noqa: E402
from .pipeline import Output, Pipeline  # noqa: E402

__all__ = ["KVCache", "LongCatDiT", "Output", "Pipeline", "TextContext", "__version__", "load_dit", "ops"]
