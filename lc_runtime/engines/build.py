"""``build_engines``: checkpoint folder + backend + shape profile -> an engine folder (artefacts + manifest).

The folder is assembled in a hidden sibling (``.NAME.building``) and renamed into place at the end, so a failed
or interrupted build never leaves a half-built engine that a later run could pick up. Components are loaded one
at a time (the DiT, then the VAE, then the text encoder), each freed after its graphs are built.

Where each backend traces and builds:
    aoti      export + compile on the target device (``--device``, default CUDA when present), in ``dtype``;
    onnx      export on the CPU (the ONNX graph is device-neutral), in ``dtype`` (fp32 for CPU inference);
    tensorrt  export on the CPU in ``dtype`` (bf16: the strongly typed network takes its types from the ONNX),
              plan built on the CUDA device; the intermediate ONNX files are deleted after their plan is built.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..export.profiles import ShapeProfile, resolve_profile
from ..export.specs import COMPONENTS, GraphSpec, dit_graph_specs, text_encoder_graph_specs, vae_graph_specs
from ..weights import CheckpointLayout
from .manifest import (
    BACKENDS,
    EngineError,
    Manifest,
    checkpoint_hash,
    device_arch,
    dtype_name,
    layout_hash,
    library_versions,
    weights_hash,
)
from .runtime import component_config

SUFFIX = {"aoti": ".pt2", "onnx": ".onnx", "tensorrt": ".plan"}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class GraphBuild:
    name: str
    file: str
    seconds: float
    bytes: int


@dataclass
class BuildSummary:
    folder: Path
    backend: str
    profile: ShapeProfile
    dtype: str
    device: str
    graphs: list[GraphBuild] = field(default_factory=list)
    load_seconds: float = 0.0
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"{'graph':<20} {'file':<26} {'build s':>8} {'size':>10}"]
        for g in self.graphs:
            lines.append(f"{g.name:<20} {g.file:<26} {g.seconds:>8.1f} {_size(g.bytes):>10}")
        lines.append(
            f"{len(self.graphs)} graphs, {self.backend} {self.dtype} on {self.device}, profile {self.profile.name}: "
            f"{self.seconds:.1f} s in all ({self.load_seconds:.1f} s loading weights) -> {self.folder}"
        )
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _artefact_bytes(folder: Path, stem: str) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(stem + "."))


# ---------------------------------------------------------------------------------------------- components
def _load_component(name: str, layout: CheckpointLayout, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if name == "dit":
        from ..models.dit import load_dit

        return load_dit(layout.dit, device=device, dtype=dtype)
    if name == "vae":
        from ..models.vae import load_vae

        return load_vae(layout.vae, device=device, dtype=dtype)
    from ..models.text_encoder import TextEncoder

    return TextEncoder.from_pretrained(layout.root, device=device, dtype=dtype, keep_resident=True).model


def _specs(name: str, module: nn.Module, profile: ShapeProfile, dtype: torch.dtype) -> list[GraphSpec]:
    if name == "dit":
        return dit_graph_specs(profile, module.config, dtype)
    if name == "vae":
        return vae_graph_specs(profile, module.config, dtype)
    return text_encoder_graph_specs(module.config.d_model, module.config.vocab_size, dtype)


def _checkpoint_folder(name: str, layout: CheckpointLayout) -> Path:
    return {"dit": layout.dit, "vae": layout.vae, "text_encoder": layout.text_encoder}[name]


# ---------------------------------------------------------------------------------------------- build
def _resolve_device(backend: str, device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() or backend == "tensorrt" else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"--device cuda was asked for ({backend} engines) but no CUDA device is available")
    return device


def _check_request(backend: str, device: torch.device, dtype: torch.dtype, out: Path, overwrite: bool) -> None:
    if backend == "tensorrt" and device.type != "cuda":
        raise EngineError("TensorRT engines are built and run on a CUDA device")
    if backend == "onnx" and device.type == "cpu" and dtype != torch.float32:
        raise EngineError("onnxruntime's CPU provider lacks bf16 kernels: build CPU ONNX engines with --dtype fp32")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise EngineError(f"{out} exists and is not empty; pass --overwrite to replace it")


def _prepare(backend, profile, shape_options, device, dtype, out, overwrite):
    """Validate a request before anything heavy happens; returns (profile, device, dtype, out).
    ``shape_options``: resolve_profile's overrides (batch, bsa, cond_latents)."""
    profile = resolve_profile(profile, **shape_options)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if profile.bsa and backend != "aoti":
        raise EngineError(
            f"profile {profile.name} has block-sparse attention, which only aoti engines hold (its selection and "
            f"Triton kernel are one custom op that ONNX cannot express); build {backend} with --no-bsa (dense "
            "attention, ~8x the attention time at the 720p refine size) or use --backend aoti"
        )
    if backend == "tensorrt":
        from .tensorrt import import_tensorrt

        import_tensorrt()  # fails with how to get TensorRT, before anything is loaded
    dev = _resolve_device(backend, device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    out = Path(out)
    _check_request(backend, dev, dtype, out, overwrite)
    return profile, dev, dtype, out


def build_engines(
    model_dir: str | Path,
    backend: str,
    profile: str | ShapeProfile,
    out: str | Path,
    *,
    progress: bool = True,
    components: tuple[str, ...] | None = None,
    graphs: tuple[str, ...] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    batch: int | None = None,
    bsa: bool | None = None,
    cond_latents: tuple[int, ...] | None = None,
    overwrite: bool = False,
    attention: str | None = None,
    kernels: str | None = None,
    tensorrt_options=None,
    command: str | None = None,
) -> BuildSummary:
    """Build ``backend`` engines of ``profile`` for the checkpoint in ``model_dir`` into the folder ``out``.

    ``components``: subset of ("text_encoder", "vae", "dit") (default all); ``graphs``: subset of graph names
    (default all of the profile); ``dtype``: default bf16 on CUDA, fp32 on the CPU; ``batch``: override the
    profile's DiT batch (1 = no CFG); ``bsa``: block-sparse attention in the DiT forward graphs on/off (default:
    the profile's, on for ``720p-refine``; aoti only); ``cond_latents``: the conditioned forward graphs to build
    (default: the profile's); ``attention``: the attention backend traced into aoti graphs (default: the fast
    path's: FA3 on Hopper with fa3-fwd, else cuDNN, else flash); ``kernels``: the DiT kernel table traced, "triton"
    (the runtime's fused ops; default for aoti on CUDA) or "torch" (the reference math). Raises ProfileError /
    CheckpointError / EngineError with a clear message before any heavy work when the request cannot be built.
    """
    profile, dev, dtype, out = _prepare(
        backend, profile, dict(batch=batch, bsa=bsa, cond_latents=cond_latents), device, dtype, out, overwrite
    )
    layout = CheckpointLayout(Path(model_dir))
    layout.check()
    components = tuple(components or COMPONENTS)
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise EngineError(f"unknown component(s) {bad}; choose from {', '.join(COMPONENTS)}")
    if "dit" in components:  # shape errors from the config alone, before 27 GB of weights are read
        from ..config import DiTConfig

        dit_graph_specs(profile, DiTConfig.from_json(layout.dit / "config.json"), dtype)
    export_device = dev if backend == "aoti" else torch.device("cpu")
    sources = {
        name: (lambda name=name: _load_component(name, layout, export_device, dtype), _checkpoint_folder(name, layout))
        for name in components
    }
    command = command or _command(model_dir, backend, profile, out, dev, dtype, components, graphs, attention)
    return _build(
        sources, backend, profile, out, dev, dtype, graphs, progress, attention, tensorrt_options, command, kernels
    )


def build_engines_from_modules(
    modules: dict[str, nn.Module],
    backend: str,
    profile: str | ShapeProfile,
    out: str | Path,
    *,
    progress: bool = True,
    graphs: tuple[str, ...] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    batch: int | None = None,
    bsa: bool | None = None,
    cond_latents: tuple[int, ...] | None = None,
    overwrite: bool = False,
    attention: str | None = None,
    kernels: str | None = None,
    tensorrt_options=None,
    command: str = "",
) -> BuildSummary:
    """Build from components already in memory (``{"dit": LongCatDiT, ...}``, e.g. random weights for
    benchmarks), on their device and in their dtype (aoti: the target device; onnx/tensorrt: the CPU). The manifest
    then has no checkpoint fingerprint; layouts and (for baked weights) the modules' weights are still checked."""
    profile, dev, dtype, out = _prepare(
        backend, profile, dict(batch=batch, bsa=bsa, cond_latents=cond_latents), device, dtype, out, overwrite
    )
    for name, module in modules.items():
        p = next(module.parameters())
        if name not in COMPONENTS or p.dtype != dtype:
            raise EngineError(f"component {name!r} in {p.dtype} does not fit a {dtype_name(dtype)} build")
    sources = {name: (lambda m=m: m, None) for name, m in modules.items()}
    return _build(
        sources, backend, profile, out, dev, dtype, graphs, progress, attention, tensorrt_options, command, kernels
    )


def _engine_kernels(backend: str, device: torch.device, requested: str | None) -> str:
    """The DiT kernel table traced into the graphs: the runtime's fused Triton ops for aoti on CUDA (the fast path's
    kernels); the reference math elsewhere (ONNX/TensorRT need standard ops; on the CPU, Inductor's C++ fusion of
    the reference beats calling back into the ops' PyTorch references). ``requested`` overrides (aoti only)."""
    if requested is None:
        from ..ops.fused import triton_available

        return "triton" if backend == "aoti" and device.type == "cuda" and triton_available() else "torch"
    if requested not in ("torch", "triton"):
        raise EngineError(f"unknown kernels {requested!r}; choose torch or triton")
    if requested == "triton" and backend != "aoti":
        raise EngineError(f"{backend} engines trace the reference kernels only (kernels='torch')")
    return requested


def _engine_attention(backend: str, device: torch.device, requested: str | None) -> str:
    """The attention backend traced into the graphs: ONNX/TensorRT need plain SDPA (-> the ONNX Attention op);
    aoti on a GPU takes the best kernel the device offers, the one the fast path picks (FA3 on Hopper with fa3-fwd,
    else cuDNN, else flash)."""
    from ..ops.attention import available_backends

    if backend != "aoti":
        return "sdpa"
    if requested is not None:
        return requested
    return available_backends(device)[0] if device.type == "cuda" else "sdpa"


def _build(sources, backend, profile, out, dev, dtype, graphs, progress, attention, tensorrt_options, command, kernels):
    """Build the graphs of every component in ``sources`` ({name: (load(), checkpoint folder or None)}) into a
    staging folder, write the manifest, and move the folder into place. Returns the BuildSummary."""
    from ..ops.attention import get_attention_backend, select_attention_backend, set_attention_backend

    t_start = time.perf_counter()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    manifest = Manifest(
        backend=backend,
        profile=profile.describe(),
        dtype=dtype_name(dtype),
        device=dev.type,
        arch=device_arch(dev),
        versions=library_versions(),
        build_command=command,
    )
    summary = BuildSummary(folder=out, backend=backend, profile=profile, dtype=manifest.dtype, device=str(dev))
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if backend == "aoti":
        from .cxx import choose_cxx, version_text

        cxx, libstdcxx, note = choose_cxx()  # chosen once; _build_graph compiles every graph with it
        manifest.versions["cxx"] = cxx
        manifest.versions["libstdcxx"] = version_text(libstdcxx)  # loading needs at least this one (cxx.py)
        if note:
            say(note)
    previous = get_attention_backend()
    try:
        manifest.attention = select_attention_backend(_engine_attention(backend, dev, attention), dev)
        manifest.kernels = _engine_kernels(backend, dev, kernels)
        for name in (c for c in ("dit", "vae", "text_encoder") if c in sources):  # the longest builds first
            load, checkpoint = sources[name]
            _build_component(name, load, checkpoint, staging, manifest, summary, graphs, say, tensorrt_options)
        if graphs:
            missing = sorted(set(graphs) - set(manifest.graphs))
            if missing:
                raise EngineError(f"no graph(s) {missing} in profile {profile.name} for components {list(sources)}")
        manifest.save(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        set_attention_backend(previous)
        shutil.rmtree(staging, ignore_errors=True)
    summary.seconds = time.perf_counter() - t_start
    say(summary.table())
    return summary


def _build_component(name, load, checkpoint, staging, manifest, summary, graphs, say, tensorrt_options) -> None:
    """Load one component, fingerprint it into the manifest and build its graphs into ``staging``."""
    backend, profile = manifest.backend, summary.profile
    dev = torch.device(summary.device)
    export_device = dev if backend == "aoti" else torch.device("cpu")
    dtype = getattr(torch, manifest.dtype)
    t0 = time.perf_counter()
    module = load()
    summary.load_seconds += time.perf_counter() - t0
    specs = [s for s in _specs(name, module, profile, dtype) if not graphs or s.name in graphs]
    manifest.components[name] = {
        "layout": layout_hash(component_config(name, module), module),
        "weights": weights_hash(module),
        "checkpoint": None if checkpoint is None else checkpoint_hash(checkpoint),
        "source": "in-memory model" if checkpoint is None else str(Path(checkpoint).resolve()),
    }
    with _traced_as(name, module, profile, manifest):
        for spec in specs:
            say(f"[{len(manifest.graphs) + 1}] {spec.name} ({backend}, {manifest.dtype}, profile {profile.name}) ...")
            t0 = time.perf_counter()
            file = _build_graph(backend, spec, module, staging, export_device, dev, tensorrt_options, manifest)
            seconds = time.perf_counter() - t0
            if backend == "aoti" and dev.type == "cuda" and manifest.kernels != "torch":
                first = _first_run(spec, module, staging / file, dev, manifest.attention)
                say(f"    {spec.name}: first run {first:.1f} s (the runtime's Triton kernels compiled and cached)")
            size = _artefact_bytes(staging, spec.name)
            manifest.graphs[spec.name] = {"file": file, **spec.describe(), "build_seconds": round(seconds, 2)}
            summary.graphs.append(GraphBuild(spec.name, file, seconds, size))
            say(f"    {spec.name}: {seconds:.1f} s, {_size(size)}")
    del module
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _traced_as(name: str, module: nn.Module, profile: ShapeProfile, manifest):
    """The DiT set up as its graphs are traced, and restored afterwards (a module handed in by the caller,
    ``build_engines_from_modules``, comes back as it was):

    - block-sparse attention switched to the profile's: the selection and the kernel go in as the
      ``lc_runtime::block_sparse_attention`` op;
    - the kernel table ``manifest.kernels``: with "triton" the graph calls the runtime's fused ops (the same
      kernels as the fast path; AOTInductor calls them through its proxy executor and a CUDA graph replays them)
      and Inductor compiles the GEMMs and the glue; the FFN runs the fast path's one [w1; w3] GEMM, whose fused
      weight (a non-persistent buffer, ``blocks.N.ffn.w13``) the loader derives again from w1 and w3."""
    if name != "dit":
        yield
        return

    from ..models.dit import kernel_table

    was_bsa, was_ops = module.blocks[0].attn.bsa, module.ops
    if profile.bsa:
        module.enable_bsa()
    else:
        module.disable_bsa()
    if manifest.kernels != "torch":
        ops = kernel_table(manifest.kernels, manifest.attention or None)
        for blk in module.blocks:  # the fast path's one [w1; w3] GEMM; the package binds w13 as a constant
            blk.ffn.fuse_w13()
        module.set_ops(ops)
    try:
        yield
    finally:
        if was_bsa is None:
            module.disable_bsa()
        else:
            module.enable_bsa(was_bsa)
        module.set_ops(was_ops)


def _first_run(spec: GraphSpec, module: nn.Module, path: Path, device: torch.device, attention: str) -> float:
    """Load a freshly built aoti package and run it once on sample inputs: it proves the package loads and runs,
    and the runtime's Triton kernels the graph calls (fused ops, block-sparse attention) are JIT-compiled into
    this machine's Triton cache, so a later process starts without compiling them. Returns seconds."""
    from .aoti import AOTIGraph

    t0 = time.perf_counter()
    graph = AOTIGraph(path, spec.module(module), device=device, single_threaded=False, attention=attention)
    with torch.no_grad():
        graph(*spec.sample_inputs(device))
    torch.cuda.synchronize(device)
    del graph
    torch.cuda.empty_cache()
    return time.perf_counter() - t0


def _build_graph(backend, spec: GraphSpec, module, folder: Path, export_device, device, trt_options, manifest) -> str:
    wrapper = spec.module(module)
    inputs = spec.sample_inputs(export_device)
    file = spec.name + SUFFIX[backend]
    if backend == "aoti":
        from .aoti import build_aoti

        build_aoti(wrapper, inputs, folder / file, attention=manifest.attention, cxx=manifest.versions["cxx"])
    elif backend == "onnx":
        from ..export.onnx_export import export_onnx

        export_onnx(spec, wrapper, folder / file, inputs=inputs)
    else:
        from ..export.onnx_export import export_onnx
        from .tensorrt import TensorRTOptions, build_tensorrt

        options = trt_options or TensorRTOptions()
        onnx_dir = folder / "onnx"
        onnx_path = onnx_dir / f"{spec.name}.onnx"
        export_onnx(spec, wrapper, onnx_path, inputs=inputs, decompose=options.decompose)
        with torch.cuda.device(device):
            build_tensorrt(onnx_path, folder / file, spec.trt_shapes(), folder / "timing.cache", options)
        shutil.rmtree(onnx_dir)
    return file


def _command(model_dir, backend, profile, out, dev, dtype, components, graphs, attention) -> str:
    parts = ["lc-runtime build-engines", f"--model-dir {model_dir}", f"--backend {backend}"]
    parts += [f"--profile {profile.name}", f"--out {out}", f"--device {dev.type}"]
    parts.append(f"--dtype {'bf16' if dtype == torch.bfloat16 else 'fp32'}")
    default = resolve_profile(profile.name)
    if profile.batch != default.batch:
        parts.append(f"--batch {profile.batch}")
    if profile.bsa != default.bsa:
        parts.append("--bsa" if profile.bsa else "--no-bsa")
    if profile.cond_latents != default.cond_latents:
        parts.append(f"--cond-latents {','.join(map(str, profile.cond_latents))}")
    if tuple(components) != COMPONENTS:
        parts.append(f"--components {','.join(components)}")
    if graphs:
        parts.append(f"--graphs {','.join(graphs)}")
    if attention:
        parts.append(f"--attention {attention}")
    return " ".join(parts)
