"""Shared test helpers: fixture paths and golden-case loading (tests/fixtures is a copy of ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
TINY = FIXTURES / "tiny-longcat"


class Golden:
    """One golden case: ``case.meta`` (the JSON) and ``case[name]`` (a tensor of its safetensors)."""

    def __init__(self, name: str):
        self.name = name
        self.meta = json.loads((GOLDEN / f"{name}.json").read_text())
        st = GOLDEN / f"{name}.safetensors"
        self.tensors = load_file(str(st)) if st.is_file() else {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors


@pytest.fixture(scope="session")
def golden():
    cache: dict[str, Golden] = {}

    def get(name: str) -> Golden:
        if name not in cache:
            cache[name] = Golden(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str = ""):
    """torch.testing.assert_close with max/mean diffs in the message."""
    actual = actual.detach().float().cpu()
    expected = expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    diff = (actual - expected).abs()
    msg = (
        f"{what}: max abs diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}, "
        f"max |ref| {expected.abs().max().item():.3e}"
    )
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)
