// Every lc_ops schema in one place (STYLE #8), with its CUDA kernel. The fake (shape) kernels are registered from
// Python with symbolic-shape checks (lc_runtime/engines/csrc_ops.py), so the ops trace under torch.export /
// FakeTensor with dynamic shapes and compile into AOTInductor packages (called through the dispatcher).
//
// Load with lc_runtime.engines.csrc_ops.load_csrc_ops() (torch.ops.load_library + the fake kernels).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/gated_residual_add.h"

namespace {

void check_gated_residual_add(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, int64_t frames) {
  TORCH_CHECK(x.dim() == 3, "gated_residual_add: x must be [B, N, C], got ", x.sizes());
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(),
              "gated_residual_add: y must match x ", x.sizes(), " ", x.scalar_type(), ", got ", y.sizes(), " ",
              y.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "gated_residual_add: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK(frames > 0 && N % frames == 0, "gated_residual_add: ", N, " tokens do not split into ", frames,
              " frames");
  TORCH_CHECK(gate.scalar_type() == at::kFloat && gate.numel() == B * frames * C && gate.size(0) == B &&
                  gate.size(-1) == C,
              "gated_residual_add: gate must be float32 [B, frames, 1, C] = [", B, ", ", frames, ", 1, ", C,
              "], got ", gate.sizes(), " ", gate.scalar_type());
}

at::Tensor gated_residual_add_cuda(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                   int64_t frames) {
  check_gated_residual_add(x, gate, y, frames);
  TORCH_CHECK(x.is_cuda() && gate.device() == x.device() && y.device() == x.device(),
              "gated_residual_add: x, gate and y must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous(), gc = gate.contiguous();
  at::Tensor out = at::empty_like(xc);
  const lc::DType dtype = x.scalar_type() == at::kFloat  ? lc::DType::kFloat32
                          : x.scalar_type() == at::kHalf ? lc::DType::kFloat16
                                                         : lc::DType::kBFloat16;
  C10_CUDA_CHECK(lc::launch_gated_residual_add(out.data_ptr(), xc.data_ptr(), gc.data_ptr<float>(), yc.data_ptr(),
                                               dtype, x.size(0), x.size(1), frames, x.size(2),
                                               c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY(lc_ops, m) {
  // out = (x.float() + gate * y.float()).to(x.dtype), bitwise equal to lc_runtime.models.dit.gated_add.
  // x, y: [B, N, C] float32 | float16 | bfloat16 (same dtype); gate: float32 [B, frames, 1, C], broadcast over the
  // N / frames tokens of each frame (tokens in frame-major raster order). Functional: returns a new contiguous
  // tensor, inputs untouched.
  m.def("gated_residual_add(Tensor x, Tensor gate, Tensor y, int frames) -> Tensor");
}

TORCH_LIBRARY_IMPL(lc_ops, CUDA, m) { m.impl("gated_residual_add", &gated_residual_add_cuda); }
