"""Test-only patches of Triton 3.6's interpreter (TRITON_INTERPRET=1) so kernels run on CPU as on the GPU."""

from __future__ import annotations

import torch


def install_interpreter_shims() -> list[str]:
    """Work around Triton 3.6 interpreter limits (test-only; the compiled GPU path is unaffected):
    - scalars are 1-element arrays and ``range(tensor)`` calls int() on them, an error since NumPy 2.4
      (triton-lang/triton#9171);
    - bf16 is stored as uint16 and ``tl.dot`` would multiply the raw bits: upcast bf16 operands to fp32 first
      (what the tensor cores do: exact products, fp32 accumulation);
    - fp32 -> bf16 casts truncate: round to nearest even, as the GPU's cvt.rn does.
    """
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    applied = []
    patch_tensor = interp._patch_lang_tensor

    def patched_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched_tensor
    applied.append("index")

    def to_f32(handle):
        raw = torch.from_numpy(np.ascontiguousarray(handle.data).view(np.int16))
        return interp.TensorHandle(raw.view(torch.bfloat16).float().numpy(), tl.float32)

    create_dot = interp.InterpreterBuilder.create_dot

    def patched_dot(self, a, b, d, *args):
        a = to_f32(a) if a.dtype.scalar == tl.bfloat16 else a
        b = to_f32(b) if b.dtype.scalar == tl.bfloat16 else b
        return create_dot(self, a, b, d, *args)

    interp.InterpreterBuilder.create_dot = patched_dot
    applied.append("bf16 dot")
    cast_impl = interp.InterpreterBuilder.cast_impl

    def patched_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interp.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    interp.InterpreterBuilder.cast_impl = patched_cast
    applied.append("bf16 rne cast")
    return applied
