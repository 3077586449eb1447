"""Renderers by name: `create("portrait", config)`; see `base.FrameRenderer` for the seam."""

from __future__ import annotations

from collections.abc import Callable

from avatar_worker.renderers.base import FrameRenderer, RenderConfig

_REGISTRY: dict[str, Callable[[RenderConfig], FrameRenderer]] = {}


class UnknownRendererError(LookupError):
    """No renderer of that name is built into this worker."""


def register(name: str, factory: Callable[[RenderConfig], FrameRenderer]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create(name: str, config: RenderConfig) -> FrameRenderer:
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownRendererError(
            f"unknown renderer {name!r}; this worker has: {', '.join(sorted(_REGISTRY)) or 'none'}"
        ) from None
    return factory(config)


def _load_builtins() -> None:
    """Import the built-in renderer modules, which register themselves (torch loads lazily)."""
    import importlib
    import pkgutil

    import avatar_worker.renderers as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "base":
            importlib.import_module(f"{package.__name__}.{module.name}")


__all__ = ["FrameRenderer", "RenderConfig", "UnknownRendererError", "available", "create", "register"]
