"""Renderers by name: `create("portrait", config)`; see `contract.FrameRenderer` for the seam.

Built-ins: `portrait` (the default), `waveform` and `model`. A name with a colon is an import
path instead, `package.module:Factory`: a user's own `FrameRenderer` subclass (or any callable
taking a `RenderConfig`) shipped in the worker's image or on its Python path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from avatar_worker.renderers.contract import FrameRenderer, RenderConfig

_REGISTRY: dict[str, Callable[[RenderConfig], FrameRenderer]] = {}
# The package's other modules are the contract, the drivers and the renderers' helpers.
_BUILTIN_MODULES = ("model", "portrait", "waveform")


class UnknownRendererError(LookupError):
    """No renderer of that name is built into this worker."""


def register(name: str, factory: Callable[[RenderConfig], FrameRenderer]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create(name: str, config: RenderConfig) -> FrameRenderer:
    if ":" in name:
        return _from_import_path(name)(config)
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownRendererError(
            f"unknown renderer {name!r}; this worker has: {', '.join(sorted(_REGISTRY)) or 'none'}"
        ) from None
    return factory(config)


def _from_import_path(path: str) -> Callable[[RenderConfig], FrameRenderer]:
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UnknownRendererError(f"cannot import renderer {path!r}: {e}") from e
    if not callable(factory):
        raise UnknownRendererError(f"renderer {path!r} is not a class or factory")
    return cast(Callable[[RenderConfig], FrameRenderer], factory)


def _load_builtins() -> None:
    """Import the built-in renderer modules, which register themselves (torch loads lazily)."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")


__all__ = [
    "FrameRenderer",
    "RenderConfig",
    "UnknownRendererError",
    "available",
    "create",
    "register",
]
