"""How much room is left: free VRAM per GPU and how many more sessions of a size fit.

`compute()` is pure over what anyone can read from the API — Nodes (through
`inventory.parse_node`) and the sessions' recorded placements (through a `ledger.Ledger`) — so
`avatarctl capacity` can show the same figures as the operator without asking it. Nodes that
are cordoned or not Ready are listed but count for nothing, and a node fits no more sessions than
its allocatable pods, CPU and memory hold worker Pods (`NodeInfo.max_sessions`). Node selectors
and taints are not applied: this is the cluster's view, not one session's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from avatar_sdk.placement import inventory, ledger


class GpuCapacity(NamedTuple):
    node: str
    gpu: int
    product: str | None
    vram_mib: int
    capacity_mib: int  # vram_mib less the headroom
    reserved_mib: int
    free_mib: int  # capacity less reserved; negative when over-committed
    sessions: int
    exclusive: bool
    available: bool  # the node takes new sessions (schedulable and Ready)
    fits: int  # more sessions of the asked size this GPU takes now


class View(NamedTuple):
    vram_mib: int  # the size asked about
    exclusive: bool
    gpus: tuple[GpuCapacity, ...]
    fits: int  # on all GPUs together
    free_mib: int  # free VRAM on available GPUs
    largest_free_mib: int  # the largest free block on one available GPU


def gpu_fits(
    gpu: inventory.GpuInfo,
    node: inventory.NodeInfo,
    usage: ledger.GpuUsage,
    vram_mib: int,
    *,
    exclusive: bool = False,
) -> int:
    """How many more sessions of `vram_mib` this GPU takes now."""
    if not (node.schedulable and node.ready):
        return 0
    if exclusive:
        return int(usage.sessions == 0 and gpu.capacity_mib >= vram_mib)
    if usage.exclusive:
        return 0
    free = gpu.capacity_mib - usage.reserved_mib
    count = max(free, 0) // max(vram_mib + node.overhead_mib, 1)
    if node.max_sessions_per_gpu is not None:
        count = min(count, max(node.max_sessions_per_gpu - usage.sessions, 0))
    return count


def compute(
    nodes: Iterable[inventory.NodeInfo],
    book: ledger.Ledger,
    vram_mib: int,
    *,
    exclusive: bool = False,
) -> View:
    """Capacity of every GPU of `nodes` given the reservations in `book`."""
    gpus: list[GpuCapacity] = []
    for node in sorted(nodes, key=lambda n: n.name):
        available = node.schedulable and node.ready
        # the node's own room in worker Pods (allocatable pods, CPU, memory), shared by its GPUs
        room = (
            None if node.max_sessions is None else node.max_sessions - len(book.keys_on(node.name))
        )
        for gpu in node.gpus:
            usage = book.gpu_usage(node.name, gpu.index)
            fits = gpu_fits(gpu, node, usage, vram_mib, exclusive=exclusive)
            if room is not None:
                fits = min(fits, max(room, 0))
                room -= fits
            gpus.append(
                GpuCapacity(
                    node=node.name,
                    gpu=gpu.index,
                    product=node.product,
                    vram_mib=gpu.vram_mib,
                    capacity_mib=gpu.capacity_mib,
                    reserved_mib=usage.reserved_mib,
                    free_mib=gpu.capacity_mib - usage.reserved_mib,
                    sessions=usage.sessions,
                    exclusive=usage.exclusive,
                    available=available,
                    fits=fits,
                )
            )
    usable = [g for g in gpus if g.available and not g.exclusive]
    return View(
        vram_mib=vram_mib,
        exclusive=exclusive,
        gpus=tuple(gpus),
        fits=sum(g.fits for g in gpus),
        free_mib=sum(max(g.free_mib, 0) for g in usable),
        largest_free_mib=max((max(g.free_mib, 0) for g in usable), default=0),
    )
