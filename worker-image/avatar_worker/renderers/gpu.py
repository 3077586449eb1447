"""Devices, and getting rendered pixels off the GPU without stalling it.

Rendering a 512×512 frame on an H200 takes microseconds; copying it to the host is what limits
a GPU renderer (TOOLCHAIN.md, measured on an H200): a fresh `.cpu()` tensor per batch gives only
~1,200–3,300 frames/s, a preallocated pageable buffer ~18,700, a pinned one ~70,000. So
`Downloader` copies into preallocated page-locked buffers, on a stream of its own, while the
next chunk renders on the compute stream: chunk i renders, an event marks it done, the copy
stream waits for that event and copies chunk i into one of two pinned slots while chunk i+1
renders; the host then reads chunk i out of its slot into the caller's frames (which overlaps
with the GPU working on chunk i+1). Two slots are enough: a slot is reused only after the host
has read it.

On the CPU the same calls degrade to a plain loop with no copies at all: `render` and `consume`
see the same tensors, so the renderers have one code path.

`resolve_device` turns a configured device string into a `torch.device`, falling back to the CPU
(with a warning) when CUDA is asked for and absent, so a misplaced session still shows a face.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

# One CUDA process holds ~612 MiB before doing any work (measured on an H200, TOOLCHAIN.md);
# a session's VRAM counts it as well as what the caching allocator reserved.
CUDA_CONTEXT_MIB = 612

# torch.cuda.Stream and Event carry no annotations; these names give them their types.
_new_stream: Callable[[torch.device], torch.cuda.Stream] = torch.cuda.Stream
_new_event: Callable[[], torch.cuda.Event] = torch.cuda.Event


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` → a device this process can use."""
    wanted = name.strip().lower() or "cpu"
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning(
            "cuda asked for but not available; rendering on the cpu", extra={"device": name}
        )
        return torch.device("cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported render device {name!r} (cpu, cuda, cuda:N or auto)")
    return device


def vram_mib(device: torch.device) -> int | None:
    """VRAM this process holds on `device`: the allocator's peak reservation plus its context."""
    if device.type != "cuda":
        return None
    reserved = torch.cuda.max_memory_reserved(device)
    return CUDA_CONTEXT_MIB + round(reserved / 2**20)


class Downloader:
    """Renders chunks of frames and hands each chunk's pixels to the host, overlapped on CUDA.

    `run(n, render, consume)` calls `render(a, b)` for consecutive ranges of at most `chunk`
    frames; it must return a uint8 tensor [b - a, *shape] on the device (any shape, as long as
    it is the one given here). `consume(a, b, pixels)` then gets those pixels as a host tensor,
    valid only during the call (on CUDA a view of a reused pinned buffer; on the CPU whatever
    `render` returned, strides and all).
    """

    def __init__(self, device: torch.device, shape: tuple[int, ...], chunk: int) -> None:
        self.device = device
        self.shape = shape
        self.chunk = max(1, chunk)
        self._slots: list[torch.Tensor] = []
        self._done: list[torch.cuda.Event] = []
        self._stream: torch.cuda.Stream | None = None
        if device.type == "cuda":
            self._stream = _new_stream(device)
            for _ in range(2):
                self._slots.append(
                    torch.empty((self.chunk, *shape), dtype=torch.uint8, pin_memory=True)
                )
                self._done.append(_new_event())

    def run(
        self,
        n: int,
        render: Callable[[int, int], torch.Tensor],
        consume: Callable[[int, int, torch.Tensor], None],
    ) -> None:
        ranges = [(a, min(n, a + self.chunk)) for a in range(0, n, self.chunk)]
        if self._stream is None:
            for a, b in ranges:
                consume(a, b, render(a, b))
            return

        compute = torch.cuda.current_stream(self.device)
        pending: tuple[int, int, int] | None = None  # (a, b, slot) copied but not yet read
        for i, (a, b) in enumerate(ranges):
            slot = i % 2
            pixels = render(a, b)
            if pixels.dtype != torch.uint8 or tuple(pixels.shape[1:]) != self.shape:
                raise ValueError(
                    f"rendered chunk is {tuple(pixels.shape)} {pixels.dtype}, "
                    f"expected [n, {', '.join(map(str, self.shape))}] uint8"
                )
            rendered = _new_event()
            rendered.record(compute)
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(rendered)
                self._slots[slot][: b - a].copy_(pixels, non_blocking=True)
                # The allocator must not hand this memory to the next chunk before the copy ends.
                pixels.record_stream(self._stream)
                self._done[slot].record(self._stream)
            if pending is not None:
                self._read(pending, consume)
            pending = (a, b, slot)
        if pending is not None:
            self._read(pending, consume)

    def _read(
        self,
        pending: tuple[int, int, int],
        consume: Callable[[int, int, torch.Tensor], None],
    ) -> None:
        a, b, slot = pending
        self._done[slot].synchronize()
        consume(a, b, self._slots[slot][: b - a])

    def close(self) -> None:
        self._slots.clear()
        self._done.clear()
        self._stream = None
