"""Loading built engines and running them: :func:`load_engines`, :class:`EngineDenoiser`, :class:`StaticGraph`.

    engines = load_engines("engines/480p", modules={"dit": pipe.dit}, model_dir="path/to/LongCat-Video")
    denoise = engines.denoiser()          # a tasks.Denoiser: (latents, timestep, text, nc, kv_cache) -> v
    kv = engines.prefill(cond_latents)    # KVCache from the dit_prefill graph
    pipe.denoiser = engines_for_pipeline(pipe, "engines/480p", model_dir=...).denoiser()   # lc-runtime run --engines

``load_engines`` reads the manifest and refuses a stale or mismatched folder before touching any artefact
(:meth:`Manifest.check`). Each graph becomes a callable ``graph(*inputs) -> tuple[outputs]`` whose inputs are
checked against the shapes it was built for; on CUDA it is wrapped in a :class:`StaticGraph` that captures it
into a CUDA graph on first use and replays it from static buffers afterwards (STYLE #5; ``use_cuda_graph=False``
runs the engine directly, and gives the same numbers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..export.profiles import ShapeProfile
from ..export.specs import GraphSpec
from ..graphs import cuda_graph_capture
from ..models.dit import KVCache, TextContext
from .manifest import EngineError, EngineMismatchError, Manifest

Graph = Callable[..., tuple[torch.Tensor, ...]]


class EngineShapeError(EngineError):
    """A call whose shapes or dtypes differ from the ones the engine was built for."""


# ---------------------------------------------------------------------------------------------- CUDA graphs
class StaticGraph:
    """Replays ``fn`` (fixed shapes) as a CUDA graph: inputs are copied into static buffers, the graph is
    captured on the first call by :func:`lc_runtime.graphs.cuda_graph_capture` (as the fast path's graphs: ``warmup``
    eager runs on a side stream, the last of which is that call's result) and replayed afterwards.

    Outputs are cloned, so a result stays valid after the next replay, and the graphs of one engine folder share
    one memory ``pool`` (they replay one at a time on one stream), so capturing all of them costs the activation
    memory of the largest, not the sum. Every input is copied each replay: the 480p cached decode's 5 GB KV cache
    costs ~2 ms of a multi-second step, and its static copy 5 GB."""

    def __init__(self, fn: Graph, *, warmup: int = 1, pool=None):
        self.fn, self.warmup, self.pool = fn, warmup, pool
        self.replay: Callable[[], None] | None = None
        self.static_in: list[torch.Tensor] = []
        self.static_out: tuple[torch.Tensor, ...] = ()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.replay is None:
            self.static_in = [x.clone() for x in inputs]
            self.replay, self.static_out, first = cuda_graph_capture(
                lambda: self.fn(*self.static_in), warmup=self.warmup, pool=self.pool
            )
            if first is not None:  # the warm-up computed this call already: the first step costs one run
                return first
        for buf, x in zip(self.static_in, inputs):
            if buf.data_ptr() != x.data_ptr():
                buf.copy_(x)
        self.replay()
        return tuple(o.clone() for o in self.static_out)


class CheckedGraph:
    """An engine graph that checks its inputs against the manifest before running (cheap: shapes and dtypes)."""

    def __init__(self, name: str, fn: Graph, inputs: list[dict], where: str, profile: str):
        self.name, self.fn, self.where, self.profile = name, fn, where, profile
        self.expected = [(t["name"], tuple(t["shape"]), getattr(torch, t["dtype"])) for t in inputs]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.expected):
            raise EngineShapeError(f"graph {self.name} takes {len(self.expected)} inputs, got {len(inputs)}")
        for (name, shape, dtype), x in zip(self.expected, inputs):
            if tuple(x.shape) != shape or x.dtype != dtype:
                raise EngineShapeError(
                    f"engine {self.where} (profile {self.profile}) graph {self.name} takes {name} "
                    f"{list(shape)} {str(dtype).removeprefix('torch.')}, got {list(x.shape)} "
                    f"{str(x.dtype).removeprefix('torch.')}: build an engine for this size "
                    "(lc-runtime build-engines --profile HxWxF, --batch 1 without CFG)"
                )
        return self.fn(*inputs)


# ---------------------------------------------------------------------------------------------- denoiser
class EngineDenoiser:
    """A ``tasks.Denoiser`` over built DiT graphs: ``(latents, timestep, text_context, num_cond_latents, kv_cache)
    -> velocity`` fp32, like :func:`lc_runtime.tasks.dit_denoiser` but through ``dit_forward_nc{n}`` (no cache) or
    ``dit_decode`` (with a cache). The mode of a request is fixed, so each step is one dict lookup and one call.

    ``dit`` (for aoti engines, whose weights are the model's own tensors) is watched for LoRA changes the engine
    cannot follow: unmerged adapters (aoti) or any active LoRA (onnx/tensorrt bake the base weights), and for its
    block-sparse attention switch (``bsa``: whether the forward graphs were built with it; a refinement request
    turns it on, and an engine traced the other way would compute another attention).
    """

    def __init__(
        self, graphs: dict[str, Graph], *, backend: str, where: str, dit: nn.Module | None = None, bsa: bool = False
    ):
        self.graphs, self.backend, self.where, self.dit, self.bsa = graphs, backend, where, dit, bsa

    def mismatch(self, latents: torch.Tensor, num_cond_latents: int, kv_cache: KVCache | None) -> str | None:
        """Why this engine cannot run the step (None when it can): a missing graph, other latent shapes or dtype,
        or the other block-sparse attention setting."""
        name = self._graph_name(num_cond_latents, kv_cache)
        graph = self.graphs.get(name)
        if graph is None:
            return self._missing(name)
        expected = getattr(graph, "expected", None)  # CheckedGraph: [(name, shape, dtype)], latents first
        if expected:
            _, shape, dtype = expected[0]
            if tuple(latents.shape) != shape or latents.dtype != dtype:
                got = f"{list(latents.shape)} {str(latents.dtype).removeprefix('torch.')}"
                return f"{name} takes latents {list(shape)} {str(dtype).removeprefix('torch.')}, got {got}"
        return self._bsa_mismatch(latents, kv_cache)

    def _bsa_mismatch(self, latents: torch.Tensor, kv_cache: KVCache | None) -> str | None:
        if kv_cache is not None or latents.shape[2] == 1 or self.dit is None:  # where the DiT never uses BSA
            return None
        on = bool(getattr(self.dit, "bsa_enabled", False))
        if on == self.bsa:
            return None
        return (
            f"built {'with' if self.bsa else 'without'} block-sparse attention but the request runs "
            f"{'with' if on else 'without'} it (refinement turns it on; rebuild with --{'' if on else 'no-'}bsa)"
        )

    @staticmethod
    def _graph_name(num_cond_latents: int, kv_cache: KVCache | None) -> str:
        return "dit_decode" if kv_cache is not None else f"dit_forward_nc{num_cond_latents}"

    def _missing(self, name: str) -> str:
        return f"no {name} graph (built: {', '.join(sorted(self.graphs)) or 'none'})"

    def _graph(self, name: str) -> Graph:
        graph = self.graphs.get(name)
        if graph is None:
            raise EngineShapeError(f"engine {self.where} has {self._missing(name)}; build a profile that includes it")
        return graph

    def _check_lora(self) -> None:
        lora = getattr(self.dit, "lora", None)
        if lora is None or not lora.active:
            return
        if self.backend != "aoti":
            raise EngineError(
                f"LoRA {sorted(lora.active)} is active but {self.backend} engines hold the base weights; "
                "use an aoti engine (it runs on the model's own, merged weights)"
            )
        if not lora.merged:
            raise EngineError("aoti engines run merged LoRAs only: set_loras(..., merged=True)")

    def __call__(self, latents, timestep, text: TextContext, num_cond_latents: int, kv_cache: KVCache | None):
        self._check_lora()
        problem = self._bsa_mismatch(latents, kv_cache)
        if problem:
            raise EngineMismatchError(f"engine {self.where}: {problem}")
        B, _, T = latents.shape[:3]
        t = timestep.float()
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:  # [B] -> [B, T]: the DiT broadcasts a per-sample timestep over the frames the same way
            t = t[:, None].expand(B, T)
        inputs = [latents, t.contiguous(), text.k, text.v]
        if text.mask is not None:
            inputs.append(text.mask)
        graph = self._graph(self._graph_name(num_cond_latents, kv_cache))
        if kv_cache is not None:
            return graph(*inputs, kv_cache.k, kv_cache.v)[0]
        return graph(*inputs)[0]

    def prefill(self, cond_latents: torch.Tensor) -> KVCache:
        self._check_lora()
        k, v = self._graph("dit_prefill")(cond_latents)
        return KVCache(k, v)


class EngineSetDenoiser:
    """Several engine folders as one ``tasks.Denoiser`` (``lc-runtime run --engines A --engines B``): each step runs
    on the first engine that fits it (:meth:`EngineDenoiser.mismatch`), e.g. a ``480p-93f`` folder for stage 1 and a
    ``720p-refine`` folder (block-sparse attention) for the refinement of the same run."""

    def __init__(self, denoisers: Iterable[EngineDenoiser]):
        self.denoisers = list(denoisers)

    def __call__(self, latents, timestep, text: TextContext, num_cond_latents: int, kv_cache: KVCache | None):
        reasons = []
        for d in self.denoisers:
            why = d.mismatch(latents, num_cond_latents, kv_cache)
            if why is None:
                return d(latents, timestep, text, num_cond_latents, kv_cache)
            reasons.append(f"{d.where}: {why}")
        raise EngineShapeError(
            f"no engine folder fits this step ({'; '.join(reasons)}); build one for it (lc-runtime build-engines "
            "--profile HxWxF, --batch 1 without CFG, --bsa for refinement)"
        )


# ---------------------------------------------------------------------------------------------- loading
@dataclasses.dataclass
class Engines:
    """A loaded engine folder: its manifest and one callable per graph."""

    folder: Path
    manifest: Manifest
    graphs: dict[str, Graph]
    modules: dict[str, nn.Module]

    def denoiser(self) -> EngineDenoiser:
        dit_graphs = {k: v for k, v in self.graphs.items() if k.startswith("dit_")}
        if not dit_graphs:
            raise EngineError(f"engine {self.folder} has no DiT graphs")
        return EngineDenoiser(
            dit_graphs,
            backend=self.manifest.backend,
            where=str(self.folder),
            dit=self.modules.get("dit"),
            bsa=bool(self.manifest.profile.get("bsa", False)),
        )

    def prefill(self, cond_latents: torch.Tensor) -> KVCache:
        return self.denoiser().prefill(cond_latents)


def component_config(name: str, module: nn.Module) -> dict:
    """The architecture-defining config of a component, as JSON-able dict (the layout fingerprint's config)."""
    if name == "text_encoder":
        c = module.config
        keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj")
        keys += ("relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon")
        return {k: getattr(c, k) for k in keys}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(module.config).items()}


def graph_specs_for(manifest: Manifest, modules: dict[str, nn.Module]) -> dict[str, GraphSpec]:
    """Re-derive the graph specs of a manifest (for the wrapper modules that aoti binds weights through)."""
    from ..export.specs import dit_graph_specs, text_encoder_graph_specs, vae_graph_specs

    profile = ShapeProfile.from_description(manifest.profile)
    dtype = getattr(torch, manifest.dtype)
    specs: list[GraphSpec] = []
    if "dit" in modules:
        specs += dit_graph_specs(profile, modules["dit"].config, dtype)
    if "vae" in modules:
        specs += vae_graph_specs(profile, modules["vae"].config, dtype)
    if "text_encoder" in modules:
        m = modules["text_encoder"]
        specs += text_encoder_graph_specs(m.config.d_model, m.config.vocab_size, dtype)
    return {s.name: s for s in specs}


def load_engines(
    folder: str | Path,
    *,
    modules: dict[str, nn.Module],
    model_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    graphs: Iterable[str] | None = None,
    use_cuda_graph: bool | None = None,
    pool=None,
) -> Engines:
    """Load the graphs of an engine folder that belong to the given components.

    ``modules``: the loaded components, ``{"dit": LongCatDiT, "vae": WanVAE, "text_encoder": UMT5EncoderModel}``
    (any subset): their layouts are checked, and aoti graphs run on their tensors. ``model_dir``: the checkpoint
    folder, whose content must match for backends that bake the weights. ``graphs``: a subset of graph names.
    ``use_cuda_graph``: default on for CUDA devices. ``pool``: the CUDA graph memory pool to capture into (default:
    a new one for this folder; folders whose graphs never run at the same time can share one).
    """
    folder = Path(folder)
    manifest = Manifest.load(folder)
    if not modules:
        raise EngineError("load_engines needs the loaded components (modules={'dit': ..., ...})")
    device = torch.device(device if device is not None else next(next(iter(modules.values())).parameters()).device)
    dtypes = {next(m.parameters()).dtype for m in modules.values()}
    wanted = [g for g, rec in manifest.graphs.items() if rec["component"] in modules]
    wanted = list(graphs) if graphs is not None else wanted
    checkpoints = None
    if model_dir is not None:
        checkpoints = {c: Path(model_dir) / c for c in modules if c in manifest.components}
    manifest.check(
        folder,
        device=device,
        dtype=dtypes.pop() if len(dtypes) == 1 else None,
        modules={c: (component_config(c, m), m) for c, m in modules.items()},
        checkpoints=checkpoints,
        graphs=wanted,
    )
    capture = device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
    if capture and pool is None:
        pool = torch.cuda.graph_pool_handle()
    specs = graph_specs_for(manifest, modules) if manifest.backend == "aoti" else {}
    loaded = {}
    for name in wanted:
        rec = manifest.graphs[name]
        fn = _open_graph(manifest, folder, name, rec, modules, specs, device, capture)
        if capture:
            fn = StaticGraph(fn, pool=pool)
        loaded[name] = CheckedGraph(name, fn, rec["inputs"], str(folder), manifest.profile["name"])
    return Engines(folder=folder, manifest=manifest, graphs=loaded, modules=dict(modules))


def _open_graph(manifest, folder, name, rec, modules, specs, device, capture) -> Graph:
    path = folder / rec["file"]
    if manifest.backend == "aoti":
        from .aoti import AOTIGraph

        if name not in specs:
            raise EngineMismatchError(f"engine {folder}: graph {name} does not fit the given model; rebuild it")
        wrapper = specs[name].module(modules[rec["component"]])
        return AOTIGraph(path, wrapper, device=device, single_threaded=capture, attention=manifest.attention)
    if manifest.backend == "onnx":
        from .onnx import OnnxGraph

        return OnnxGraph(path, rec["outputs"], device=device)
    from .tensorrt import TensorRTGraph

    plugins = tuple(str(folder / p) for p in manifest.graphs[name].get("plugins", ()))
    return TensorRTGraph(path, rec["inputs"], rec["outputs"], device=device, plugins=plugins)


def engines_for_pipeline(
    pipe,
    folder: str | Path,
    *,
    model_dir: str | Path | None = None,
    use_cuda_graph: bool | None = None,
    pool=None,
) -> Engines:
    """Load an engine folder for a :class:`lc_runtime.Pipeline`'s components (those the folder has graphs of);
    ``pipe.denoiser = engines.denoiser()`` then runs every denoising step through the engine."""
    manifest = Manifest.load(folder)
    available = {"dit": pipe.dit, "vae": pipe.vae, "text_encoder": pipe.text_encoder.model}
    modules = {name: m for name, m in available.items() if name in manifest.components}
    return load_engines(folder, modules=modules, model_dir=model_dir, use_cuda_graph=use_cuda_graph, pool=pool)


def engine_denoiser_for_pipeline(pipe, folders, *, model_dir: str | Path | None = None):
    """The denoiser of one or more engine folders for ``pipe`` (``lc-runtime run --engines``): one folder's
    :class:`EngineDenoiser`, or an :class:`EngineSetDenoiser` over several, whose CUDA graphs share one memory pool
    (one step runs at a time)."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if not folders:
        raise EngineError("no engine folder given")
    pool = torch.cuda.graph_pool_handle() if pipe.device.type == "cuda" and len(folders) > 1 else None
    denoisers = [engines_for_pipeline(pipe, f, model_dir=model_dir, pool=pool).denoiser() for f in folders]
    return denoisers[0] if len(denoisers) == 1 else EngineSetDenoiser(denoisers)
