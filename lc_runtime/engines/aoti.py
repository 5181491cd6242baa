"""AOTInductor backend: ``torch.export`` + ``aoti_compile_and_package`` to a ``.pt2``, weights bound at load.

Build: the graph's wrapper module is exported with ``torch.export.export`` (static shapes from the spec) and
compiled by AOTInductor with ``aot_inductor.package_constants_in_so=False``: the package holds the generated
kernels (C++ on CPU; Triton cubins on GPU, including user Triton kernels registered with
``torch.library.triton_op``) and the wrapper, but not the weights. A 13.6B-parameter package is then a few MB
instead of 27 GB, and one checkpoint on disk serves any number of engine folders.

Load: ``load_package`` and then ``load_constants(state, check_full_update=True, user_managed=True)`` with the
tensors of the already-loaded model, keyed by their fully-qualified names (the wrapper's attribute prefix
included: ``dit.blocks.0.attn.qkv.weight``). ``user_managed`` makes the package use those very tensors (no copy,
no second 27 GB on the GPU), so a LoRA merged into the model in place (``dit.set_loras(..., merged=True)``) is
what the engine computes with, before or after binding. Unmerged LoRA adapters are extra modules the graph
does not contain; :class:`lc_runtime.engines.runtime.EngineDenoiser` refuses them.

``run_single_threaded=True`` (GPU) drops the package's internal locking so the call can be captured into a CUDA
graph (:class:`lc_runtime.engines.runtime.StaticGraph`).

Attention: the exported graph keeps ``scaled_dot_product_attention`` as one op, whose fused kernel is chosen by
PyTorch's SDPA priority either when Inductor lowers it or, for a call left to the dispatcher, at run time. The
backend recorded in the manifest (cuDNN, flash, efficient) is therefore applied as the SDPA priority around the
compilation *and* around every call (:func:`sdpa_priority`), so the engine runs the kernel it was built for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..export.modules import unwrap_outputs
from .manifest import EngineMismatchError


def sdpa_priority(attention: str):
    """SDPA kernel priority of an attention backend of ``lc_runtime.ops.attention`` (a context manager; a no-op for
    backends that are not PyTorch SDPA kernels)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..ops.attention import _SDPA_ORDER  # the runtime's own priority lists, so engine and eager agree

    order = _SDPA_ORDER.get(attention)
    return contextlib.nullcontext() if order is None else sdpa_kernel([*order, SDPBackend.MATH], set_priority=True)


@contextlib.contextmanager
def writers_kept_alive():
    """Work around an AOTInductor C++-wrapper bug that fails builds at random (pytorch/pytorch PR 193621).

    ``CppWrapperCpu.codegen_int_array_var`` caches the ``int_array_N`` size/stride declarations it emits, keyed
    by ``id()`` of the buffer written to. The buffers of custom-op calls (``aoti_torch_proxy_executor_call_function``:
    our FlashAttention-3 and block-sparse attention ops) are short-lived, so a later buffer can get a freed one's
    id, hit the cache and emit no declaration: ``'int_array_206' was not declared in this scope`` (seen twice on the
    H200, bench/results/engines_*-1816-build-error.json and *-1919.json). Keeping every buffer alive while the
    graph is compiled keeps the ids unique, so each buffer gets its own declarations; a cache hit is then always
    the same buffer, which is what the cache means. A no-op where this torch has no such cache."""
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        yield
        return
    original = getattr(CppWrapperCpu, "codegen_int_array_var", None)
    if original is None:
        yield
        return
    alive: dict[int, object] = {}

    def codegen_int_array_var(self, int_array, writeline, *args, **kwargs):
        owner = getattr(writeline, "__self__", writeline)
        alive.setdefault(id(owner), owner)
        return original(self, int_array, writeline, *args, **kwargs)

    CppWrapperCpu.codegen_int_array_var = codegen_int_array_var
    try:
        yield
    finally:
        CppWrapperCpu.codegen_int_array_var = original
        alive.clear()


def build_aoti(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    attention: str = "",
    cxx: str | None = None,
    **inductor_configs,
) -> None:
    """Export ``module(*inputs)`` and compile it to the AOTInductor package ``path`` (``.pt2``), weights left out.
    ``cxx``: the C++ compiler (default: :func:`lc_runtime.engines.cxx.choose_cxx`'s, one whose packages load)."""
    if cxx is None:
        from .cxx import choose_cxx

        cxx = choose_cxx()[0]
    with torch.no_grad(), sdpa_priority(attention):
        program = torch.export.export(module.eval(), tuple(inputs), strict=False)
        configs = {"aot_inductor.package_constants_in_so": False, "cpp.cxx": (None, cxx), **inductor_configs}
        with writers_kept_alive():
            torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def derived_constants(module: nn.Module, fqns: list[str]) -> dict[str, torch.Tensor]:
    """Constants a graph reads that are not in the state dict but derived from it, made on ``module`` as its fast
    path makes them: ``owner.X`` made by ``owner.fuse_X()`` (the FFN's fused [w1; w3] weight ``w13``, whose halves
    then alias w1 and w3: no extra memory)."""
    out = {}
    for fqn in fqns:
        path, _, leaf = fqn.rpartition(".")
        try:
            owner = module.get_submodule(path)
        except AttributeError:
            continue
        make = getattr(owner, f"fuse_{leaf}", None)
        if make is not None:
            make()
        value = getattr(owner, leaf, None)
        if isinstance(value, torch.Tensor):
            out[fqn] = value
    return out


def bind_constants(compiled, module: nn.Module, where: str) -> None:
    """Point the package's constants at ``module``'s tensors (by reference, see the module docstring)."""
    state = module.state_dict()
    fqns = compiled.get_constant_fqns()
    state.update(derived_constants(module, [f for f in fqns if f not in state]))
    missing = [f for f in fqns if f not in state]
    if missing:
        raise EngineMismatchError(
            f"{where}: the model lacks {len(missing)} tensors the engine needs (e.g. {missing[0]!r}); "
            "it was built from another architecture: rebuild it"
        )
    constants = {f: state[f] for f in fqns}
    try:
        compiled.load_constants(constants, check_full_update=True, user_managed=True)
    except TypeError:  # torch without user-managed constants: the package keeps its own copy
        compiled.load_constants(constants, check_full_update=True)


class _Package:
    """The calls of a loaded ``.pt2`` that the runtime makes, straight on torch's C++ package loader. torch's own
    Python wrapper (``torch.export.pt2_archive._package.AOTICompiledModel``) does the same, but importing its
    module imports ``torch._dynamo`` and the export serializer: 2.5 s of a cold start on our CPU machine, spent
    on every ``lc-runtime run --engines``. Graphs take and return flat tuples of tensors, so no pytree specs."""

    def __init__(self, loader):
        self.loader = loader

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return self.loader.boxed_run(list(inputs))

    def get_constant_fqns(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def load_constants(self, constants: dict, *, check_full_update: bool, user_managed: bool = False) -> None:
        self.loader.load_constants(constants, False, check_full_update, user_managed)


def load_aoti_package(path: str | Path, *, run_single_threaded: bool, device_index: int):
    """Open a ``.pt2`` built by :func:`build_aoti`, as ``torch._inductor.package.load_package`` does but without its
    device-information probe: that probe (``get_device_information`` -> ``pick_vec_isa``) compiles six C++ test
    programs in every fresh process, only to log a warning when the CPU ISA differs from the build machine's:
    8 s on our CPU machine and 45 s of the 55 s cold start measured on the H200 (bench/results/engines_*1709.md).
    The manifest already checks what matters here (GPU arch, torch version). Falls back to ``load_package`` when
    this torch lacks the pieces."""
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is not None and hasattr(loader_class, "boxed_run"):
        try:
            return _Package(loader_class(str(path), "model", run_single_threaded, 1, device_index))
        except TypeError:  # re-signed in this torch: the public loader knows
            pass
    from torch._inductor.package import load_package

    return load_package(str(path), run_single_threaded=run_single_threaded, device_index=device_index)


class AOTIGraph:
    """A loaded ``.pt2`` with its weights bound: ``graph(*inputs) -> tuple of outputs``."""

    def __init__(
        self, path: str | Path, module: nn.Module, *, device: torch.device, single_threaded: bool, attention: str = ""
    ):
        self.attention = attention
        if attention == "fa3":  # the package calls FlashAttention-3's op: register it before loading
            from ..ops.attention import fa3_interface

            if fa3_interface() is None:
                raise EngineMismatchError(
                    f"{path} was built with FlashAttention-3, not installed here: pip install 'lc-runtime[fa3]'"
                )
        # the runtime's custom ops a graph may call (fused kernels, block-sparse attention) must be registered
        # before the package resolves them
        from ..ops import block_sparse_attention, fused  # noqa: F401

        device = torch.device(device)
        index = device.index if device.type == "cuda" and device.index is not None else -1
        self.path = Path(path)
        self.compiled = load_aoti_package(path, run_single_threaded=single_threaded, device_index=index)
        bind_constants(self.compiled, module, str(path))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the kernels were compiled for the contiguous strides of the sample inputs and do not check them
        with sdpa_priority(self.attention):
            return unwrap_outputs(self.compiled(*(x.contiguous() for x in inputs)))
