"""Text encoder parity with the reference encode_prompt (golden `text`, SPEC §2.1), loading, and the tiny model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import assert_close
from safetensors.torch import load_file, save_file

from lc_runtime.models.text_encoder import MAX_SEQUENCE_LENGTH, TextEncoder, clean_prompt
from lc_runtime.weights import CheckpointError

# fp32 re-implementation vs fp32 reference on another BLAS path: ~1e-6 relative noise observed (max |ref| ~3.6),
# so 1e-5 relative with a 1e-5 floor leaves headroom without hiding a real mismatch (README: ~1e-5 rel for text).
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> TextEncoder:
    return TextEncoder.from_pretrained(tiny_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def case(golden):
    return golden("text")


@pytest.mark.parametrize(
    ("raw", "cleaned"), [("prompts", "prompts_cleaned"), ("negative_prompts", "negative_prompts_cleaned")]
)
def test_clean_prompt(case, raw, cleaned):
    assert [clean_prompt(p) for p in case.meta[raw]] == case.meta[cleaned]


@pytest.mark.parametrize("which", ["prompt", "negative"])
def test_tokenize_matches_reference(encoder, case, which):
    prompts = case.meta["prompts" if which == "prompt" else "negative_prompts"]
    ids, mask = encoder.tokenize(prompts)
    assert ids.dtype == mask.dtype == torch.int64
    assert torch.equal(ids, case[f"{which}_input_ids"])
    assert torch.equal(mask, case[f"{which}_attention_mask"])
    lengths = case.meta["prompt_valid_lengths" if which == "prompt" else "negative_valid_lengths"]
    assert mask.sum(1).tolist() == lengths


@pytest.mark.parametrize("which", ["prompt", "negative"])
def test_encode_matches_reference(encoder, case, which):
    prompts = case.meta["prompts" if which == "prompt" else "negative_prompts"]
    embeds, mask = encoder.encode(prompts)
    ref = case["prompt_embeds" if which == "prompt" else "negative_prompt_embeds"]
    assert embeds.shape == (5, 1, MAX_SEQUENCE_LENGTH, 24) and embeds.dtype == torch.float32
    assert_close(embeds, ref, rtol=RTOL, atol=ATOL, what=f"{which} embeds")
    assert mask.dtype == torch.int64
    assert torch.equal(mask, case[f"{which}_mask_returned"])


def test_encode_for_cfg_is_negative_then_positive(encoder, case):
    for i in (0, 2, 4):
        embeds, mask = encoder.encode_for_cfg(case.meta["prompts"][i], case.meta["negative_prompts"][i], True)
        assert embeds.shape == (2, 1, MAX_SEQUENCE_LENGTH, 24) and mask.shape == (2, MAX_SEQUENCE_LENGTH)
        assert_close(embeds[0], case["negative_prompt_embeds"][i], rtol=RTOL, atol=ATOL, what=f"neg {i}")
        assert_close(embeds[1], case["prompt_embeds"][i], rtol=RTOL, atol=ATOL, what=f"pos {i}")
        assert torch.equal(mask[0], case["negative_mask_returned"][i])
        assert torch.equal(mask[1], case["prompt_mask_returned"][i])


def test_encode_for_cfg_without_cfg_and_default_negative(encoder, case):
    prompt = case.meta["prompts"][1]
    embeds, mask = encoder.encode_for_cfg(prompt, "ignored", False)
    assert embeds.shape == (1, 1, MAX_SEQUENCE_LENGTH, 24) and mask.shape == (1, MAX_SEQUENCE_LENGTH)
    assert_close(embeds[0], case["prompt_embeds"][1], rtol=RTOL, atol=ATOL, what="pos only")
    # A missing negative prompt is the empty string (golden negative 1 is "").
    embeds, mask = encoder.encode_for_cfg(prompt, None, True)
    assert_close(embeds[0], case["negative_prompt_embeds"][1], rtol=RTOL, atol=ATOL, what="empty negative")
    assert mask[0].sum().item() == 1  # just EOS


def test_output_dtype_is_requested_dtype(encoder):
    embeds, mask = encoder.encode("a cat", dtype=torch.bfloat16)
    assert embeds.dtype == torch.bfloat16 and mask.dtype == torch.int64
    assert encoder.dtype == torch.float32  # weights untouched


def test_bad_prompts_raise(encoder):
    with pytest.raises(ValueError, match="no prompts"):
        encoder.encode([])
    with pytest.raises(TypeError, match="strings"):
        encoder.encode(["ok", 3])


def _copy_text_encoder(tiny_dir, dst, drop: str | None = None, extra: str | None = None):
    shutil.copytree(tiny_dir / "tokenizer", dst / "tokenizer")
    (dst / "text_encoder").mkdir()
    shutil.copy(tiny_dir / "text_encoder" / "config.json", dst / "text_encoder" / "config.json")
    index = json.loads((tiny_dir / "text_encoder" / "model.safetensors.index.json").read_text())
    tensors = {}
    for f in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(tiny_dir / "text_encoder" / f)))
    if drop:
        del tensors[drop]
    if extra:
        tensors[extra] = torch.zeros(3)
    save_file(tensors, str(dst / "text_encoder" / "model.safetensors"))


def test_single_file_copy_loads_identically(tiny_dir, tmp_path, encoder):
    _copy_text_encoder(tiny_dir, tmp_path)
    other = TextEncoder.from_pretrained(
        (tmp_path / "tokenizer", tmp_path / "text_encoder"), device="cpu", dtype=torch.float32
    )
    a, _ = encoder.encode("a dog runs")
    b, _ = other.encode("a dog runs")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("drop", "extra", "match"),
    [("encoder.final_layer_norm.weight", None, "missing"), (None, "encoder.block.0.bogus.weight", "unexpected")],
)
def test_strict_loading(tiny_dir, tmp_path, drop, extra, match):
    _copy_text_encoder(tiny_dir, tmp_path, drop=drop, extra=extra)
    with pytest.raises(CheckpointError, match=match):
        TextEncoder.from_pretrained(tmp_path, device="cpu", dtype=torch.float32)


def test_missing_folders_raise(tmp_path, tiny_dir):
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        TextEncoder.from_pretrained(tmp_path, device="cpu")
    shutil.copytree(tiny_dir / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(CheckpointError, match="no config.json"):
        TextEncoder.from_pretrained(tmp_path, device="cpu")


def test_random_tiny_is_deterministic_and_leaves_global_rng(tiny_dir):
    state = torch.random.get_rng_state()
    a = TextEncoder.random_tiny(tiny_dir / "tokenizer", seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    b = TextEncoder.random_tiny(tiny_dir / "tokenizer", seed=7)
    c = TextEncoder.random_tiny(tiny_dir / "tokenizer", seed=8)
    assert a.model.encoder.embed_tokens.weight is a.model.shared.weight  # tie kept
    ea, ma = a.encode(["a red car", "rain"])
    assert ea.shape == (2, 1, MAX_SEQUENCE_LENGTH, 24) and ea.dtype == torch.float32
    assert torch.isfinite(ea).all() and ea.std() > 0.1
    assert torch.equal(ea, b.encode(["a red car", "rain"])[0])
    assert not torch.allclose(ea, c.encode(["a red car", "rain"])[0])
    assert ma.sum(1).tolist() == [len(a.tokenize("a red car")[0][0].nonzero()), 2]


def test_auto_offload_policy(tiny_dir):
    tok = tiny_dir / "tokenizer"
    # No GPU needed: with a CUDA target and auto-offload the constructor only parks the weights on the CPU.
    enc = TextEncoder.random_tiny(tok, device="cuda")
    assert enc.auto_offload and next(enc.model.parameters()).device.type == "cpu"
    assert not TextEncoder.random_tiny(tok, device="cpu").auto_offload


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_leave_the_gpu_after_encoding(tiny_dir):
    tok = tiny_dir / "tokenizer"
    enc = TextEncoder.random_tiny(tok, device="cuda")
    embeds, mask = enc.encode("a cat")
    assert embeds.device.type == mask.device.type == "cuda"
    assert next(enc.model.parameters()).device.type == "cpu"
    resident = TextEncoder.random_tiny(tok, device="cuda", keep_resident=True)
    resident.encode("a cat")
    assert next(resident.model.parameters()).device.type == "cuda"
