"""Keeping the first call of our custom ops from importing ``torch._dynamo``.

``torch.library.custom_op`` wraps every kernel in ``torch._disable_dynamo``, which imports ``torch._dynamo`` (and
through it sympy, the FX symbolic-shape machinery, FSDP...) on the kernel's first call: 2-4 s measured on the
H200 machine inside the first denoising step of ``lc-runtime run`` (bench/results/engines_*-2114.json, a cProfile
of the cold start), although nothing in an inference process compiles anything. That wrapper only matters while
a ``torch.compile`` frame may be running, which needs ``torch._dynamo`` imported first. So until it is imported,
:func:`defer_dynamo_import` lets the kernel run as it is; once it is, the call is handed back to torch's own
wrapper for good. Where torch's internals differ (another version), it changes nothing.

FlashAttention-3's ``fa3-fwd`` registers its op the same way (the import in the first step on the H200 came from it
once ours were deferred), so :func:`defer_module_ops` applies the same to the custom ops a module defines.
"""

from __future__ import annotations

import sys

import torch

_ATTR = "__dynamo_disable"  # the attribute torch._disable_dynamo caches its wrapped kernel in


def _deferred(fn):
    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:  # no compiled frame can be running
            return fn(*args, **kwargs)
        delattr(fn, _ATTR)  # from now on torch's wrapper imports dynamo and disables it, as it would have
        return torch._disable_dynamo(fn)(*args, **kwargs)

    return call


def defer_dynamo_import(op) -> None:
    """Apply to every kernel of a ``torch.library.custom_op`` (see the module doc)."""
    for kernel in getattr(op, "_backend_fns", {}).values():
        fn = getattr(kernel, "__wrapped__", None)
        if fn is not None and getattr(fn, _ATTR, None) is None and "torch._dynamo" not in sys.modules:
            setattr(fn, _ATTR, _deferred(fn))


def defer_module_ops(module) -> None:
    """:func:`defer_dynamo_import` for every ``torch.library.custom_op`` defined at the top of ``module``."""
    try:
        from torch._library.custom_ops import CustomOpDef
    except ImportError:
        return
    for value in list(vars(module).values()):
        if isinstance(value, CustomOpDef):
            defer_dynamo_import(value)
