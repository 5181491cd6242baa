"""umT5 text encoder of LongCat-Video (SPEC §2.1): prompt cleaning, tokenization and ``UMT5EncoderModel``.

The encoder is the stock transformers ``UMT5EncoderModel`` loaded from the checkpoint's ``text_encoder/`` folder
(safetensors only, local files only: nothing is fetched and nothing is unpickled), with the tokenizer from
``tokenizer/``. Every prompt is padded to 512 tokens; the DiT sees all 512 positions (pad features are not zeroed
here, the DiT's ``text_tokens_zero_pad`` handles them).

Memory: the real encoder (umT5-XXL, ~11 GB in bf16) is needed once per request, so on CUDA its weights live on the
CPU between calls and are moved to the GPU only while encoding (``keep_resident=True`` keeps them on the GPU).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch
import transformers
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from lc_runtime.weights import CheckpointError

MAX_SEQUENCE_LENGTH = 512

# The tiny debug flavour: the dims of tests/fixtures/tiny-longcat/text_encoder/config.json (vocab = its tokenizer).
TINY_UMT5_CONFIG = dict(
    vocab_size=786,
    d_model=24,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=3,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    use_cache=False,
)

# `regex` rather than `re`: the reference collapses whitespace with `regex`, whose \s is Unicode White_Space
# (`re`'s \s also matches the ASCII separators U+001C..U+001F). `regex` is a dependency of transformers.
_WHITESPACE = regex.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """The reference's prompt cleaning: ftfy.fix_text, html.unescape twice, strip, collapse whitespace, strip."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


class TextEncoder:
    """Tokenizer + umT5 encoder producing the DiT's text conditioning.

    ``encode`` returns embeddings [B, 1, L, d_model] (L = 512) and the attention mask [B, L] int64, both on
    ``device``. Build with :meth:`from_pretrained` (checkpoint) or :meth:`random_tiny` (in-process debug model).
    """

    def __init__(
        self,
        tokenizer,
        model: UMT5EncoderModel,
        *,
        device: torch.device | str,
        keep_resident: bool = False,
        max_length: int = MAX_SEQUENCE_LENGTH,
    ):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.keep_resident = keep_resident
        self.max_length = max_length
        if self.auto_offload:
            self.offload()
        else:
            self.onload()

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        root_or_component_dirs: str | Path | tuple[str | Path, str | Path],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        keep_resident: bool = False,
    ) -> TextEncoder:
        """Load from a LongCat-Video folder (``tokenizer/`` and ``text_encoder/`` inside) or from an explicit
        ``(tokenizer_dir, text_encoder_dir)`` pair. ``dtype`` is the weight dtype and the default output dtype.

        Loading is strict: a missing, unexpected or mis-shaped weight raises :class:`CheckpointError`.
        """
        tokenizer_dir, encoder_dir = _component_dirs(root_or_component_dirs)
        tokenizer = _load_tokenizer(tokenizer_dir)
        model = _load_umt5(encoder_dir, dtype)
        return cls(tokenizer, model, device=device, keep_resident=keep_resident)

    @classmethod
    def random_tiny(
        cls,
        tokenizer_dir: str | Path,
        seed: int = 0,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        keep_resident: bool = False,
    ) -> TextEncoder:
        """A tiny umT5 (:data:`TINY_UMT5_CONFIG`) with deterministic random weights drawn from ``seed``, plus the
        tokenizer in ``tokenizer_dir`` (its vocabulary must fit in 786 ids, as the tiny fixture's does)."""
        tokenizer = _load_tokenizer(Path(tokenizer_dir))
        if len(tokenizer) > TINY_UMT5_CONFIG["vocab_size"]:
            raise ValueError(
                f"tokenizer in {tokenizer_dir} has {len(tokenizer)} ids, more than the tiny encoder's "
                f"vocab_size {TINY_UMT5_CONFIG['vocab_size']}"
            )
        model = _random_umt5(UMT5Config(**TINY_UMT5_CONFIG), seed).to(dtype)
        return cls(tokenizer, model, device=device, keep_resident=keep_resident)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        return self.model.config.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def auto_offload(self) -> bool:
        """Whether the weights go back to the CPU after every encode: on CUDA unless ``keep_resident``."""
        return self.device.type == "cuda" and not self.keep_resident

    # ------------------------------------------------------------------------------------------ residency
    def onload(self) -> None:
        """Move the encoder weights to ``device`` (no-op when already there). On CUDA they come from a pinned
        CPU copy made once, so each move is one fast host-to-device copy (UMT5-XXL: ~11 GB)."""
        if self.device.type != "cuda":
            self.model.to(self.device)
            return
        for t in self._tensors():
            if t.device != self.device:
                t.data = t.data.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()

    def offload(self) -> None:
        """Free the GPU memory the encoder weights hold. The weights are constant, so on CUDA the pinned CPU
        copy made on the first offload is reused: offloading copies nothing."""
        if self.device.type != "cuda":
            self.model.to("cpu")
            return
        pinned = getattr(self, "_pinned", None)
        if pinned is None:
            pin = torch.cuda.is_available()  # (a CUDA target on a machine without CUDA only parks the weights)
            pinned = self._pinned = [t.data.to("cpu").pin_memory() if pin else t.data.cpu() for t in self._tensors()]
        for t, host in zip(self._tensors(), pinned):
            t.data = host

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    # ------------------------------------------------------------------------------------------ encoding
    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenize: returns input ids [B, L] and attention mask [B, L], both int64 on the CPU.

        Padded to exactly ``max_length`` (512) with the pad id, truncated beyond it, EOS appended.
        """
        texts = [clean_prompt(p) for p in _as_list(prompts)]
        batch = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch.input_ids.long(), batch.attention_mask.long()

    def encode(
        self, prompts: str | Sequence[str], *, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of prompts: embeddings [B, 1, L, d_model] in ``dtype`` (default: the weight dtype) and
        the attention mask [B, L] int64, both on ``device``."""
        self.onload()
        try:
            return self._encode(prompts, dtype or self.dtype)
        finally:
            if self.auto_offload:
                self.offload()

    def encode_for_cfg(
        self, prompt: str, negative_prompt: str | None = None, do_cfg: bool = True, *, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The DiT's text batch: ``[negative; positive]`` ([2, 1, L, d], [2, L]) when ``do_cfg`` (a missing negative
        prompt is the empty string, still padded to 512 tokens), else the positive alone ([1, 1, L, d], [1, L]).

        Each prompt is encoded at batch 1, like the reference, so the results do not depend on the batch.
        """
        dtype = dtype or self.dtype
        self.onload()
        try:
            pos, pos_mask = self._encode([prompt], dtype)
            if not do_cfg:
                return pos, pos_mask
            neg, neg_mask = self._encode([negative_prompt or ""], dtype)
            return torch.cat([neg, pos]), torch.cat([neg_mask, pos_mask])
        finally:
            if self.auto_offload:
                self.offload()

    def _encode(self, prompts: str | Sequence[str], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, d]
        # The cast to the DiT dtype happens after the encoder, as in the reference ([B, L, d] -> [B, 1, L, d]).
        return hidden.to(dtype).unsqueeze(1), mask


# ---------------------------------------------------------------------------------------------- helpers
def _as_list(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompts to encode")
    bad = [type(p).__name__ for p in items if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {', '.join(bad)}")
    return items


def _component_dirs(root_or_dirs: str | Path | tuple[str | Path, str | Path]) -> tuple[Path, Path]:
    if isinstance(root_or_dirs, (str, Path)):
        root = Path(root_or_dirs)
        return root / "tokenizer", root / "text_encoder"
    tokenizer_dir, encoder_dir = root_or_dirs
    return Path(tokenizer_dir), Path(encoder_dir)


def _load_tokenizer(folder: Path):
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder not found: {folder}")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _load_umt5(folder: Path, dtype: torch.dtype) -> UMT5EncoderModel:
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"text encoder folder {folder} has no config.json")
    # transformers 5 renamed torch_dtype to dtype.
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model, info = UMT5EncoderModel.from_pretrained(
            str(folder),
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
            **{dtype_kw: dtype},
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the umT5 text encoder from {folder}: {e}") from None
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {', '.join(map(str, v[:8]))}" for k, v in problems.items())
        raise CheckpointError(f"text encoder checkpoint {folder} does not match UMT5EncoderModel: {detail}")
    return model


def _random_umt5(config: UMT5Config, seed: int) -> UMT5EncoderModel:
    """A UMT5EncoderModel with weights drawn from a private generator (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the global RNG
        model = UMT5EncoderModel(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() lists the tied embedding once, so copy_ keeps encoder.embed_tokens tied to shared.
        for name, p in model.named_parameters():
            p.copy_(_random_init(name, tuple(p.shape), gen))
    return model


def _random_init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith("layer_norm.weight"):
        return 1.0 + 0.1 * noise  # RMS-norm gains around 1
    if name.endswith("relative_attention_bias.weight"):
        return 0.5 * noise  # [buckets, heads] additive logits
    if name == "shared.weight":
        return noise  # token embeddings, unit variance like T5's
    return noise / shape[-1] ** 0.5  # Linear [out, in]: unit-variance activations
