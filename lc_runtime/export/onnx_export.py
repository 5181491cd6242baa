"""``export_onnx``: one graph spec -> an opset-23 ONNX file (torch.onnx dynamo exporter + our graph rewrites).

What the exporter gives and what we add:
  * ``Attention`` (opset 23) for every ``scaled_dot_product_attention`` (self-attention, masked or not, and the
    caption cross-attention), and ``RMSNormalization`` (opset 23) for the q/k RMS norms: emitted by the
    exporter itself.
  * ``RotaryEmbedding`` (opset 23, ``interleaved=1``): our 3-D RoPE is GPT-J style (pairs (x0, x1) rotate to
    (x0·cos − x1·sin, x1·cos + x0·sin)) with constant per-token angle tables; the exporter decomposes it into
    Reshape/Gather/Neg/Concat/Mul/Add, so :class:`InterleavedRotaryFusion` matches that subgraph and replaces it by
    one ``RotaryEmbedding`` whose caches are the tables' even columns and whose position ids are 0..N-1.
  * Attention *with log-sum-exp*: the cached decode merges the attention over the KV cache and over the new
    tokens by their log-sum-exps (``ops.attention.prefix_attention``). ONNX ``Attention`` has no LSE output, and
    torchlib's translation of ``aten::_scaled_dot_product_flash_attention_for_cpu`` returns a zero-filled
    placeholder LSE (silently wrong numbers), so :func:`attention_with_lse` replaces it: fp32 scores, one
    ``ReduceLogSumExp``, ``Exp(s − lse)`` and the PV product — the same math as ``attention_ref``, decomposed.
  * Weights above 2 GB go to external data (``<file>.onnx.data``), as the protobuf limit requires.

``decompose`` undoes single ops for runtimes that lack them (TensorRT builds, :mod:`lc_runtime.engines.tensorrt`):
"Attention" and "RMSNormalization" are rewritten into MatMul/Softmax and ReduceMean/Sqrt primitives, and
"RotaryEmbedding" is simply not fused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .specs import GraphSpec

OPSET = 23
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB for the whole file; keep a margin
DECOMPOSABLE = ("Attention", "RMSNormalization", "RotaryEmbedding")


def _const(value) -> np.ndarray | None:
    """The numpy value of a constant ONNX value (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attr = value.producer().attributes.get("value")
        tensor = None if attr is None else attr.value
    return None if tensor is None else tensor.numpy()


def _rules():
    """The rewrite rules (built lazily: onnxscript is an optional dependency)."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    class InterleavedRotaryFusion(pattern.RewriteRuleClassBase):
        """x·cos + rotate_pairs(x)·sin with constant pair-duplicated [N, D] tables -> RotaryEmbedding."""

        def pattern(self, op, x, cos, sin, pair_shape, i_odd, i_even, ax_a, ax_b, out_shape):
            pairs = op.Reshape(x, pair_shape, _allow_other_attributes=True)
            odd = op.Gather(pairs, i_odd, _allow_other_attributes=True, _outputs=["odd"])
            even = op.Gather(pairs, i_even, _allow_other_attributes=True, _outputs=["even"])
            stacked = op.Concat(op.Unsqueeze(op.Neg(odd), ax_a), op.Unsqueeze(even, ax_b), axis=-1)
            rotated = op.Reshape(stacked, out_shape, _allow_other_attributes=True)
            return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

        def check(self, context, x, cos, sin, i_odd, i_even, odd, even, pair_shape, **_):
            result = pattern.MatchResult()
            if x.shape is None or x.shape.rank() != 4 or not all(isinstance(d, int) for d in x.shape):
                return result.fail("x is not a static [B, H, N, D] tensor")
            _, _, N, D = x.shape
            c, s = _const(cos), _const(sin)
            if c is None or s is None or c.shape != (N, D) or s.shape != (N, D):
                return result.fail("cos/sin are not constant [N, D] tables")
            if not (np.array_equal(c[:, 0::2], c[:, 1::2]) and np.array_equal(s[:, 0::2], s[:, 1::2])):
                return result.fail("cos/sin are not pair-duplicated (not interleaved RoPE)")
            io, ie, ps = _const(i_odd), _const(i_even), _const(pair_shape)
            if io is None or ie is None or io.size != 1 or ie.size != 1 or int(io) != 1 or int(ie) != 0:
                return result.fail("not the (-x1, x0) pair rotation")
            if ps is None or ps.size != 5 or int(ps[-1]) != 2:
                return result.fail("not a split of the head dim into pairs")
            for node in (odd.producer(), even.producer()):
                if node.attributes.get_int("axis", 0) not in (4, -1):
                    return result.fail("gather is not on the pair axis")
            return result

        def rewrite(self, op, x, cos, sin, **_):
            B, _, N, D = x.shape
            even_cols = [op.Constant(value_ints=[v]) for v in (0, D, 1, 2)]  # [:, 0:D:2]
            positions = np.broadcast_to(np.arange(N, dtype=np.int64), (B, N)).copy()
            return op.RotaryEmbedding(
                x,
                op.Slice(cos, *even_cols),
                op.Slice(sin, *even_cols),
                op.Constant(value=ir.tensor(positions)),
                interleaved=1,
            )

    class DecomposeRMSNormalization(pattern.RewriteRuleClassBase):
        """RMSNormalization -> fp32 statistics, cast back, gain multiply (the DiT's own order, SPEC §1.3)."""

        def pattern(self, op, x, scale):
            return op.RMSNormalization(x, scale, _allow_other_attributes=True, _outputs=["y"])

        def check(self, context, x, y, **_):
            result = pattern.MatchResult()
            axis = y.producer().attributes.get_int("axis", -1)
            if x.shape is None or axis not in (-1, x.shape.rank() - 1):
                return result.fail("only last-axis RMSNormalization is decomposed")
            return result

        def rewrite(self, op, x, scale, y, **_):
            eps = y.producer().attributes.get_float("epsilon", 1e-5)
            f32 = ir.DataType.FLOAT
            xf = op.Cast(x, to=f32)
            ms = op.ReduceMean(op.Mul(xf, xf), op.Constant(value_ints=[-1]), keepdims=1)
            inv = op.Reciprocal(op.Sqrt(op.Add(ms, op.Constant(value_float=eps))))
            return op.Mul(op.Cast(op.Mul(xf, inv), to=x.dtype), scale)

    class DecomposeAttention(pattern.RewriteRuleClassBase):
        """Non-causal Attention (optional bool mask) -> MatMul, fp32 scaled softmax, MatMul (flash numerics:
        scores accumulate in the input dtype's GEMM, softmax in fp32, probabilities rounded to V's dtype)."""

        def __init__(self, masked: bool):
            super().__init__(name=f"DecomposeAttention{'Masked' if masked else ''}")
            self.masked = masked

        def pattern(self, op, q, k, v, mask):
            args = (q, k, v, mask) if self.masked else (q, k, v)
            return op.Attention(*args, _allow_other_attributes=True, _outputs=["y"])

        def check(self, context, q, y, mask=None, **_):
            result = pattern.MatchResult()
            attrs = y.producer().attributes
            if attrs.get_int("is_causal", 0) or attrs.get_float("softcap", 0.0):
                return result.fail("causal / softcapped attention is not decomposed")
            if q.shape is None or q.shape.rank() != 4 or not isinstance(q.shape[-1], int):
                return result.fail("q is not a [B, H, S, D] tensor with a static head dim")
            if self.masked and mask is not None and mask.dtype != ir.DataType.BOOL:
                return result.fail("only boolean masks are decomposed")
            return result

        def rewrite(self, op, q, k, v, y, mask=None, **_):
            d = q.shape[-1]
            scale = y.producer().attributes.get_float("scale", d**-0.5)
            f32 = ir.DataType.FLOAT
            s = op.Mul(
                op.Cast(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), to=f32), op.Constant(value_float=scale)
            )
            if self.masked:
                s = op.Where(mask, s, op.Constant(value_float=float("-inf")))
            p = op.Cast(op.Softmax(s, axis=-1), to=v.dtype)
            return op.MatMul(p, v)

    return {
        "fuse_rope": pattern.RewriteRuleSet([InterleavedRotaryFusion.rule()]),
        "RMSNormalization": pattern.RewriteRuleSet([DecomposeRMSNormalization.rule()]),
        "Attention": pattern.RewriteRuleSet([DecomposeAttention.rule(True), DecomposeAttention.rule(False)]),
    }


def attention_with_lse(query, key, value, dropout_p: float = 0.0, is_causal: bool = False, attn_mask=None, scale=None):
    """ONNX translation of ``aten::_scaled_dot_product_flash_attention_for_cpu`` (and its CUDA siblings' first two
    outputs): (out [B, H, S, D] in q's dtype, lse [B, H, S] fp32), computed as ``ops.attention.attention_lse``'s
    reference: fp32 scores, ReduceLogSumExp, exp(s - lse) @ v. Called by the exporter with ONNX values."""
    import onnx_ir as ir
    from onnxscript import opset23 as op

    if is_causal or attn_mask is not None or dropout_p:
        raise NotImplementedError("attention_with_lse: causal, masked or dropout attention is not exported")
    d = query.shape[-1]
    f32 = ir.DataType.FLOAT
    q, k, v = (op.Cast(t, to=f32) for t in (query, key, value))
    s = op.Mul(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), op.Constant(value_float=scale or d**-0.5))
    lse = op.ReduceLogSumExp(s, op.Constant(value_ints=[-1]), keepdims=0)
    p = op.Exp(op.Sub(s, op.Unsqueeze(lse, op.Constant(value_ints=[-1]))))
    return op.Cast(op.MatMul(p, v), to=query.dtype), lse


def _translation_table() -> dict:
    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: attention_with_lse}


def op_counts(model) -> Counter:
    """Op-type histogram of an ``onnx_ir`` model or an ``onnx.ModelProto`` (main graph)."""
    graph = model.graph
    nodes = graph.node if isinstance(getattr(graph, "node", None), Iterable) else graph
    return Counter(n.op_type for n in nodes)


def export_onnx(
    spec: GraphSpec,
    module: nn.Module,
    path: str | Path,
    *,
    inputs: tuple[torch.Tensor, ...] | None = None,
    decompose: Iterable[str] = (),
    external_data: bool | None = None,
) -> dict[str, int]:
    """Export ``module`` (``spec.module(model)``) to opset-23 ONNX at ``path``; returns its op-type counts.

    ``inputs`` default to ``spec.sample_inputs`` on the module's device. Input and output names are the spec's.
    ``decompose``: any of :data:`DECOMPOSABLE`. ``external_data``: None = automatic (weights above 1.8 GB).
    """
    import onnxscript.optimizer

    decompose = set(decompose)
    unknown = decompose - set(DECOMPOSABLE)
    if unknown:
        raise ValueError(f"cannot decompose {sorted(unknown)}; choose from {', '.join(DECOMPOSABLE)}")
    path = Path(path)
    if inputs is None:
        device = next(iter(module.parameters())).device
        inputs = spec.sample_inputs(device)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" chatter
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            tuple(inputs),
            dynamo=True,
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            custom_translation_table=_translation_table(),
            optimize=True,
            verbose=False,
        )
    model = program.model
    rules = _rules()
    if "RotaryEmbedding" not in decompose:
        rules["fuse_rope"].apply_to_model(model)
    for name in sorted(decompose - {"RotaryEmbedding"}):
        rules[name].apply_to_model(model)
    onnxscript.optimizer.optimize(model)  # fold the rewrites' constant slices, drop dead nodes
    nbytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if external_data is None:
        external_data = nbytes > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=external_data)
    return dict(op_counts(model))
