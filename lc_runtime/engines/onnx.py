"""ONNX backend: opset-23 files (:func:`lc_runtime.export.onnx_export.export_onnx`) run by onnxruntime.

The session binds torch tensors directly through an ``IOBinding`` (inputs and the preallocated outputs are
handed over by pointer, on the CPU or a CUDA device), so no numpy round trip and bf16 works wherever the
execution provider has the kernels (the CPU provider has few bf16 kernels: build ``--dtype fp32`` for CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .manifest import EngineError

# torch dtype -> onnx.TensorProto element type
_ONNX_TYPES = {
    torch.float32: 1,
    torch.uint8: 2,
    torch.int8: 3,
    torch.int32: 6,
    torch.int64: 7,
    torch.bool: 9,
    torch.float16: 10,
    torch.bfloat16: 16,
}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise EngineError("the onnx backend needs onnxruntime: pip install 'lc-runtime[onnx]'") from None
    return onnxruntime


class OnnxGraph:
    """An onnxruntime session over one graph: ``graph(*inputs) -> tuple of outputs`` (torch tensors)."""

    def __init__(self, path: str | Path, outputs: list[dict], *, device: torch.device, threads: int | None = None):
        ort = _ort()
        self.device = torch.device(device)
        provider = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise EngineError(
                f"onnxruntime here has no {provider} (available: {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu to run ONNX engines on CUDA"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        provider_options = [{"device_id": self.device.index or 0}] if provider.startswith("CUDA") else [{}]
        self.session = ort.InferenceSession(str(path), options, providers=[provider], provider_options=provider_options)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.outputs = [(o["name"], tuple(o["shape"]), getattr(torch, o["dtype"])) for o in outputs]
        self._ort_device = "cuda" if self.device.type == "cuda" else "cpu"

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        binding = self.session.io_binding()
        keep = []
        for name, t in zip(self.input_names, inputs):
            t = t.contiguous()
            keep.append(t)
            binding.bind_input(
                name, self._ort_device, self.device.index or 0, _ONNX_TYPES[t.dtype], list(t.shape), t.data_ptr()
            )
        outs = [torch.empty(shape, dtype=dtype, device=self.device) for _, shape, dtype in self.outputs]
        for (name, _, _), t in zip(self.outputs, outs):
            binding.bind_output(
                name, self._ort_device, self.device.index or 0, _ONNX_TYPES[t.dtype], list(t.shape), t.data_ptr()
            )
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch must be ready
        self.session.run_with_iobinding(binding)
        return tuple(outs)
