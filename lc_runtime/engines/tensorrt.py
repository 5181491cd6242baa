"""TensorRT backend: ONNX -> strongly typed plan (BF16 as exported), optimization profiles, a timing cache; a
runner that binds torch tensors and can replay under CUDA graphs.

NOT VERIFIED HERE: TensorRT cannot be installed on the project's machines (NVIDIA's package index is out of
reach), so this file has been read against the TensorRT 10 Python API documentation but never executed;
``tensorrt`` is imported lazily, only when a TensorRT engine is built or loaded. docs/engines.md lists exactly
what was and was not checked.

Build (:func:`build_tensorrt`):
  * the ONNX comes from the same :func:`export_onnx` as the onnx backend, exported with the model in the engine
    dtype (bf16 on GPU) so the network is **strongly typed** (``STRONGLY_TYPED``: every tensor keeps its ONNX
    type; no fp16/bf16 builder flags, no implicit precision choices), and with ``decompose`` = Attention,
    RMSNormalization and RotaryEmbedding by default: the opset-23 single ops are newer than most TensorRT ONNX
    parsers (Attention arrived in 10.14), while TensorRT fuses the MatMul-Softmax-MatMul chain into its own
    fused attention. ``TensorRTOptions(decompose=())`` keeps them for a parser that has them.
  * one optimization profile per graph from the spec's (min, opt, max) shapes (all equal: static profiles);
  * a timing cache shared by the graphs of an engine folder (``timing.cache``), reused and extended by rebuilds;
  * plugins: ``libnvinfer_plugin`` is initialised, and the libraries in ``TensorRTOptions.plugins`` (e.g. the
    ``lc_trt_plugins`` target of CMakeLists.txt) are loaded before parsing so their creators are registered.
    The DiT graphs contain no custom op today (the fused ops of csrc/ are optional), so none is required.

Run (:class:`TensorRTGraph`): one execution context per graph; input shapes are set once (static); each call
binds the input tensors' and freshly allocated outputs' addresses and enqueues on torch's current stream, so
the call can be captured by ``torch.cuda.graph`` (:class:`lc_runtime.engines.runtime.StaticGraph`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from .manifest import EngineError

DEFAULT_DECOMPOSE = ("Attention", "RMSNormalization", "RotaryEmbedding")


class TensorRTUnavailable(EngineError):
    """``import tensorrt`` failed."""


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` with how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"the tensorrt backend needs NVIDIA TensorRT 10 (import tensorrt failed: {e}); install it from NVIDIA "
            "(pip install tensorrt --extra-index-url https://pypi.nvidia.com) or use --backend aoti"
        ) from None
    return tensorrt


@dataclass(frozen=True, kw_only=True)
class TensorRTOptions:
    decompose: tuple[str, ...] = DEFAULT_DECOMPOSE  # opset-23 ops rewritten to primitives in the ONNX
    optimization_level: int = 3  # builder_optimization_level 0..5: build time vs tactic search
    workspace_gib: float | None = None  # None: TensorRT's default (the device's memory)
    plugins: tuple[str, ...] = ()  # plugin shared libraries to load before parsing
    tf32: bool = False  # fp32 GEMMs in TF32 (TensorRT's default); off: fp32 engines keep fp32 precision


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _load_plugins(trt, logger, plugins) -> None:
    trt.init_libnvinfer_plugins(logger, "")
    for lib in plugins:
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise EngineError(f"cannot load TensorRT plugin library {lib}: {e}") from None


def build_tensorrt(
    onnx_path: Path,
    plan_path: Path,
    trt_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    timing_cache: Path,
    options: TensorRTOptions,
) -> None:
    """Parse ``onnx_path`` (external data beside it), build a strongly typed plan with one optimization profile
    (``trt_shapes``: input -> (min, opt, max)), write it to ``plan_path`` and update ``timing_cache``."""
    trt = import_tensorrt()
    logger = _logger(trt)
    _load_plugins(trt, logger, options.plugins)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if strongly_typed is None else 1 << int(strongly_typed)  # always on (flag gone) in TensorRT 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}:\n  {errors}\n"
            "(an unsupported opset-23 op? keep TensorRTOptions.decompose at its default)"
        )
    config = builder.create_builder_config()
    config.builder_optimization_level = options.optimization_level
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in trt_shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build {plan_path.name} (see the TensorRT log above)")
    plan_path.write_bytes(memoryview(plan))
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    return table[dtype]


class TensorRTGraph:
    """A deserialized plan: ``graph(*inputs) -> tuple of outputs``, torch tensors on ``device``, bound by name
    in the order of the manifest's ``inputs`` / ``outputs`` (lists of {"name", "shape", "dtype"})."""

    def __init__(self, plan_path: Path, inputs: list[dict], outputs: list[dict], *, device, plugins=()):
        trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise EngineError("TensorRT engines run on CUDA devices only")
        logger = _logger(trt)
        _load_plugins(trt, logger, plugins)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(logger)
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self.engine is None:
                raise EngineError(f"TensorRT {trt.__version__} cannot deserialize {plan_path} (another version?)")
            self.context = self.engine.create_execution_context()
        self.input_names = [t["name"] for t in inputs]
        for t in inputs:  # static profile: the shapes are set once
            self.context.set_input_shape(t["name"], tuple(t["shape"]))
        self.outputs = []
        for t in outputs:
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(t["name"]))
            self.outputs.append((t["name"], tuple(self.context.get_tensor_shape(t["name"])), dtype))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keep = [t.contiguous() for t in inputs]  # alive until the enqueue below has been issued
        for name, t in zip(self.input_names, keep):
            self.context.set_tensor_address(name, t.data_ptr())
        outs = tuple(torch.empty(shape, dtype=dtype, device=self.device) for _, shape, dtype in self.outputs)
        for (name, _, _), t in zip(self.outputs, outs):
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError("TensorRT execution failed (see the TensorRT log)")
        return outs
