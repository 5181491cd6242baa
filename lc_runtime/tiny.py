"""The embedded tiny model (``Pipeline.from_pretrained("tiny")``): every component of the real layout at toy
size with deterministic random weights, built in-process (no download). Same dimensions as the test fixture
``tests/fixtures/tiny-longcat``; its tokenizer ships in ``lc_runtime/assets/tiny``. Outputs are noise-like
videos: the point is exercising the real code paths end to end, fast, on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import LONGCAT_TINY, SchedulerConfig, VAEConfig
from .models.dit import LongCatDiT
from .weights import LoRAModule, init_random_

ASSETS = Path(__file__).parent / "assets" / "tiny"

# The Wan2.1 normalisation statistics (the real checkpoint's values) with the tiny VAE architecture.
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
              -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
             1.1253, 2.8251, 1.9160)  # fmt: skip
TINY_VAE = VAEConfig(
    base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=WAN21_MEAN, latents_std=WAN21_STD
)


def tiny_loras(dit: LongCatDiT, *, seed: int, refinement: bool, rank: int = 8) -> dict[str, LoRAModule]:
    """Random LoRA modules in the layout of the shipped files (SPEC §7): attn.qkv (n=3), attn.proj,
    cross_attn.q_linear, cross_attn.kv_linear (n=2), ffn.w1/w2/w3; the refinement LoRA also adapts the
    adaLN modulations (n=6, n=2) and final_layer.linear."""
    g = torch.Generator().manual_seed(seed)
    targets = {"attn.qkv": 3, "attn.proj": 1, "cross_attn.q_linear": 1, "cross_attn.kv_linear": 2}
    targets |= {"ffn.w1": 1, "ffn.w2": 1, "ffn.w3": 1}
    paths = {f"blocks.{i}.{t}": n for i in range(len(dit.blocks)) for t, n in targets.items()}
    if refinement:
        paths |= {f"blocks.{i}.adaLN_modulation.1": 6 for i in range(len(dit.blocks))}
        paths |= {"final_layer.adaLN_modulation.1": 2, "final_layer.linear": 1}
    out = {}
    for path, n in paths.items():
        out_f, in_f = dit.get_submodule(path).weight.shape
        down = torch.randn(n * rank, in_f, generator=g) / in_f**0.5
        ups = tuple(torch.randn(out_f // n, rank, generator=g) * 0.05 for _ in range(n))
        out[path] = LoRAModule(target=path, down=down, ups=ups, alpha_scale=0.5)
    return out


def build_tiny_components(device: torch.device, dtype: torch.dtype, seed: int = 1000) -> dict:
    """Keyword arguments of :class:`lc_runtime.Pipeline` for the tiny model."""
    from .models.text_encoder import TextEncoder
    from .models.vae import WanVAE

    dit = init_random_(LongCatDiT(LONGCAT_TINY), seed=seed + 3, device=device, dtype=dtype).eval()
    with torch.device("meta"):
        vae = WanVAE(TINY_VAE)
    vae = init_random_(vae, seed=seed + 2, device=device, dtype=dtype).eval()
    text = TextEncoder.random_tiny(ASSETS / "tokenizer", seed + 1, device=device, dtype=dtype)
    loras = {
        "cfg_step": tiny_loras(dit, seed=seed + 4, refinement=False),
        "refinement": tiny_loras(dit, seed=seed + 5, refinement=True),
    }
    return {"dit": dit, "vae": vae, "text_encoder": text, "scheduler": SchedulerConfig(), "loras": loras}
