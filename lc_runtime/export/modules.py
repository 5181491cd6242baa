"""Thin ``nn.Module`` wrappers that expose each exported graph as a ``forward`` of flat tensors.

Exporters trace ``forward(*tensors) -> tensor | tuple[tensor, ...]``. The models' graph entry points take
NamedTuples and Python flags (``prefill``, ``kv_cache=``, ``first=``); these wrappers fix the flags (static per
graph) and flatten the tuples, without copying or re-implementing any model code. Their parameter names are the
model's own with the wrapper's attribute as prefix (``dit.blocks.0.attn.qkv.weight``), which is how the AOTI
engines bind weights at load time (:mod:`lc_runtime.engines.aoti`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.dit import KVCache, TextContext


class DiTForward(nn.Module):
    """Full / conditioned forward: (latents, timestep [B, T], text_k, text_v[, text_mask]) -> velocity fp32."""

    def __init__(self, dit: nn.Module, num_cond_latents: int, masked: bool):
        super().__init__()
        self.dit, self.num_cond_latents, self.masked = dit, num_cond_latents, masked

    def forward(self, latents, timestep, text_k, text_v, *mask):
        text = TextContext(text_k, text_v, mask[0] if self.masked else None)
        return self.dit(latents, timestep, text_context=text, num_cond_latents=self.num_cond_latents)


class DiTPrefill(nn.Module):
    """Prefill of the conditioning latents [1, 16, nc, h, w] -> (cache_k, cache_v), each [depth, 1, H, Nc, D]."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, cond_latents):
        cache = self.dit.prefill(cond_latents)
        return cache.k, cache.v


class DiTDecode(nn.Module):
    """Cached decode: (latents, timestep, text_k, text_v[, text_mask], cache_k, cache_v) -> velocity fp32."""

    def __init__(self, dit: nn.Module, masked: bool):
        super().__init__()
        self.dit, self.masked = dit, masked

    def forward(self, latents, timestep, text_k, text_v, *rest):
        mask = rest[0] if self.masked else None
        cache_k, cache_v = rest[-2:]
        text = TextContext(text_k, text_v, mask)
        return self.dit(latents, timestep, text_context=text, kv_cache=KVCache(cache_k, cache_v))


class VAEEncodeChunk(nn.Module):
    """One encoder step: (video chunk [1, 3, 1|4, H, W], *cache) -> (moments [1, 32, 1, h, w], *cache')."""

    def __init__(self, vae: nn.Module, first: bool):
        super().__init__()
        self.vae, self.first = vae, first

    def forward(self, video, *cache):
        moments, new_cache = self.vae.encode_chunk(video, tuple(cache), first=self.first)
        return (moments, *new_cache)


class VAEDecodeFrame(nn.Module):
    """One decoder step: (latent frame [1, 16, 1, h, w], *cache) -> (frames [1, 3, 1|4, H, W], *cache')."""

    def __init__(self, vae: nn.Module, first: bool):
        super().__init__()
        self.vae, self.first = vae, first

    def forward(self, z, *cache):
        frames, new_cache = self.vae.decode_frame(z, tuple(cache), first=self.first)
        return (frames, *new_cache)


class TextEncoderGraph(nn.Module):
    """umT5 encoder: (input_ids [1, 512] int64, attention_mask [1, 512] int64) -> last hidden state [1, 512, d]."""

    def __init__(self, umt5: nn.Module):
        super().__init__()
        self.umt5 = umt5

    def forward(self, input_ids, attention_mask):
        return self.umt5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def unwrap_outputs(out) -> tuple[torch.Tensor, ...]:
    """A graph's result as a flat tuple (single-output graphs return a bare tensor)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
