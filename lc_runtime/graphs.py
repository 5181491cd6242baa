"""The denoise step as a CUDA graph: static buffers per shape bucket, warm-up, capture, replay (STYLE #4, #5).

:class:`GraphDenoiser` is a ``tasks.Denoiser`` — ``(latents, timestep, text_context, num_cond_latents, kv_cache)
-> velocity`` — so :func:`lc_runtime.tasks.denoise` runs it exactly like the eager one and never asks which it has.

Graph identity is explicit: a :class:`GraphKey` holds everything a captured graph depends on.

* Shapes and dtypes of the latents and timestep, ``num_cond_latents``, the text context's shapes: one bucket
  each. Inputs are copied into the bucket's static buffers before every replay.
* The caption's cross-attention K/V (a ``TextContext``, ~0.8 GB at batch 2) are copied into static buffers shared
  by every bucket of that text shape, only when a different context arrives (once per generation), so a new
  prompt replays the graphs already captured instead of capturing again.
* The KV cache of the cached decode (~5 GB at 480p) is read in place, not copied: the key holds its data
  pointers, so a new cache captures a new graph (once per generation; the oldest bucket is dropped past
  ``max_graphs``).
* The DiT's kernel table and LoRA state: merged LoRAs change weights in place (the graph sees them), unmerged
  adapters change the computation, so they are part of the key; so is the kernel table.

Every bucket's graph shares one memory pool (buckets are replayed one at a time on one stream) and the output
is cloned out of the pool, so nothing returned aliases graph memory. ``use_cuda_graph=False`` calls the DiT
eagerly (same results: tests/test_graphs.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from .models.dit import KVCache, LongCatDiT, TextContext
from .ops.rope import rope_cos_sin
from .profiling import nvtx_range


class Captured(NamedTuple):
    replay: Callable[[], None]  # runs the captured call again into ``out``
    out: torch.Tensor | tuple[torch.Tensor, ...]  # the static output buffer(s)
    first: torch.Tensor | tuple[torch.Tensor, ...] | None  # the warm-up's result for the captured inputs (None: none)


Capture = Callable[..., Captured]


@dataclass(frozen=True)
class GraphKey:
    latents: tuple[int, ...]  # [B, C, T, H, W]
    dtype: torch.dtype
    timestep: tuple[tuple[int, ...], torch.dtype]
    num_cond_latents: int
    text: tuple  # shapes of the text K/V and mask (copied into static buffers)
    kv_cache: tuple | None  # (shape, k pointer, v pointer): read in place
    model: tuple  # (kernel table, unmerged-LoRA signature)
    device: str


def _text_signature(text: TextContext) -> tuple:
    mask = None if text.mask is None else (tuple(text.mask.shape), text.mask.dtype)
    return tuple(text.k.shape), tuple(text.v.shape), text.k.dtype, mask


def _text_identity(text: TextContext) -> tuple:
    """Changes when a different context (or an in-place edit of it) arrives."""
    parts = [t for t in (text.k, text.v, text.mask) if t is not None]
    return tuple((t.data_ptr(), t._version) for t in parts)


def _model_signature(dit: LongCatDiT) -> tuple:
    lora = getattr(dit, "lora", None)
    unmerged = () if lora is None or lora.merged else tuple(sorted(lora.active.items()))
    return dit.kernels, unmerged


def graph_key(dit: LongCatDiT, latents, timestep, text: TextContext, num_cond_latents: int, kv_cache) -> GraphKey:
    """The bucket of one denoiser call (see the module doc for what is in it and why)."""
    kv = None
    if kv_cache is not None:
        kv = (tuple(kv_cache.k.shape), kv_cache.k.data_ptr(), kv_cache.v.data_ptr())
    return GraphKey(
        latents=tuple(latents.shape),
        dtype=latents.dtype,
        timestep=(tuple(timestep.shape), timestep.dtype),
        num_cond_latents=int(num_cond_latents),
        text=_text_signature(text),
        kv_cache=kv,
        model=_model_signature(dit),
        device=str(latents.device),
    )


def cuda_graph_capture(fn: Callable[[], torch.Tensor], *, warmup: int, pool) -> Captured:
    """Warm ``fn`` up on a side stream (Triton JIT, cuBLAS/cuDNN plans, RoPE tables, TensorRT contexts), then
    capture one call into ``pool``. Returns (replay, static output, the last warm-up's output or None): the warm-up
    computed this call's result already, so the caller returns it instead of replaying (the first step costs one
    forward, not two). ``fn`` returns a tensor or a tuple of tensors (engine graphs)."""
    first = None
    if warmup:
        main, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                first = fn()
        main.wait_stream(side)
        for t in first if isinstance(first, (tuple, list)) else (first,):
            t.record_stream(main)  # made on the side stream, read on the main one
        del side
    # The warm-up's activations sit in the caching allocator under the side stream, where neither the capture
    # (it allocates from the graph's private pool) nor any later allocation of the main stream can reuse them (a
    # whole forward's worth at 480p batch 2): hand them back before the capture reserves its own, so the two are
    # never reserved at once.
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    torch.cuda.empty_cache()
    return Captured(graph.replay, out, first)


def eager_capture(fn: Callable[[], torch.Tensor], *, warmup: int = 0, **_) -> Captured:
    """Stand-in for :func:`cuda_graph_capture` on any device: the same static-buffer protocol, run eagerly
    (exercises the bucket logic on CPU)."""
    first = None
    for _ in range(warmup):
        first = fn()
    out = fn()

    def replay():
        out.copy_(fn())

    return Captured(replay, out, first)


@dataclass
class _Bucket:
    latents: torch.Tensor
    timestep: torch.Tensor
    text: TextContext
    replay: Callable[[], None]
    out: torch.Tensor
    keep_alive: tuple  # tensors the graph reads that nothing else is guaranteed to hold (the RoPE tables)


class GraphDenoiser:
    """A ``tasks.Denoiser`` replaying one captured DiT forward per :class:`GraphKey`.

    ``use_cuda_graph``: None = on CUDA devices; False = plain eager DiT calls. ``warmup``: eager calls before each
    capture (the last one's result is the first call's: a new bucket costs one forward plus the capture).
    ``max_graphs``: buckets kept (least recently used dropped). ``capture``: the capture function
    (:func:`cuda_graph_capture`; tests pass :func:`eager_capture`).
    """

    def __init__(
        self,
        dit: LongCatDiT,
        *,
        use_cuda_graph: bool | None = None,
        warmup: int = 1,
        max_graphs: int = 4,
        capture: Capture | None = None,
    ):
        if use_cuda_graph is None:
            use_cuda_graph = dit.device.type == "cuda"
        if use_cuda_graph and capture is None and dit.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the DiT on a CUDA device, it is on {dit.device}")
        self.dit = dit
        self.use_cuda_graph = use_cuda_graph
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._capture = capture or cuda_graph_capture
        self._pool = torch.cuda.graph_pool_handle() if capture is None and use_cuda_graph else None
        self._buckets: OrderedDict[GraphKey, _Bucket] = OrderedDict()
        self._texts: dict[tuple, tuple[TextContext, tuple | None]] = {}  # signature -> (static buffers, source id)
        self._warmed: set[GraphKey] = set()  # buckets captured before (a re-capture after release() skips warm-up)
        self.captures = 0
        self.replays = 0

    @torch.no_grad()
    def __call__(self, latents, timestep, text: TextContext, num_cond_latents: int, kv_cache: KVCache | None):
        if not self.use_cuda_graph:
            return self._forward(latents, timestep, text, num_cond_latents, kv_cache)
        key = graph_key(self.dit, latents, timestep, text, num_cond_latents, kv_cache)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket, first = self._new_bucket(key, latents, timestep, text, num_cond_latents, kv_cache)
            if first is not None:  # the warm-up computed this call already
                return first
        else:
            self._buckets.move_to_end(key)
            bucket.latents.copy_(latents)
            bucket.timestep.copy_(timestep)
            self._bind_text(text)
        with nvtx_range("graph replay"):
            bucket.replay()
        self.replays += 1
        return bucket.out.clone()

    def release(self) -> None:
        """Give the graphs' memory back to the GPU (between generations, e.g. before the VAE decode): drop every
        graph and static buffer, start a fresh graph pool (a dropped pool is never captured into again) and empty
        the allocator's cache. The next call captures again, without the eager warm-up for a bucket captured
        before (kernels are compiled and tuned by then): about the CPU time of launching one forward."""
        if not self._buckets and not self._texts:
            return
        self._buckets.clear()
        self._texts.clear()
        if self._pool is not None:
            self._pool = torch.cuda.graph_pool_handle()
            torch.cuda.empty_cache()

    def _forward(self, latents, timestep, text, num_cond_latents, kv_cache):
        return self.dit(latents, timestep, text_context=text, num_cond_latents=num_cond_latents, kv_cache=kv_cache)

    def _bind_text(self, text: TextContext) -> TextContext:
        """The static copy of ``text`` (allocated per text shape; refilled when a different context arrives)."""
        sig = _text_signature(text)
        static, source = self._texts.get(sig, (None, None))
        if static is None:
            static = TextContext(*(None if t is None else torch.empty_like(t) for t in text))
        ident = _text_identity(text)
        if ident != source:
            for dst, src in zip(static, text):
                if src is not None:
                    dst.copy_(src)
        self._texts[sig] = (static, ident)
        return static

    def _new_bucket(self, key, latents, timestep, text, num_cond_latents, kv_cache) -> _Bucket:
        while len(self._buckets) >= self.max_graphs:
            self._buckets.popitem(last=False)
        static_latents, static_t = latents.clone(), timestep.clone()
        static_text = self._bind_text(text)
        # The forward takes its RoPE tables from rope_cos_sin's LRU cache; a captured graph reads them by address,
        # so hold them here: an eviction from the cache must not free memory a replay still reads.
        T, H, W = self.dit.grid(latents)
        offset = 0 if kv_cache is None else kv_cache.k.shape[3] // (H * W)
        tables = rope_cos_sin((T, H, W), self.dit.config.head_dim, t_offset=offset, device=latents.device)

        def step():
            return self._forward(static_latents, static_t, static_text, num_cond_latents, kv_cache)

        warm_key = replace(key, kv_cache=None if key.kv_cache is None else key.kv_cache[0])  # shapes, not pointers
        with nvtx_range("graph capture"):
            replay, out, first = self._capture(
                step, warmup=0 if warm_key in self._warmed else self.warmup, pool=self._pool
            )
        self._warmed.add(warm_key)
        self.captures += 1
        bucket = _Bucket(static_latents, static_t, static_text, replay, out, tables)
        self._buckets[key] = bucket
        return bucket, first
