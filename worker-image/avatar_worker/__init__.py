"""avatar_worker: the Avatar Server — an agent's TTS audio in, a lip-synced avatar out.

The pipeline (one asyncio loop per session): transport → `receiver` → renderer driver
(`renderers.driver`) → `synchronizer` → `tracks`; the renderer shapes are `renderers.contract`.
Importing the package is light (no torch, no VideoSDK SDK); the names below load their modules
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
    from avatar_worker.receiver import AudioReceiver
    from avatar_worker.renderers.contract import AudioSegmentEnd, AvatarRenderer

_EXPORTS = {
    "AudioReceiver": "avatar_worker.receiver",
    "AudioSegmentEnd": "avatar_worker.renderers.contract",
    "AvatarRenderer": "avatar_worker.renderers.contract",
    "AvatarPipeline": "avatar_worker.pipeline",
    "PipelineConfig": "avatar_worker.pipeline",
}

__all__ = [
    "AudioReceiver",
    "AudioSegmentEnd",
    "AvatarPipeline",
    "AvatarRenderer",
    "PipelineConfig",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'avatar_worker' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
