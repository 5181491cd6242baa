"""Engine manifests: what an engine folder was built from, and the checks that refuse a stale or foreign one.

``manifest.json`` records the backend, the shape profile, dtype, device and its architecture (``sm_90`` or the
CPU's vector ISA), the library versions, one entry per graph (file, inputs, outputs) and three fingerprints per
model component:

``layout``      sha256 of the component config and every tensor's name and shape: what the *graph* depends on.
``weights``     sha256 of every tensor's name, shape, dtype and its first and last 64 values, read from the
                loaded module: what a backend that *bakes* the weights (onnx, tensorrt) depends on. It changes
                with a fine-tune, a merged LoRA or another dtype, and costs one small gather per tensor.
``checkpoint``  sha256 of the component folder's files: config.json, and for each safetensors file its name,
                size, full header (names, dtypes, shapes, offsets) and the first and last 4 KiB of every tensor.
                Reading ~8 KiB per tensor instead of the bytes keeps it at well under a second for the 27 GB
                checkpoint (~1000 tensors), and it still changes for any retrained, re-quantized, LoRA-merged or
                truncated checkpoint; an edit confined to the interior of one tensor is the blind spot
                (``full=True`` hashes every byte, ~a minute per 27 GB).

Which checks refuse an engine (:meth:`Manifest.check`): any backend: format, backend, dtype, device type, a
missing artefact, and the layout of each component the caller hands in. ``aoti``: the exact torch version (the
package links against libtorch) and the device architecture (cubins / CPU ISA are compiled in); weights are
bound from the loaded model at start, so another checkpoint of the same layout is fine. ``onnx``: the weights
(baked in). ``tensorrt``: the TensorRT version and GPU architecture (plans are not portable) and the weights.
Every refusal names what differs and the command that rebuilds the engine.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

FORMAT = 1
MANIFEST = "manifest.json"
BACKENDS = ("aoti", "onnx", "tensorrt")
_EDGE = 4096  # bytes sampled at each end of every tensor by checkpoint_hash


class EngineError(ValueError):
    """An engine folder cannot be built or used (user-facing: the CLI prints it as ``error: ...``)."""


class EngineMismatchError(EngineError):
    """The engine folder was built from something else than what it is asked to run."""


# ---------------------------------------------------------------------------------------------- fingerprints
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def layout_hash(config: dict, module: nn.Module) -> str:
    """Config + every tensor's name and shape (dtype-independent: the engine dtype is checked on its own)."""
    tensors = sorted((k, list(v.shape)) for k, v in module.state_dict().items())
    return _sha({"config": config, "tensors": tensors})


@torch.no_grad()
def weights_hash(module: nn.Module, edge: int = 64) -> str:
    """Names, shapes, dtypes and the first and last ``edge`` values of every tensor (one device->host copy)."""
    items = sorted(module.state_dict().items())
    if not items:
        return _sha([])
    samples = []
    for _, t in items:
        flat = t.detach().reshape(-1)
        samples.append(torch.cat([flat[:edge], flat[-edge:]]).float())
    values = torch.cat(samples).cpu().numpy().tobytes()
    h = hashlib.sha256(json.dumps([(k, list(t.shape), str(t.dtype)) for k, t in items]).encode())
    h.update(values)
    return h.hexdigest()


def checkpoint_hash(folder: str | Path, *, full: bool = False) -> str:
    """sha256 of a component folder's config.json and safetensors files (see the module docstring)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors")):
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":
            h.update(path.read_bytes())
            continue
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = f.read(n)
            h.update(header)
            if full:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
                continue
            base = 8 + n
            meta = json.loads(header)
            for key in sorted(k for k in meta if k != "__metadata__"):
                start, end = meta[key]["data_offsets"]
                for offset in sorted({start, max(start, end - _EDGE)}):
                    f.seek(base + offset)
                    h.update(f.read(min(_EDGE, end - offset)))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- environment
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of everything an engine can depend on (no import of tensorrt: metadata only)."""
    import lc_runtime

    return {
        "lc_runtime": lc_runtime.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
    }


def device_arch(device: torch.device | str) -> str:
    """``sm_90`` for a CUDA device, ``cpu-AVX512`` (the ISA torch's kernels use) for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    return f"cpu-{torch.backends.cpu.get_cpu_capability()}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """The content of ``manifest.json`` (see the module docstring)."""

    backend: str
    profile: dict
    dtype: str
    device: str  # "cuda" | "cpu"
    arch: str
    versions: dict
    attention: str = ""  # the attention backend traced into the graphs (lc_runtime.ops.attention)
    kernels: str = "torch"  # the DiT kernel table traced ("triton": the runtime's fused ops, called from the graph)
    components: dict = field(default_factory=dict)  # name -> {"layout", "weights", "checkpoint", "source"}
    graphs: dict = field(default_factory=dict)  # name -> {"file", "component", "inputs", "outputs", ...}
    build_command: str = ""
    created: str = ""
    format: int = FORMAT

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST
        if not self.created:
            self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise EngineMismatchError(
                f"{folder} is not an engine folder (no {MANIFEST}); build one with: "
                "lc-runtime build-engines --model-dir DIR --backend aoti|onnx|tensorrt --profile 480p-93f "
                f"--out {folder}"
            )
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise EngineMismatchError(f"{path} is corrupt ({e}); rebuild the engine folder") from None

    # ------------------------------------------------------------------------------------------- checks
    def mismatches(
        self,
        folder: Path,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        modules: dict[str, tuple[dict, nn.Module]] | None = None,
        checkpoints: dict[str, Path] | None = None,
        graphs: Iterable[str] | None = None,
    ) -> list[str]:
        """Everything that makes this engine unusable here, as readable lines (empty: usable).

        ``modules``: component -> (config dict, loaded module) to check layouts (and baked weights);
        ``checkpoints``: component -> folder whose checkpoint hash must match (backends that bake weights).
        """
        out: list[str] = []
        if self.format != FORMAT:
            out.append(f"manifest format {self.format}, this runtime reads format {FORMAT}")
        if backend is not None and backend != self.backend:
            out.append(f"backend {self.backend!r}, asked for {backend!r}")
        if dtype is not None and dtype_name(dtype) != self.dtype:
            out.append(f"built for {self.dtype}, the model runs in {dtype_name(dtype)}")
        if device is not None:
            out += self._device_mismatches(torch.device(device))
        now = library_versions()
        pinned = {"aoti": ["torch"], "tensorrt": ["tensorrt"]}.get(self.backend, [])
        out += [
            f"built with {k} {self.versions.get(k)}, running {now.get(k)}"
            for k in pinned
            if self.versions.get(k) != now.get(k)
        ]
        if self.backend == "aoti" and self.versions.get("libstdcxx"):
            from .cxx import loaded_libstdcxx, version_text

            built = tuple(int(x) for x in str(self.versions["libstdcxx"]).split("."))
            here = loaded_libstdcxx()
            if here is not None and built > here:
                out.append(
                    f"built with a C++ compiler whose libstdc++ is {self.versions['libstdcxx']}, newer than the "
                    f"{version_text(here)} this process loads (the package would crash when loaded)"
                )
        bakes = self.backend in ("onnx", "tensorrt")
        for name, (config, module) in (modules or {}).items():
            rec = self.components.get(name)
            if rec is None:
                continue
            if rec["layout"] != layout_hash(config, module):
                out.append(
                    f"{name}: the model's architecture/tensor layout differs from the one the engine was built from"
                )
            elif bakes and rec["weights"] != weights_hash(module):
                out.append(
                    f"{name}: the model's weights differ from the ones baked into the engine "
                    "(another checkpoint, or a merged LoRA)"
                )
        for name, folder_ in (checkpoints or {}).items():
            rec = self.components.get(name)
            if bakes and rec is not None and rec["checkpoint"] and rec["checkpoint"] != checkpoint_hash(folder_):
                out.append(
                    f"{name}: checkpoint {folder_} differs from the one the engine was built from ({rec['source']})"
                )
        for g in graphs if graphs is not None else self.graphs:
            if g not in self.graphs:
                out.append(f"graph {g!r} was not built (built: {', '.join(self.graphs)})")
            elif not (folder / self.graphs[g]["file"]).is_file():
                out.append(f"artefact {self.graphs[g]['file']} is missing")
        return out

    def _device_mismatches(self, device: torch.device) -> list[str]:
        if self.backend == "onnx":
            return []  # onnxruntime runs the same file on any provider
        if device.type != self.device:
            return [f"built for {self.device}, asked to run on {device.type}"]
        here = device_arch(device)
        if here != self.arch:
            return [f"built for {self.arch}, this machine is {here}"]
        return []

    def rebuild_command(self, folder: str | Path) -> str:
        if self.build_command:
            return self.build_command
        name = self.profile.get("name", "PROFILE")
        return f"lc-runtime build-engines --model-dir DIR --backend {self.backend} --profile {name} --out {folder}"

    def check(self, folder: str | Path, **kwargs) -> None:
        """Raise :class:`EngineMismatchError` listing every mismatch and the command that rebuilds the engine."""
        problems = self.mismatches(Path(folder), **kwargs)
        if problems:
            lines = "\n  - ".join(problems)
            raise EngineMismatchError(
                f"engine {folder} is stale or does not match this setup:\n  - {lines}\n"
                f"rebuild it with:\n  {self.rebuild_command(folder)}"
            )
