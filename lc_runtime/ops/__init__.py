"""Custom ops: each is a fast kernel with a pure-PyTorch reference beside it (STYLE #7)."""

from lc_runtime.ops.block_sparse_attention import block_sparse_attention, block_sparse_attention_ref

__all__ = ["block_sparse_attention", "block_sparse_attention_ref"]
