"""Fixtures for renderer tests; the builders live in `renderer_support` beside this file."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from avatar_worker.renderers import contract

# The helpers module sits beside this file; make it importable under every import mode.
sys.path.insert(0, str(Path(__file__).parent))

import renderer_support


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Render on one thread, as a worker does: on a shared 2-core machine torch's default
    (a thread per core) spends most of its time waiting at barriers for small tensors —
    measured here, 120 frames took 1.9 s on one thread and 12–28 s on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_config() -> Callable[..., contract.RenderConfig]:
    """RenderConfig at the tests' audio rate and frame rate, 512×512 unless told."""

    def make(width: int = 512, height: int = 512, **kw: Any) -> contract.RenderConfig:
        return contract.RenderConfig(
            width, height, renderer_support.FPS, renderer_support.SAMPLE_RATE, **kw
        )

    return make
