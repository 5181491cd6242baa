// Launcher of the fused gated residual add (no torch dependency: shared by the torch op and the TensorRT plugin).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace lc {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[b, n, c] = dtype(float(x[b, n, c]) + gate[b, n / (tokens / frames), c] * float(y[b, n, c]))
//   x, y, out: contiguous [batch, tokens, channels] in `dtype`; gate: contiguous fp32 [batch, frames, channels]
//   (the DiT's [B, T, 1, C] modulation); tokens % frames == 0. out may alias x (in place) but not y.
// Returns the launch status (cudaSuccess, or cudaErrorInvalidValue for inconsistent sizes).
cudaError_t launch_gated_residual_add(void* out, const void* x, const float* gate, const void* y, DType dtype,
                                      int64_t batch, int64_t tokens, int64_t frames, int64_t channels,
                                      cudaStream_t stream);

}  // namespace lc
