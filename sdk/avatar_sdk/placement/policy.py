"""Which GPU a session gets: the placement algorithm and the baselines it was measured against.

Sessions arrive online, never move, and leave at times nobody knows in advance, so the policy
cannot pack optimally; what it can do is keep the load *concentrated*, so that when load falls
whole GPUs and whole nodes empty out (and the cluster autoscaler can remove them).

`Strategy.RANKED` (the default) does that with a fixed ranking of nodes — biggest node first
(usable VRAM), then biggest GPU, then name:
1. among the nodes already in use, take the first `window` (4) in rank order that have a GPU
   that fits, and put the session on the tightest-fitting GPU among them (best fit);
2. if no node in use fits, open the highest-ranked free node that fits (its tightest GPU).
Because the ranking never changes, new sessions keep going to the same front nodes, and nodes
at the back of the ranking get new sessions only when the front is full: when load drops, they
stop receiving sessions and drain, and stay free. Opening the biggest node first matches the
fewest-nodes bound (big nodes first) at peak; the small window of best fit recovers most of the
packing that pure first fit loses at peak (`bench/placement.py` has the figures).

Measured against (all on the same engine, selectable for comparison and for users who want
them): `BEST_FIT`, the simple node-aware policy — best-fit GPU over all nodes in use, else open
the biggest node; `FIRST_FIT`, first GPU that fits in the order nodes joined; `SPREAD`, the node
with the largest share of free VRAM and its emptiest GPU (like the Kubernetes scheduler's default
LeastAllocated scoring). Best fit over every used node packs slightly tighter at peak, but it
scatters new sessions across all nodes with a gap, so nothing drains when load falls.

`exclusive` sessions take the smallest entirely free GPU that holds their VRAM, in a node in use
if one has it (same window, rank order) or else in the highest-ranked free node; the whole GPU is
reserved. `none` sessions need no GPU and never reach this module.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from avatar_sdk import api
from avatar_sdk.placement import fleet

DEFAULT_WINDOW = 4  # used nodes (rank order) whose GPUs compete on best fit


class Strategy(enum.StrEnum):
    RANKED = "ranked"
    BEST_FIT = "best-fit"
    FIRST_FIT = "first-fit"
    SPREAD = "spread"


class Request(NamedTuple):
    """What placement needs to know about a session."""

    vram_mib: int
    mode: api.GpuMode = api.GpuMode.SHARED
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[api.Toleration, ...] = ()

    @classmethod
    def from_spec(cls, spec: api.AvatarSessionSpec) -> Request:
        return cls(
            vram_mib=spec.resources.effective_vram_mib,
            mode=spec.resources.gpu,
            node_selector=tuple(sorted(spec.node_selector.items())),
            tolerations=tuple(spec.tolerations),
        )

    @property
    def needs_gpu(self) -> bool:
        return self.mode is not api.GpuMode.NONE

    @property
    def exclusive(self) -> bool:
        return self.mode is api.GpuMode.EXCLUSIVE

    @property
    def signature(self) -> Hashable:
        """What decides which nodes the request may use (the eligibility cache key)."""
        if not self.tolerations:
            return (self.node_selector, (), self.mode is not api.GpuMode.NONE)
        tolerations = tuple((t.key, t.operator, t.value, t.effect) for t in self.tolerations)
        return (self.node_selector, tolerations, self.mode is not api.GpuMode.NONE)


class Choice(NamedTuple):
    """Where a session goes and how much VRAM it reserves there."""

    slot: fleet.NodeSlot
    gpu: int
    vram_mib: int


def reservation_size(slot: fleet.NodeSlot, gpu: int, request: Request) -> int:
    """VRAM reserved: the whole GPU when exclusive, else the session's plus the pool overhead."""
    if request.exclusive:
        return slot.capacity[gpu]
    return request.vram_mib + slot.overhead


def choose(
    slots: Sequence[fleet.NodeSlot],
    eligible: fleet.Eligible,
    request: Request,
    strategy: Strategy = Strategy.RANKED,
    window: int = DEFAULT_WINDOW,
) -> Choice | None:
    """The GPU for `request` among the eligible nodes, or None when nothing fits now."""
    if request.exclusive:
        found = _exclusive(slots, eligible.positions, request.vram_mib, window)
    elif strategy is Strategy.RANKED:
        found = _ranked(slots, eligible.positions, request.vram_mib, window)
    elif strategy is Strategy.BEST_FIT:
        found = _best_fit(slots, eligible.positions, request.vram_mib)
    elif strategy is Strategy.FIRST_FIT:
        found = _first_fit(slots, eligible.by_age, request.vram_mib)
    else:
        found = _spread(slots, eligible.positions, request.vram_mib)
    if found is None:
        return None
    slot, gpu = found
    return Choice(slot, gpu, reservation_size(slot, gpu, request))


def _ranked(
    slots: Sequence[fleet.NodeSlot], positions: Sequence[int], need: int, window: int
) -> tuple[fleet.NodeSlot, int] | None:
    return _tightest(slots, positions, need, window, exclusive=False)


def _best_fit(
    slots: Sequence[fleet.NodeSlot], positions: Sequence[int], need: int
) -> tuple[fleet.NodeSlot, int] | None:
    return _tightest(slots, positions, need, None, exclusive=False)


def _tightest(
    slots: Sequence[fleet.NodeSlot],
    positions: Sequence[int],
    need: int,
    window: int | None,
    *,
    exclusive: bool,
) -> tuple[fleet.NodeSlot, int] | None:
    """The used node whose best GPU is left with the least room (shared) or is the smallest
    that fits (exclusive), among the first `window` used nodes in `positions` that fit (None:
    all of them); else the first free node that fits; None when none fits."""
    best: fleet.NodeSlot | None = None
    best_gpu, best_left = -1, 1 << 62
    first_free: fleet.NodeSlot | None = None
    seen = 0
    for pos in positions:
        slot = slots[pos]
        if (slot.empty_block if exclusive else slot.block) < need:
            continue
        if not slot.used:
            if first_free is None:
                first_free = slot
            continue
        gpu, left = slot.best_exclusive(need) if exclusive else slot.best_shared(need)
        if left < best_left:
            best, best_gpu, best_left = slot, gpu, left
        seen += 1
        if window is not None and seen >= window:
            break
    if best is not None:
        return best, best_gpu
    if first_free is not None:
        choose = first_free.best_exclusive if exclusive else first_free.best_shared
        return first_free, choose(need)[0]
    return None


def _first_fit(
    slots: Sequence[fleet.NodeSlot], by_age: Sequence[int], need: int
) -> tuple[fleet.NodeSlot, int] | None:
    for pos in by_age:
        slot = slots[pos]
        if slot.block < need:
            continue
        for gpu, avail in enumerate(slot.avail):
            if avail >= need:
                return slot, gpu
    return None


def _spread(
    slots: Sequence[fleet.NodeSlot], positions: Sequence[int], need: int
) -> tuple[fleet.NodeSlot, int] | None:
    best: fleet.NodeSlot | None = None
    best_share = -1.0
    for pos in positions:
        slot = slots[pos]
        if slot.share > best_share and slot.block >= need:
            best, best_share = slot, slot.share
    if best is None:
        return None
    emptiest = max(
        (g for g in range(len(best.capacity)) if best.shareable(g)),
        key=lambda g: (best.free(g), -g),
    )
    return best, emptiest


def _exclusive(
    slots: Sequence[fleet.NodeSlot], positions: Sequence[int], need: int, window: int
) -> tuple[fleet.NodeSlot, int] | None:
    return _tightest(slots, positions, need, window, exclusive=True)


# ---------------------------------------------------------------------------------------------
# questions the queue asks


def fits_when_empty(slot: fleet.NodeSlot, gpu: int, request: Request) -> bool:
    """Whether `gpu` could hold the request once everything else on it has left."""
    cap = slot.capacity[gpu]
    if request.exclusive:
        return cap >= request.vram_mib
    return cap - slot.overhead >= request.vram_mib and slot.max_sessions >= 1


def could_ever_fit(
    slots: Sequence[fleet.NodeSlot], eligible: fleet.Eligible, request: Request
) -> bool:
    """Whether some eligible GPU is big enough for the request, were it empty."""
    return any(
        fits_when_empty(slots[pos], g, request)
        for pos in eligible.positions
        for g in range(len(slots[pos].capacity))
    )


def hold_target(
    slots: Sequence[fleet.NodeSlot], eligible: fleet.Eligible, request: Request
) -> tuple[fleet.NodeSlot, int] | None:
    """The GPU to drain for a starving session: the one closest to fitting it.

    Shared: the eligible, big-enough GPU with the most free VRAM (fewest sessions must leave),
    not held exclusively. Exclusive: the big-enough GPU with the fewest sessions. Ties: rank.
    """
    best: tuple[fleet.NodeSlot, int] | None = None
    best_key: tuple[int, int] | None = None
    for pos in eligible.positions:
        slot = slots[pos]
        for g in range(len(slot.capacity)):
            if not fits_when_empty(slot, g, request):
                continue
            if request.exclusive:
                key = (slot.sessions[g], slot.reserved[g])
            else:
                if slot.exclusive[g]:
                    continue
                key = (-(slot.capacity[g] - slot.reserved[g]), slot.sessions[g])
            if best_key is None or key < best_key:
                best, best_key = (slot, g), key
    return best


def largest_block(
    slots: Sequence[fleet.NodeSlot], eligible: fleet.Eligible, request: Request
) -> tuple[int, str, int] | None:
    """(MiB, node, GPU) of the most VRAM this request could get on one eligible GPU now."""
    best: tuple[int, str, int] | None = None
    for pos in eligible.positions:
        slot = slots[pos]
        for g in range(len(slot.capacity)):
            if request.exclusive:
                size = slot.capacity[g] if slot.sessions[g] == 0 and not slot.held[g] else 0
            elif slot.shareable(g):
                size = max(slot.free(g) - slot.overhead, 0)
            else:
                size = 0
            if best is None or size > best[0]:
                best = (size, slot.name, g)
    return best
