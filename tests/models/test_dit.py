"""DiT parity with the original (goldens from tests/fixtures/golden), KV cache, LoRA, loading and export.

Tolerances: the goldens are fp32 CPU runs of the original; ours is fp32 too but with other reduction orders
(SDPA vs the reference's attention, fused vs split matmuls), so outputs agree to float32 rounding accumulated
over two blocks: rtol 1e-5 and atol 1e-5·max|ref| (outputs are O(5)).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY, assert_close
from safetensors.torch import load_file, save_file

from lc_runtime.config import ConfigError, DiTConfig
from lc_runtime.models.dit import LongCatDiT, init_random_, load_dit
from lc_runtime.ops.attention import prefix_attention, prefix_attention_ref
from lc_runtime.ops.rope import apply_rope, rope_angles, rope_cos_sin
from lc_runtime.weights import CheckpointError

DIT_DIR = TINY / "dit"
LORA_DIR = TINY / "lora"


def tol(ref: torch.Tensor) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5 * float(ref.abs().max())}


@pytest.fixture(scope="module")
def dit():
    return load_dit(DIT_DIR, dtype=torch.float32)


@torch.no_grad()
@pytest.mark.parametrize("case", ["dit_t2v", "dit_t2v_perframe", "dit_cond1", "dit_cond2"])
def test_forward_matches_golden(dit, golden, case):
    g = golden(case)
    nc = g.meta["num_cond_latents"]
    out = dit(g["hidden_states"], g["timestep"], g["encoder_hidden_states"], g["encoder_attention_mask"], nc)
    assert out.dtype == torch.float32
    assert_close(out, g["output"], **tol(g["output"]), what=case)


@torch.no_grad()
def test_kv_cache_matches_golden(dit, golden):
    g = golden("dit_kvcache")
    nc = g.meta["num_cond_latents"]
    kv, prefill_out = dit.prefill(g["cond_latents"], return_output=True)
    assert_close(prefill_out, g["prefill_output"], **tol(g["prefill_output"]), what="prefill output")
    # our cache holds K already roped at t = 0..nc-1; the original stores it before RoPE
    grid = (nc, g["cond_latents"].shape[3] // 2, g["cond_latents"].shape[4] // 2)
    cos, sin = rope_cos_sin(grid, dit.config.head_dim)
    for i in range(dit.config.depth):
        k_ref = apply_rope(g[f"kv_cache.{i}.k"], cos, sin)
        assert_close(kv.k[i], k_ref, rtol=1e-5, atol=1e-5, what=f"K block {i}")
        assert_close(kv.v[i], g[f"kv_cache.{i}.v"], rtol=1e-5, atol=1e-5, what=f"V block {i}")
    text = (g["encoder_hidden_states"], g["encoder_attention_mask"])
    cached = dit(g["noise_latents"], g["timestep_noise"], *text, kv_cache=kv)
    assert_close(cached, g["output_cached"], **tol(g["output_cached"]), what="cached decode")
    full = dit(g["full_hidden_states"], g["full_timestep"], *text, num_cond_latents=nc)
    assert_close(full, g["output_nocache"], **tol(g["output_nocache"]), what="conditioned forward")
    # the cached decode equals the conditioned forward on the noise frames
    assert_close(cached, full[:, :, nc:], **tol(full), what="cached vs conditioned")


@torch.no_grad()
def test_prefix_attention_equals_concatenation():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g) for _ in range(3))
    kp, vp = (torch.randn(1, 3, 12, 16, generator=g) for _ in range(2))
    assert_close(prefix_attention(q, k, v, kp, vp), prefix_attention_ref(q, k, v, kp, vp), rtol=1e-5, atol=1e-6)


def test_rope_matches_golden(golden):
    g = golden("rope")
    for entry in g.meta["entries"]:
        p, d = entry["prefix"], entry["head_dim"]
        if "num_cond_latents" in entry:
            nc = entry["num_cond_latents"]
            T, H, W = entry["grid"]
            assert torch.equal(rope_angles((T, H, W), d), g[f"{p}.angles"])
            cos, sin = rope_cos_sin((T - nc, H, W), d, t_offset=nc)
            assert_close(apply_rope(g[f"{p}.q_new"], cos, sin), g[f"{p}.q_rot"], rtol=1e-6, atol=1e-6, what=p)
            # RoPE-skip: cache roped alone at t=0..nc-1 ++ new tokens roped at t=nc.. == re-roping everything
            c0, s0 = rope_cos_sin((nc, H, W), d)
            k_full = torch.cat([apply_rope(g[f"{p}.k_cache"], c0, s0), apply_rope(g[f"{p}.k_new"], cos, sin)], 2)
            assert_close(k_full, g[f"{p}.k_full_rot"], rtol=1e-6, atol=1e-6, what=p)
        else:
            ang = rope_angles(tuple(entry["grid"]), d)
            assert torch.equal(ang, g[f"{p}.angles"]), p
            assert torch.equal(ang.cos(), g[f"{p}.cos"]) and torch.equal(ang.sin(), g[f"{p}.sin"])
            cos, sin = ang.cos(), ang.sin()
            for x in ("q", "k"):
                assert_close(apply_rope(g[f"{p}.{x}"], cos, sin), g[f"{p}.{x}_rot"], rtol=1e-6, atol=1e-6, what=p)


LORA_CASES = {
    "dit_lora_cfg_step": {"cfg_step": 1.0},
    "dit_lora_refinement": {"refinement": 1.0},
    "dit_lora_both": {"cfg_step": 1.0, "refinement": 0.5},
    "dit_lora_refinement_cond1": {"refinement": 1.0},
}


@pytest.fixture(scope="module")
def lora_dit():
    m = load_dit(DIT_DIR, dtype=torch.float32)
    m.load_lora(LORA_DIR / "cfg_step_lora.safetensors", "cfg_step")
    m.load_lora(LORA_DIR / "refinement_lora.safetensors", "refinement")
    return m


@torch.no_grad()
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_matches_golden(lora_dit, golden, case, merged):
    g = golden(case)
    nc = g.meta.get("num_cond_latents", 0)
    args = (g["hidden_states"], g["timestep"], g["encoder_hidden_states"], g["encoder_attention_mask"], nc)
    lora_dit.set_loras({})
    assert_close(lora_dit(*args), g["output_base"], **tol(g["output_base"]), what=f"{case} base")
    lora_dit.set_loras(LORA_CASES[case], merged=merged)
    assert lora_dit.active_loras == LORA_CASES[case]
    assert_close(lora_dit(*args), g["output"], **tol(g["output"]), what=f"{case} lora")
    lora_dit.set_loras({})


@torch.no_grad()
def test_merged_lora_restores_base_weights_exactly(lora_dit):
    lora_dit.set_loras({})
    before = {k: v.clone() for k, v in lora_dit.state_dict().items()}
    for loras in ({"cfg_step": 1.0}, {"refinement": 0.7, "cfg_step": 0.3}, {"refinement": 1.0}):
        lora_dit.set_loras(loras, merged=True)
        assert any(not torch.equal(before[k], v) for k, v in lora_dit.state_dict().items())
    lora_dit.set_loras({})
    after = lora_dit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@torch.no_grad()
def test_merged_equals_unmerged_with_multipliers(lora_dit, golden):
    g = golden("dit_lora_both")
    args = (g["hidden_states"], g["timestep"], g["encoder_hidden_states"], g["encoder_attention_mask"])
    loras = {"cfg_step": -0.4, "refinement": 1.7}
    lora_dit.set_loras(loras, merged=True)
    merged = lora_dit(*args)
    lora_dit.set_loras(loras, merged=False)
    unmerged = lora_dit(*args)
    lora_dit.set_loras({})
    assert_close(merged, unmerged, **tol(unmerged), what="merged vs unmerged")


def test_lora_errors(lora_dit, tmp_path):
    with pytest.raises(KeyError, match="not loaded"):
        lora_dit.set_loras({"nope": 1.0})
    bad = tmp_path / "bad.safetensors"
    save_file(
        {"lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___nothing.lora_down.weight": torch.ones(2, 2)}, bad
    )
    with pytest.raises(CheckpointError, match="lacks"):
        lora_dit.load_lora(bad, "bad")
    with pytest.raises(CheckpointError, match="not found"):
        lora_dit.load_lora(tmp_path / "missing.safetensors", "x")


# --------------------------------------------------------------------------- other configs, zero-pad off
def random_dit(**overrides) -> LongCatDiT:
    cfg = DiTConfig(hidden_size=128, depth=3, num_heads=2, caption_channels=24, adaln_tembed_dim=32, **overrides)
    return init_random_(LongCatDiT(cfg), seed=3).eval()


@torch.no_grad()
def test_masked_text_equals_per_sample_packed_text():
    """text_tokens_zero_pad false: each sample attends only its own valid tokens (the original's varlen)."""
    m = random_dit(text_tokens_zero_pad=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 2, 4, 6, generator=g)
    t = torch.tensor([900.0, 300.0])
    y = torch.randn(2, 1, 512, 24, generator=g)
    lengths = [5, 17]
    mask = torch.zeros(2, 512, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    out = m(x, t, y, mask)
    for b, n in enumerate(lengths):
        ref = m(x[b : b + 1], t[b : b + 1], y[b : b + 1, :, :n], None)
        assert_close(out[b : b + 1], ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), what=f"sample {b}")


@torch.no_grad()
@pytest.mark.parametrize("zero_pad", [True, False])
def test_cached_decode_equals_conditioned_forward_head_dim_64(zero_pad):
    m = random_dit(text_tokens_zero_pad=zero_pad)
    assert m.config.head_dim == 64
    g = torch.Generator().manual_seed(2)
    nc, tn = 2, 3
    cond = torch.randn(1, 16, nc, 4, 6, generator=g)
    noise = torch.randn(2, 16, tn, 4, 6, generator=g)
    y = torch.randn(2, 1, 512, 24, generator=g)
    mask = torch.zeros(2, 512, dtype=torch.long)
    mask[0, :9], mask[1, :30] = 1, 1
    t = torch.tensor([[700.0] * tn, [700.0] * tn])
    cached = m(noise, t, y, mask, kv_cache=m.prefill(cond))
    full_t = torch.cat([torch.zeros(2, nc), t], 1)
    full = m(torch.cat([cond.expand(2, -1, -1, -1, -1), noise], 2), full_t, y, mask, num_cond_latents=nc)
    assert_close(cached, full[:, :, nc:], rtol=1e-5, atol=1e-5 * float(full.abs().max()), what="cached")


@torch.no_grad()
def test_bf16_precision_policy():
    """bf16 weights: the timestep is rounded to bf16 (998.27 and 1000 are the same input), the output is fp32,
    and it stays within bf16 precision of the fp32 model (relative L2 error a few bf16 ulps: 2^-8 each)."""
    m32 = load_dit(DIT_DIR, dtype=torch.float32)
    m16 = load_dit(DIT_DIR, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    y = torch.randn(1, 1, 512, 24, generator=g)
    mask = torch.ones(1, 512, dtype=torch.long)
    a = m16(x, torch.tensor([998.27]), y, mask)
    b = m16(x, torch.tensor([1000.0]), y, mask)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    ref = m32(x, torch.tensor([1000.0]), y, mask)
    rel = (a - ref).norm() / ref.norm()
    assert rel < 8 * 2**-8, f"bf16 relative L2 error {rel:.3e}"


# --------------------------------------------------------------------------- loading
def copy_ckpt(tmp_path):
    dst = tmp_path / "dit"
    shutil.copytree(DIT_DIR, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def rewrite_shard(folder, edit):
    shard = folder / "diffusion_pytorch_model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))
    return shard


def test_load_is_lossless(dit):
    files = sorted(DIT_DIR.glob("*.safetensors"))
    ref = {}
    for f in files:
        ref.update(load_file(str(f)))
    sd = dit.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_missing_key(tmp_path):
    d = copy_ckpt(tmp_path)
    rewrite_shard(d, lambda t: t.pop(sorted(t)[0]))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_dit(d, dtype=torch.float32)


def test_unexpected_key(tmp_path):
    d = copy_ckpt(tmp_path)
    shard = rewrite_shard(d, lambda t: t.update({"blocks.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=rf"unexpected key 'blocks.9.extra.weight' in .*{shard.name}"):
        load_dit(d, dtype=torch.float32)


def test_wrong_shape(tmp_path):
    d = copy_ckpt(tmp_path)

    def edit(t):
        key = sorted(k for k in t if k.endswith("ffn.w2.weight"))[0]
        t[key] = torch.zeros(3, 3)

    shard = rewrite_shard(d, edit)
    with pytest.raises(CheckpointError, match=rf"shape mismatch for .*ffn.w2.weight.* in .*{shard.name}.*\[3, 3\].*"):
        load_dit(d, dtype=torch.float32)


def test_truncated_shard(tmp_path):
    d = copy_ckpt(tmp_path)
    shard = d / "diffusion_pytorch_model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=shard.name):
        load_dit(d, dtype=torch.float32)


def test_bad_config(tmp_path):
    d = copy_ckpt(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_heads"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"hidden_size \(64\) must be divisible by num_heads \(3\)"):
        load_dit(d, dtype=torch.float32)
    with pytest.raises(ConfigError, match="not found"):
        load_dit(tmp_path / "nowhere", dtype=torch.float32)


def test_bad_inputs(dit):
    y, mask = torch.zeros(1, 1, 512, 24), torch.ones(1, 512, dtype=torch.long)
    with pytest.raises(ValueError, match="H % 2 == 0"):
        dit(torch.zeros(1, 16, 2, 5, 4), torch.tensor([1.0]), y, mask)
    with pytest.raises(ValueError, match="timestep must be"):
        dit(torch.zeros(1, 16, 2, 4, 4), torch.zeros(1, 3), y, mask)
    with pytest.raises(ValueError, match="text_embeds must be"):
        dit(torch.zeros(1, 16, 2, 4, 4), torch.tensor([1.0]), torch.zeros(1, 1, 512, 7), mask)


# --------------------------------------------------------------------------- export
class _Prefill(torch.nn.Module):
    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, cond):
        return tuple(self.dit.prefill(cond))


def test_torch_export_three_graphs(dit):
    g = torch.Generator().manual_seed(5)
    y = torch.randn(2, 1, 512, 24, generator=g)
    mask = torch.ones(2, 512, dtype=torch.long)
    x = torch.randn(2, 16, 3, 4, 6, generator=g)
    t = torch.tensor([[0.0, 500.0, 500.0]] * 2)
    cond = torch.randn(1, 16, 1, 4, 6, generator=g)
    with torch.no_grad():
        full = torch.export.export(dit, (x, t, y, mask), {"num_cond_latents": 1})
        assert_close(full.module()(x, t, y, mask, num_cond_latents=1), dit(x, t, y, mask, 1), rtol=1e-5, atol=1e-5)
        pre = torch.export.export(_Prefill(dit), (cond,))
        k, v = pre.module()(cond)
        kv = dit.prefill(cond)
        assert torch.equal(k, kv.k) and torch.equal(v, kv.v)
        noise, tn = x[:, :, 1:], t[:, 1:]
        dec = torch.export.export(dit, (noise, tn, y, mask), {"kv_cache": kv})
        assert_close(
            dec.module()(noise, tn, y, mask, kv_cache=kv), dit(noise, tn, y, mask, kv_cache=kv), rtol=1e-5, atol=1e-5
        )


@torch.no_grad()
@pytest.mark.parametrize("nc", [0, 4])
def test_block_sparse_attention_in_the_dit(dit, nc):
    """BSA keeping every block (sparsity 0) is dense attention; at the shipped sparsity it changes the output."""
    from lc_runtime.config import BSAParams

    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 8, 8, 8, generator=g)  # token grid (8, 4, 4): 2 x 1 x 1 blocks of 4x4x4
    t = torch.cat([torch.zeros(1, nc), torch.full((1, 8 - nc), 600.0)], 1)
    y, mask = torch.randn(1, 1, 512, 24, generator=g), torch.ones(1, 512, dtype=torch.long)
    dense = dit(x, t, y, mask, num_cond_latents=nc)
    try:
        dit.enable_bsa(BSAParams(sparsity=0.0))
        assert dit.bsa_enabled
        assert_close(dit(x, t, y, mask, num_cond_latents=nc), dense, **tol(dense), what="bsa sparsity 0")
        dit.enable_bsa(BSAParams(sparsity=0.5))  # one of the two key blocks per query block
        assert (dit(x, t, y, mask, num_cond_latents=nc) - dense).abs().max() > 1e-3
    finally:
        dit.disable_bsa()
    assert not dit.bsa_enabled
